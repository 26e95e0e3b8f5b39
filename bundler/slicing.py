"""`k3bundle slice`: the same signed bundle with only some architectures' payload, for one host.

A slice keeps the manifest and signature members byte for byte (so it verifies with the same
public key and needs no private key to make) and every member of the architectures it keeps,
plus the architecture-neutral ones, in manifest order; the other architectures' members are
left out. It is written with the writer's deterministic tar pieces and split writer, and every
member copied is hashed against the manifest on the way: a damaged bundle gives no slice.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from k3bundle.bundler.tarwrite import PartWriter, padding, tar_header, write_end, write_small_member
from k3bundle.bundler.writer import BundleOutput, Staged, stage_written
from k3bundle.installer.errors import IntegrityError, UsageError
from k3bundle.installer.format import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    BundleSource,
    Header,
    Holding,
    Manifest,
    parse_manifest,
    sha256_file,
)
from k3bundle.installer.progress import Progress

INSTALLER_NAME = "k3bundle-install.pyz"
SUMS_NAME = "SHA256SUMS"


@dataclass(frozen=True)
class SliceResult:
    """What a slice run wrote, and how it compares with the bundle it came from."""

    bundle: str
    output: BundleOutput
    holds: Tuple[str, ...]
    of: Tuple[str, ...]
    bundle_size: int
    sums: Path
    installer: Optional[Path]

    @property
    def saved(self) -> int:
        """Bytes a host no longer receives compared with the whole bundle."""
        return self.bundle_size - self.output.size


def slice_name(bundle_name: str, architectures: Sequence[str], keep: Sequence[str]) -> str:
    """NAME-ARCHES.tar: the bundle's name with its architecture list replaced by `keep`'s.

    k3s-v1.31.4-k3s1-amd64-arm64.tar sliced for arm64 is k3s-v1.31.4-k3s1-arm64.tar; a name
    that does not end with the bundle's architectures gets them appended (bundle-arm64.tar).
    """
    stem = bundle_name[: -len(".tar")] if bundle_name.endswith(".tar") else bundle_name
    listed = "-" + "-".join(architectures)
    if stem.endswith(listed) and len(stem) > len(listed):
        stem = stem[: -len(listed)]
    return f"{stem}-{'-'.join(keep)}.tar"


def slice_bundle(
    bundle: Path,
    arches: Sequence[str],
    output: Path,
    split: Optional[int] = None,
    progress: Optional[Progress] = None,
) -> SliceResult:
    """Write the slice of `bundle` for `arches` into folder `output`, with SHA256SUMS."""
    if not output.is_dir():
        raise UsageError(
            f"output folder {output} does not exist", "Create it, or pass another -o DIR."
        )
    with BundleSource(str(bundle)) as source:
        header = source.read_header()
        manifest = parse_manifest(header.manifest)
        keep = Holding(_chosen(manifest, source.holding(manifest), arches), manifest.architectures)
        target = output / slice_name(_bundle_name(source), manifest.architectures, keep.holds)
        _refuse_own_folder(source, output)
        staged = _stage(source, header, manifest, keep, target, split, progress or Progress())
        full = source.total_size()
    installer = _stage_extras(staged, Path(bundle).parent, output)
    staged.commit()
    return SliceResult(
        bundle=source.name,
        output=staged.output,
        holds=keep.holds,
        of=manifest.architectures,
        bundle_size=full,
        sums=output / SUMS_NAME,
        installer=installer,
    )


def _chosen(manifest: Manifest, holding: Holding, arches: Sequence[str]) -> Tuple[str, ...]:
    """The architectures to keep, in manifest order; ArchError for one the bundle lacks."""
    held = replace(manifest, held=holding.holds)
    for arch in arches:
        held.for_arch(arch)  # the install's own refusal: no k3s binary, or not in this slice
    return tuple(a for a in manifest.architectures if a in arches)


def _bundle_name(source: BundleSource) -> str:
    """The bundle's own name: NAME.tar for NAME.tar, NAME.tar.000 or NAME.tar.parts.json."""
    if source.parts:
        return source.parts[0].path.name[: -len(".000")]
    return source.name


