"""Write k3bundle/v1 bundles: one deterministic tar, optionally split into parts as it is written.

The format's definitions (manifest model, member names, parts index) come from the installer, which
owns the format; this module only writes what those definitions describe.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Dict, List, Mapping, Optional

from k3bundle.installer.errors import IntegrityError, UsageError
from k3bundle.installer.hashing import hashed_chunks, sha256_file
from k3bundle.installer.manifest import MANIFEST_NAME, SIGNATURE_NAME, Entry, Manifest
from k3bundle.installer.signature import Signature
from k3bundle.installer.sources import PARTS_FORMAT, parts_index_path

FAT32_MAX = 4 * 1024**3 - 1
BLOCK = 512
RECORD = 20 * BLOCK
Progress = Callable[[int], None]
Signer = Callable[[bytes], Signature]


def parse_size(text: str) -> int:
    """Parse a part size: 'fat32', a byte count, or a number with K/M/G (powers of 1024)."""
    value = text.strip().lower()
    if value == "fat32":
        return FAT32_MAX
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    scale = units.get(value[-1:], 1)
    digits = value[:-1] if value[-1:] in units else value
    if not digits.isdigit() or int(digits) * scale < RECORD:
        raise UsageError(
            f"cannot use {text!r} as a part size",
            f"Give 'fat32', or a size such as 2G or 700M (at least {RECORD} bytes).",
        )
    return int(digits) * scale


def entry_for_file(local: Path, path: str, kind: str, **fields: object) -> Entry:
    """An Entry describing a local file (size and sha256 measured now)."""
    size = local.stat().st_size
    return Entry(path=path, size=size, sha256=sha256_file(local), kind=kind, **fields)  # type: ignore[arg-type]


@dataclass
class BundleOutput:
    """What a write produced: the files on disk and the bundle's identity."""

    files: List[Path]
    bundle_id: str
    size: int
    parts_index: Optional[Path] = None
    sha256s: Dict[str, str] = field(default_factory=dict)


@dataclass
class _PartWriter:
    """A binary sink that writes parts of at most `limit` bytes (or one file when no limit)."""

    target: Path
    limit: Optional[int]
    written: List[Dict[str, object]] = field(default_factory=list)
    total: int = 0
    _handle: Optional[IO[bytes]] = None
    _hash: hashlib._Hash = field(default_factory=hashlib.sha256)
    _in_part: int = 0

    def _name(self) -> Path:
        if self.limit is None:
            return self.target
        return self.target.with_name(f"{self.target.name}.{len(self.written):03d}")

    def _tmp(self, path: Path) -> Path:
        return path.with_name(f".{path.name}.tmp")

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            if self._handle is None:
                self._handle = open(self._tmp(self._name()), "wb")  # noqa: SIM115
            room = len(view) if self.limit is None else self.limit - self._in_part
            piece = view[:room]
            self._handle.write(piece)
            self._hash.update(piece)
            self._in_part += len(piece)
            self.total += len(piece)
            view = view[room:]
            if self.limit is not None and self._in_part >= self.limit:
                self._close_part()

    def _close_part(self) -> None:
        assert self._handle is not None
        self._handle.close()
        self._handle = None
        name = self._name()
        self.written.append(
            {"name": name.name, "size": self._in_part, "sha256": self._hash.hexdigest()}
        )
        self._hash, self._in_part = hashlib.sha256(), 0

    def finish(self) -> List[Path]:
        """Close the last part and rename every part into place."""
        if self._handle is not None:
            self._close_part()
        final = [self.target.with_name(str(p["name"])) for p in self.written]
        for path in final:
            os.replace(self._tmp(path), path)
        return final

    def abort(self) -> None:
        """Remove every temporary part after a failure."""
        if self._handle is not None:
            self._handle.close()
        names = [str(p["name"]) for p in self.written] + [self._name().name]
        for name in names:
            self._tmp(self.target.with_name(name)).unlink(missing_ok=True)


def _tar_header(name: str, size: int, mode: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, mode, mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")


def _padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def _copy_member(sink: _PartWriter, entry: Entry, local: Path, progress: Progress) -> None:
    """Copy a payload file into the bundle, re-verifying it on the way.

    The input is hashed again (a cache file may have rotted since it was verified) on a second
    thread while this one writes the same bytes and the sink hashes them for SHA256SUMS.
    """
    digest, seen = hashlib.sha256(), 0
    with open(local, "rb", buffering=0) as handle:
        for chunk in hashed_chunks(handle.readinto, digest):
            sink.write(chunk)
            seen += len(chunk)
            progress(len(chunk))
    if seen != entry.size or digest.hexdigest() != entry.sha256:
        raise IntegrityError(
            f"{local} changed while the bundle was written (sha256 {digest.hexdigest()}, "
            f"expected {entry.sha256})",
            "Make sure nothing else writes to the build's input files, then build again.",
        )
    sink.write(_padding(seen))


def source_date_epoch() -> int:
    """Member mtime: SOURCE_DATE_EPOCH when set, else 0, so bundles are reproducible."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "0")
    return int(value) if value.isdigit() else 0


def write_bundle(
    target: Path,
    manifest: Manifest,
    files: Mapping[str, Path],
    signer: Optional[Signer] = None,
    split: Optional[int] = None,
    progress: Progress = lambda n: None,
) -> BundleOutput:
    """Write `manifest` and its payload (member path → local file) as bundle `target`."""
    missing = [e.path for e in manifest.entries if e.path not in files]
    if missing:
        raise UsageError(f"no local file given for bundle member {missing[0]}")
    data = manifest.to_bytes()
    sink = _PartWriter(target, split)
    try:
        _write_members(sink, manifest, data, files, signer, progress)
        paths = sink.finish()
    except BaseException:
        sink.abort()
        raise
    bundle_id = hashlib.sha256(data).hexdigest()
    sha256s = {str(p["name"]): str(p["sha256"]) for p in sink.written}
    if split is None:
        return BundleOutput(paths, bundle_id, sink.total, None, sha256s)
    index = _write_parts_index(target, sink, bundle_id)
    sha256s[index.name] = sha256_file(index)
    return BundleOutput([*paths, index], bundle_id, sink.total, index, sha256s)


def _write_members(
    sink: _PartWriter,
    manifest: Manifest,
    data: bytes,
    files: Mapping[str, Path],
    signer: Optional[Signer],
    progress: Progress,
) -> None:
    mtime = source_date_epoch()
    small = [(MANIFEST_NAME, data)]
    if signer is not None:
        small.append((SIGNATURE_NAME, signer(data).to_bytes()))
    for name, blob in small:
        sink.write(_tar_header(name, len(blob), 0o644, mtime) + blob + _padding(len(blob)))
    for entry in manifest.entries:
        sink.write(_tar_header(entry.path, entry.size, entry.mode, mtime))
        _copy_member(sink, entry, files[entry.path], progress)
    end = 2 * BLOCK
    sink.write(b"\0" * (end + (-(sink.total + end) % RECORD)))


def _write_parts_index(target: Path, sink: _PartWriter, bundle_id: str) -> Path:
    index = parts_index_path(target)
    doc: Dict[str, Any] = {"format": PARTS_FORMAT, "bundle": target.name, "bundle_id": bundle_id}
    doc.update(size=sink.total, parts=sink.written)
    tmp = index.with_name(f".{index.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", "utf-8")
    os.replace(tmp, index)
    return index
