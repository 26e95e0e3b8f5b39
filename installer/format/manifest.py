"""The k3bundle/v1 manifest: its model, canonical bytes and validation.

Both halves use these definitions: the bundler writes a Manifest through `to_bytes`, the installer
reads one back through `parse`. There is no second description of the format anywhere.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple

from k3bundle.installer.errors import ArchError, FormatError, UsageError
from k3bundle.installer.format import manifest_fields as fields
from k3bundle.installer.format import requires
from k3bundle.installer.format.jsondoc import load_json
from k3bundle.installer.format.manifest_fields import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    Chunks,
    check_member_path,
)

__all__ = ["MANIFEST_NAME", "SIGNATURE_NAME", "check_member_path"]  # re-exported for the bundler

FORMAT = "k3bundle/v1"
# v2 adds optional fields a v1 installer must not ignore: `requires`/`since` (requires.py).
FORMAT_V2 = "k3bundle/v2"
FORMATS = (FORMAT, FORMAT_V2)
MAX_MANIFEST_BYTES = 64 * 1024 * 1024  # checked from the tar header, before the member is read
MAX_SIGNATURE_BYTES = 64 * 1024  # a real signature member is about 200 bytes

ARCHES = ("amd64", "arm64", "arm")
# Payload kinds: what a manifest entry is, and so where the installer places it.
KIND_K3S_BINARY = "k3s-binary"
KIND_AIRGAP_IMAGES = "airgap-images"  # k3s's own image tarball
KIND_IMAGES = "images"  # extra images, one OCI archive per architecture
KIND_CHART = "chart"
KIND_HELMCHART_MANIFEST = "helmchart-manifest"
KINDS = (KIND_K3S_BINARY, KIND_AIRGAP_IMAGES, KIND_IMAGES, KIND_CHART, KIND_HELMCHART_MANIFEST)

_MACHINE_TO_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


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
    chunks: Optional[Chunks] = None  # k3bundle/v2: digests of its slices (manifest_fields)

    def to_json(self) -> Dict[str, Any]:
        """The entry as it appears in the manifest."""
        doc = {
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
            "kind": self.kind,
            "mode": f"{self.mode:04o}",
            "arch": self.arch,
            "source": dict(self.source),
        }
        if self.chunks is not None:  # absent, not null: a v1 entry's bytes stay as they were
            doc["chunks"] = self.chunks.to_json()
        return doc

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
    # Not part of the manifest: which architectures the archive holds, when the reader has
    # looked (a slice holds fewer than `architectures`); None means all of them.
    held: Optional[Tuple[str, ...]] = field(default=None, compare=False)

    def to_json(self) -> Dict[str, Any]:
        """The manifest as a JSON-ready dict."""
        doc: Dict[str, Any] = dict(self.extra)
        doc.update(
            format=FORMAT_V2 if needs_v2(self.extra) or _chunked(self.entries) else FORMAT,
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
        """Entries an `arch` host installs: its own and the architecture-neutral ones.

        Refused (ArchError) when the bundle has no k3s binary for `arch`: installing only the
        unit and links would leave a host that cannot start.
        """
        carried = sorted({e.arch for e in self.entries if e.kind == KIND_K3S_BINARY and e.arch})
        if arch not in self.architectures or arch not in carried:
            have = ", ".join(carried) or "none"
            raise ArchError(
                f"the bundle has no k3s binary for architecture {arch} (it carries: {have})",
                f"Use a bundle built with 'k3bundle build --arch {arch}', or pass --arch "
                f"({have}) if the host was detected wrongly.",
            )
        self._check_held(arch)
        return tuple(e for e in self.entries if e.arch is None or e.arch == arch)

    def _check_held(self, arch: str) -> None:
        """Refuse an architecture that a slice's archive leaves out."""
        if self.held is None or arch in self.held:
            return
        holds = ", ".join(self.held)
        raise ArchError(
            f"the bundle is a slice that holds only {holds} (of "
            f"{', '.join(self.architectures)}): it has no files for architecture {arch}",
            f"Take the slice for {arch} ('k3bundle slice BUNDLE --arch {arch}') or the full "
            f"bundle, or pass --arch ({holds}) if the host was detected wrongly.",
        )


def canonical_json(doc: Any) -> bytes:
    """Serialise `doc` the one way k3bundle signs and hashes JSON."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def parse(data: bytes) -> Manifest:
    """Parse and validate manifest bytes: every field's type and shape; FormatError otherwise."""
    doc = load_json(data, MANIFEST_NAME, max_bytes=MAX_MANIFEST_BYTES)
    if not isinstance(doc, dict):
        raise FormatError(f"{MANIFEST_NAME} is not a JSON object")
    _check_format(doc.get("format"))
    arches = _parse_arches(doc)
    items = fields.objects(fields.array(doc, "files", MANIFEST_NAME), f"{MANIFEST_NAME}: files")
    entries = tuple(_parse_entry(item, arches) for item in items)
    _check_unique(entries)
    known = {"format", "k3s_version", "architectures", "files", "install"}
    extra = {k: v for k, v in doc.items() if k not in known}
    _check_summaries(extra)
    _check_v2_fields(doc.get("format"), extra, arches, entries)
    if _chunked(entries) and doc.get("format") != FORMAT_V2:
        raise FormatError(f"{MANIFEST_NAME} has chunk digests but declares {doc.get('format')!r}")
    return Manifest(
        k3s_version=fields.text(doc, "k3s_version", MANIFEST_NAME, fields.K3S_VERSION),
        architectures=arches,
        entries=entries,
        install=_parse_install(doc),
        extra=extra,
    )