def _refuse_own_folder(source: BundleSource, output: Path) -> None:
    """A slice goes to a folder of its own: its SHA256SUMS would replace the bundle's."""
    inputs = [p.path for p in source.parts] if source.parts else [source.path]
    if any(path.resolve().parent == output.resolve() for path in inputs):
        raise UsageError(
            f"{output} holds the bundle being sliced",
            "Write the slice to a folder of its own (-o DIR): its SHA256SUMS and "
            f"{INSTALLER_NAME} sit beside it there.",
        )


def _stage(
    source: BundleSource,
    header: Header,
    manifest: Manifest,
    keep: Holding,
    target: Path,
    split: Optional[int],
    progress: Progress,
) -> Staged:
    """Write the slice under temporary names: header members as they are, then the payload."""
    sink = PartWriter(target, split)
    progress.start(
        f"Slicing {source.name}", sum(e.size for e in manifest.entries if keep.expects(e))
    )
    try:
        write_small_member(sink, MANIFEST_NAME, header.manifest, header.mtimes[MANIFEST_NAME])
        if header.signature is not None:
            mtime = header.mtimes[SIGNATURE_NAME]
            write_small_member(sink, SIGNATURE_NAME, header.signature, mtime)
        for entry, stream in source.payload(manifest):
            if not keep.expects(entry):
                stream.extent()  # skipped in place when it can be; else the reader drains it
                continue
            sink.write(tar_header(entry.path, entry.size, entry.mode, stream.mtime))
            for chunk in stream.chunks():  # verified against the manifest at its end
                sink.write(chunk)
                progress.advance(len(chunk))
            sink.write(padding(entry.size))
        write_end(sink)
    except BaseException:
        sink.abort()
        raise
    progress.finish()
    return stage_written(target, sink, hashlib.sha256(header.manifest).hexdigest(), split)


def _stage_extras(staged: Staged, inputs: Path, output: Path) -> Optional[Path]:
    """Stage the installer (when one is beside the bundle) and SHA256SUMS next to the slice."""
    sha256s: Dict[str, str] = dict(staged.output.sha256s)
    installer: Optional[Path] = None
    try:
        found = inputs / INSTALLER_NAME
        if found.is_file():
            sha256s[INSTALLER_NAME] = _checked_installer(found, inputs / SUMS_NAME)
            installer = staged.add(output / INSTALLER_NAME, lambda tmp: _copy(found, tmp))
        text = "".join(f"{sha}  {name}\n" for name, sha in sorted(sha256s.items()))
        staged.add(output / SUMS_NAME, lambda tmp: tmp.write_bytes(text.encode("utf-8")))
    except BaseException:
        staged.abort()
        raise
    return installer


def _checked_installer(installer: Path, sums: Path) -> str:
    """The installer's sha256, refused when the bundle's SHA256SUMS records another."""
    actual = sha256_file(installer)
    recorded = _recorded_sums(sums).get(INSTALLER_NAME)
    if recorded is not None and recorded != actual:
        raise IntegrityError(
            f"{installer} does not match {sums} (sha256 {actual}, expected {recorded})",
            f"Copy {INSTALLER_NAME} again from the build output.",
        )
    return actual


def _recorded_sums(sums: Path) -> Dict[str, str]:
    if not sums.is_file():
        return {}
    pairs = (line.split("  ", 1) for line in sums.read_text("utf-8").splitlines())
    return {name.strip(): sha for sha, name in (p for p in pairs if len(p) == 2)}


def _copy(source: Path, tmp: Path) -> None:
    shutil.copyfile(source, tmp)
    os.chmod(tmp, 0o755)  # it runs as ./k3bundle-install.pyz too (a shebang line)


def slice_files(result: SliceResult) -> List[Path]:
    """Every file the slice run wrote, the slice's own first."""
    extra = [result.installer] if result.installer is not None else []
    return [*result.output.files, *extra, result.sums]
