"""The k3bundle/v1 manifest: its model, canonical bytes and validation.

Both halves use these definitions: the bundler writes a Manifest through `to_bytes`, the installer
reads one back through `parse`. There is no second description of the format anywhere.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Set, Tuple

from .errors import ArchError, FormatError, UsageError

FORMAT = "k3bundle/v1"
MANIFEST_NAME = "k3bundle.json"
SIGNATURE_NAME = "k3bundle.json.sig"
MAX_MANIFEST_BYTES = 16 * 1024 * 1024

ARCHES = ("amd64", "arm64", "arm")
KINDS = ("k3s-binary", "airgap-images", "images", "chart", "helmchart-manifest")

_MACHINE_TO_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
_SAFE_PATH = re.compile(r"^[A-Za-z0-9._+-]+(/[A-Za-z0-9._+-]+)*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def arch_from_machine(machine: str) -> str:
    """Map `uname -m` to a k3s architecture name (x86_64 → amd64, aarch64 → arm64, arm* → arm)."""
    name = machine.strip().lower()
    if name in _MACHINE_TO_ARCH:
        return _MACHINE_TO_ARCH[name]
    if name.startswith("arm"):
        return "arm"
    raise ArchError(
        f"unsupported machine architecture {machine!r}",
        f"k3s ships {', '.join(ARCHES)}; pass --arch to choose one explicitly.",
    )


def check_arch(arch: str) -> str:
    """Return `arch` if k3s ships it, else raise a UsageError naming the choices."""
    if arch not in ARCHES:
        raise UsageError(f"unknown architecture {arch!r}", f"Choose one of: {', '.join(ARCHES)}.")
    return arch


def check_member_path(path: str) -> str:
    """Refuse absolute, `..`, empty or unusual member paths; return the path unchanged."""
    if not path or path.startswith("/") or "\\" in path:
        raise FormatError(f"bundle member {path!r} has an absolute or malformed path")
    if ".." in path.split("/") or posixpath.normpath(path) != path:
        raise FormatError(f"bundle member {path!r} leaves the bundle (a '..' or unnormalised path)")
    if not _SAFE_PATH.match(path) or path in (MANIFEST_NAME, SIGNATURE_NAME):
        raise FormatError(f"bundle member {path!r} has a name k3bundle/v1 does not allow")
    return path


@dataclass(frozen=True)
class Entry:
    """One payload file of the bundle."""

    path: str
    size: int
    sha256: str
    kind: str
    mode: int = 0o644
    arch: Optional[str] = None
    source: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> Dict[str, Any]:
        """The entry as it appears in the manifest."""
        return {
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
            "kind": self.kind,
            "mode": f"{self.mode:04o}",
            "arch": self.arch,
            "source": dict(self.source),
        }

    @property
    def name(self) -> str:
        """The file name without its folder."""
        return posixpath.basename(self.path)


@dataclass(frozen=True)
class Manifest:
    """What a bundle holds: k3s version, architectures, payload entries, install defaults."""

    k3s_version: str
    architectures: Tuple[str, ...]
    entries: Tuple[Entry, ...]
    install: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> Dict[str, Any]:
        """The manifest as a JSON-ready dict."""
        doc: Dict[str, Any] = dict(self.extra)
        doc.update(
            format=FORMAT,
            k3s_version=self.k3s_version,
            architectures=list(self.architectures),
            files=[e.to_json() for e in self.entries],
            install=dict(self.install),
        )
        return doc

    def to_bytes(self) -> bytes:
        """Canonical bytes: sorted keys, UTF-8, no insignificant whitespace."""
        return canonical_json(self.to_json())

    def for_arch(self, arch: str) -> Tuple[Entry, ...]:
        """Entries an `arch` host installs: its own and the architecture-neutral ones."""
        if arch not in self.architectures:
            have = ", ".join(self.architectures) or "none"
            raise ArchError(
                f"the bundle has no files for architecture {arch} (it carries: {have})",
                f"Rebuild it with 'k3bundle build --arch {arch}', or pass --arch if the host "
                "was detected wrongly.",
            )
        return tuple(e for e in self.entries if e.arch in (None, arch))


def canonical_json(doc: Any) -> bytes:
    """Serialise `doc` the one way k3bundle signs and hashes JSON."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def parse(data: bytes) -> Manifest:
    """Parse and validate manifest bytes; raise FormatError naming the problem."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormatError(f"{MANIFEST_NAME} is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise FormatError(f"{MANIFEST_NAME} is not a JSON object")
    _check_format(doc.get("format"))
    arches = tuple(_typed(doc, "architectures", list))
    for arch in arches:
        if arch not in ARCHES:
            raise FormatError(f"{MANIFEST_NAME} names an unknown architecture {arch!r}")
    entries = tuple(_parse_entry(item, arches) for item in _typed(doc, "files", list))
    _check_unique(entries)
    known = {"format", "k3s_version", "architectures", "files", "install"}
    return Manifest(
        k3s_version=_typed(doc, "k3s_version", str),
        architectures=arches,
        entries=entries,
        install=_typed(doc, "install", dict),
        extra={k: v for k, v in doc.items() if k not in known},
    )


def _check_format(value: Any) -> None:
    if value == FORMAT:
        return
    raise FormatError(
        f"{MANIFEST_NAME} declares format {value!r}; this installer reads only {FORMAT}",
        "Use the k3bundle-install.pyz that came with the bundle, or a newer k3bundle.",
    )


def _typed(doc: Mapping[str, Any], key: str, kind: type) -> Any:
    value = doc.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise FormatError(f"{MANIFEST_NAME}: field {key!r} is missing or not a {kind.__name__}")
    return value


def _parse_entry(item: Any, arches: Tuple[str, ...]) -> Entry:
    if not isinstance(item, dict):
        raise FormatError(f"{MANIFEST_NAME}: a files[] item is not an object")
    path = check_member_path(_typed(item, "path", str))
    sha = _typed(item, "sha256", str)
    kind = _typed(item, "kind", str)
    size = _typed(item, "size", int)
    arch = item.get("arch")
    problems = [
        (not _SHA256.match(sha), "a malformed sha256"),
        (kind not in KINDS, f"an unknown kind {kind!r}"),
        (size < 0, "a negative size"),
        (arch is not None and arch not in arches, f"an architecture {arch!r} not listed"),
    ]
    for bad, what in problems:
        if bad:
            raise FormatError(f"{MANIFEST_NAME}: file {path!r} has {what}")
    mode = _parse_mode(path, item.get("mode", "0644"))
    source = item.get("source") or {}
    return Entry(path, size, sha, kind, mode, arch, {str(k): str(v) for k, v in source.items()})


def _parse_mode(path: str, mode: Any) -> int:
    if isinstance(mode, str) and re.match(r"^0?[0-7]{3}$", mode):
        return int(mode, 8)
    raise FormatError(f"{MANIFEST_NAME}: file {path!r} has a malformed mode {mode!r}")


def _check_unique(entries: Tuple[Entry, ...]) -> None:
    seen: Set[str] = set()
    for entry in entries:
        if entry.path in seen:
            raise FormatError(f"{MANIFEST_NAME} lists {entry.path!r} twice")
        seen.add(entry.path)