def _chunked(entries: Tuple[Entry, ...]) -> bool:
    return any(e.chunks is not None for e in entries)


def needs_v2(extra: Mapping[str, Any]) -> bool:
    """True when the manifest's top-level fields are ones only a k3bundle/v2 reader knows."""
    return any(extra.get(key) is not None for key in (requires.REQUIRES, requires.SINCE))


def _check_v2_fields(
    declared: Any, extra: Mapping[str, Any], arches: Tuple[str, ...], entries: Tuple[Entry, ...]
) -> None:
    if needs_v2(extra) and declared != FORMAT_V2:
        raise FormatError(f"{MANIFEST_NAME} has 'requires'/'since' but declares {declared!r}")
    requires.check_requires(extra, arches, (e.path for e in entries))


def _check_format(value: Any) -> None:
    if value in FORMATS:
        return
    shown = value if isinstance(value, (str, type(None))) else type(value).__name__
    raise FormatError(
        f"{MANIFEST_NAME} declares format {shown!r}; this installer reads only "
        f"{' and '.join(FORMATS)}",
        "Use the k3bundle-install.pyz that came with the bundle, or a newer k3bundle.",
    )


def _parse_arches(doc: Mapping[str, Any]) -> Tuple[str, ...]:
    arches = fields.array(doc, "architectures", MANIFEST_NAME)
    for arch in arches:
        if not isinstance(arch, str) or arch not in ARCHES:
            raise FormatError(f"{MANIFEST_NAME} names an unknown architecture {arch!r}")
    if len(set(arches)) != len(arches):
        raise FormatError(f"{MANIFEST_NAME} lists an architecture twice")
    return tuple(arches)


def _parse_entry(item: Mapping[str, Any], arches: Tuple[str, ...]) -> Entry:
    path = item.get("path")
    if not isinstance(path, str):
        raise FormatError(f"{MANIFEST_NAME}: a files[] item has no string 'path'")
    check_member_path(path)
    where = f"{MANIFEST_NAME}: file {path!r}"
    sha = item.get("sha256")
    if not isinstance(sha, str) or not fields.SHA256.fullmatch(sha):
        raise FormatError(f"{where} has a malformed sha256 (field 'sha256')")
    kind = fields.text(item, "kind", where)
    if kind not in KINDS:
        raise FormatError(f"{where} has an unknown kind {kind!r}")
    arch = item.get("arch")
    if arch is not None and (not isinstance(arch, str) or arch not in arches):
        raise FormatError(f"{where} has an architecture {arch!r} not listed")
    size = fields.integer(item, "size", where)
    mode = fields.mode(item, where)
    source = fields.string_map(item, "source", where)
    return Entry(path, size, sha, kind, mode, arch, source, fields.chunks(item, size, where))


def _parse_install(doc: Mapping[str, Any]) -> Dict[str, Any]:
    """The install defaults; config.yaml and registries.yaml must be objects."""
    install = fields.optional_mapping(doc, "install", MANIFEST_NAME)
    for key in ("config", "registries"):
        fields.optional_mapping(install, key, f"{MANIFEST_NAME}: install")
    return install


def _check_summaries(extra: Mapping[str, Any]) -> None:
    """The optional `images` and `charts` summaries, which inspect prints."""
    for image in _summaries(extra, "images"):
        where = f"{MANIFEST_NAME}: images[]"
        fields.text(image, "name", where)
        fields.text(image, "digest", where)
        fields.integer(image, "size", where)
        charts = fields.optional_array(image, "charts", where)  # the charts that deploy it
        if not all(isinstance(name, str) for name in charts):
            raise FormatError(f"{where}: charts must be chart names")
        if not all(
            isinstance(a, str) and a in ARCHES for a in fields.array(image, "arches", where)
        ):
            raise FormatError(f"{where} names an unknown architecture")
    for chart in _summaries(extra, "charts"):
        for key in ("name", "version", "namespace"):
            fields.text(chart, key, f"{MANIFEST_NAME}: charts[]")


def _summaries(extra: Mapping[str, Any], key: str) -> List[Dict[str, Any]]:
    items = fields.optional_array(extra, key, MANIFEST_NAME)
    return fields.objects(items, f"{MANIFEST_NAME}: {key}")


def _check_unique(entries: Tuple[Entry, ...]) -> None:
    seen: Set[str] = set()
    for entry in entries:
        if entry.path in seen:
            raise FormatError(f"{MANIFEST_NAME} lists {entry.path!r} twice")
        seen.add(entry.path)
