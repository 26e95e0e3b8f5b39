"""Image list files (`--images-file`, the spec's `imagesFile`) in the format of k3s's own
k3s-images.txt: one image reference a line; blank lines and `#` comments (a whole line, or after
whitespace at the end of one) are ignored, surrounding whitespace is stripped."""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Sequence

from k3bundle.bundler.oci.reference import parse_reference
from k3bundle.installer.errors import UsageError

MAX_LIST_BYTES = 4 * 1024 * 1024  # k3s's own list is under 1 KiB; a site's is a few hundred lines
_COMMENT = re.compile(r"(^|\s)#.*\Z", re.DOTALL)
_HINT = (
    "Write one image reference a line (e.g. docker.io/library/nginx:1.27 or "
    "ghcr.io/org/app@sha256:…); lines starting with # and text after ' #' are comments."
)


def read_images_file(path: Path) -> List[str]:
    """The image references listed in `path`, in order; UsageError names FILE:LINE."""
    text = _read(path)
    refs = []
    for number, line in enumerate(text.splitlines(), 1):
        ref = _COMMENT.sub("", line).strip()
        if not ref:
            continue
        if any(char.isspace() for char in ref):
            _refuse(path, number, line, "one image reference a line, not several")
        try:
            parse_reference(ref)
        except UsageError as exc:
            _refuse(path, number, line, exc.message)
        refs.append(ref)
    return refs


def read_images_files(paths: Sequence[Path]) -> List[str]:
    """Every listed reference of every file, in order (duplicates are dropped later)."""
    return [ref for path in paths for ref in read_images_file(path)]


def _read(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_LIST_BYTES + 1)
    except OSError as exc:
        raise UsageError(
            f"cannot read the images file {path}: {exc.strerror or exc}",
            "Check the path (a spec's imagesFile is relative to the spec file's folder).",
        ) from None
    if len(data) > MAX_LIST_BYTES:
        raise UsageError(
            f"the images file {path} is larger than {MAX_LIST_BYTES // (1024 * 1024)} MiB",
            "An image list holds one reference a line; is this the right file?",
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"the images file {path} is not UTF-8 text (byte {exc.start})", _HINT
        ) from None


def _refuse(path: Path, number: int, line: str, why: str) -> None:
    shown = line.strip()
    shown = shown if len(shown) <= 120 else shown[:117] + "..."
    raise UsageError(f"{path}:{number}: {shown!r}: {why}", _HINT)
