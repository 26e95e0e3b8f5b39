"""Write k3bundle bundles: one deterministic tar, optionally split into parts as it is written.

The format's definitions (manifest model, member names, parts index) come from the installer, which
owns the format; this module only writes what those definitions describe.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Collection, Dict, List, Mapping, Optional, Tuple

from k3bundle.bundler import tarwrite
from k3bundle.bundler.tarwrite import (
    RECORD,
    PartWriter,
    Progress,
    padding,
    tar_header,
    tmp_name,
    write_end,
    write_small_member,
)
from k3bundle.installer.errors import InstallError, IntegrityError, UsageError
from k3bundle.installer.format import (
    DEFAULT_CHUNK,
    MANIFEST_NAME,
    PARTS_FORMAT,
    SIGNATURE_NAME,
    Chunks,
    Entry,
    HashJob,
    HashPool,
    Manifest,
    Signature,
    hash_chunks,
    parts_index_path,
    sha256_file,
)

FAT32_MAX = 4 * 1024**3 - 1
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


def _copy_member(
    sink: PartWriter, entry: Entry, local: Path, checks: Optional[_InputChecks], progress: Progress
) -> None:
    """Copy a payload file into the bundle with the kernel; re-verify it unless it was just made.

    A file from the cache may have rotted since it was verified: then a worker hashes the input
    in place while the kernel copies it, and every check has passed before the bundle is renamed
    into place. Files downloaded or written by this very build were hashed moments ago.
    """
    with open(local, "rb", buffering=0) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size != entry.size:
            raise _changed(local, f"{size} bytes", f"{entry.size} bytes")
        if checks is not None:
            checks.add(entry, local, handle.fileno())
        try:
            sink.copy_from(handle.fileno(), size, progress)
        except EOFError:
            raise _changed(local, "fewer bytes", f"{entry.size} bytes") from None
    sink.write(padding(size))


class _InputChecks:
    """Payload files re-hashed in place by a pool of workers while the bundle is written."""

    def __init__(self) -> None:
        self._pool = HashPool()
        self._locals: Dict[str, Path] = {}
        self._fds: List[int] = []

    def add(self, entry: Entry, local: Path, fd: int) -> None:
        """Hash the file open as `fd` (`local`) against `entry`, on a worker.

        The worker reads its own copy of the very descriptor the kernel copies from: the file
        checked is the file copied, even if the cache path is replaced meanwhile.
        """
        self._locals[entry.path] = local
        self._fds.append(os.dup(fd))
        self._pool.add(HashJob(entry, local.name, [(self._fds[-1], 0, entry.size)], entry.size))

    def finish(self) -> None:
        """Wait for every check; name the first file that no longer matches."""
        try:
            self._pool.finish()
        except IntegrityError:
            job = next(j for j in self._pool.jobs if j.error is not None)
            assert job.entry is not None and job.error is not None
            local = self._locals[job.entry.path]
            if job.sha256 is None:  # not a mismatch: the file could not be read
                raise IntegrityError(
                    f"cannot read {local} again to check it: {job.error.message}",
                    "Check the disk that holds the cache (or pass another --cache-dir).",
                ) from None
            raise _changed(local, f"sha256 {job.sha256}", f"sha256 {job.entry.sha256}") from None
        finally:
            self.close()

    def close(self) -> None:
        """Stop the workers and close the descriptors they read (idempotent)."""
        self._pool.close()
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()


def _changed(local: Path, actual: str, expected: str) -> IntegrityError:
    return IntegrityError(
        f"{local} changed since it was verified ({actual}, expected {expected})",
        "Make sure nothing else writes to the build's input files (or the cache), then build "
        "again.",
    )


def writer_code_sha256() -> str:
    """The sha256 of the writer's sources: the bytes of a bundle follow from them too."""
    sources = (Path(__file__), Path(tarwrite.__file__))
    return hashlib.sha256("".join(sha256_file(p) for p in sources).encode()).hexdigest()


def source_date_epoch() -> int:
    """Member mtime: SOURCE_DATE_EPOCH when set, else 0, so bundles are reproducible."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "0")
    return int(value) if value.isdigit() else 0


@dataclass
class Staged:
    """Outputs written under temporary names: `commit` renames them all into place at once."""

    output: BundleOutput
    renames: List[Tuple[Path, Path]]  # (temporary name, final name)

    def add(self, final: Path, write: Callable[[Path], object]) -> Path:
        """Write one more output (the installer, SHA256SUMS) under a temporary name."""
        tmp = tmp_name(final)
        self.renames.append((tmp, final))
        write(tmp)
        return final

    def commit(self) -> None:
        """Rename everything into place, all or nothing: a failed rename puts back what moved.

        The previous build's files step aside first (.NAME.old), so a rename refused half way
        (Windows: a file open in another program) leaves them whole, and the new files under
        their temporary names.
        """
        done: List[Tuple[Path, Path]] = []
        try:
            for _, final in self.renames:
                if os.path.lexists(final):
                    done.append(_rename(final, _old_name(final)))
            for tmp, final in self.renames:
                done.append(_rename(tmp, final))
        except _RenameError as exc:
            for source, target in reversed(done):
                with contextlib.suppress(OSError):  # best effort: keep undoing the rest
                    os.replace(target, source)
            raise exc.diagnosed() from None
        for _, final in self.renames:
            with contextlib.suppress(OSError):  # Windows: a reader still holds the old file
                _old_name(final).unlink(missing_ok=True)

    def abort(self) -> None:
        """Remove every temporary file."""
        for tmp, _ in self.renames:
            tmp.unlink(missing_ok=True)


RENAME_RETRIES = (0.05, 0.1, 0.2, 0.4, 0.8)  # seconds: a virus scanner's or indexer's brief hold


class _RenameError(Exception):
    def __init__(self, source: Path, target: Path, error: OSError) -> None:
        self.source, self.target, self.error = source, target, error

    def diagnosed(self) -> InstallError:
        return InstallError(
            f"cannot rename {self.source} to {self.target.name}: {self.error.strerror}",
            "Close any program that has the bundle's files open, then build again; the "
            "previous build's files are whole and the new ones wait under temporary names.",
        )


def _rename(source: Path, target: Path) -> Tuple[Path, Path]:
    """os.replace, retried briefly while Windows reports a sharing violation (PermissionError)."""
    for delay in (*RENAME_RETRIES, None):
        try:
            os.replace(source, target)
            return source, target
        except PermissionError as exc:
            if delay is None:
                raise _RenameError(source, target, exc) from None
            time.sleep(delay)
        except OSError as exc:
            raise _RenameError(source, target, exc) from None
    raise AssertionError("unreachable")


def _old_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.old")


def write_bundle(
    target: Path,
    manifest: Manifest,
    files: Mapping[str, Path],
    signer: Optional[Signer] = None,
    split: Optional[int] = None,
    progress: Progress = lambda n: None,
    fresh: Collection[str] = (),
    chunk: int = DEFAULT_CHUNK,
) -> BundleOutput:
    """Write `manifest` and its payload (member path → local file) as bundle `target`."""
    staged = stage_bundle(target, manifest, files, signer, split, progress, fresh, chunk)
    staged.commit()
    return staged.output


def stage_bundle(
    target: Path,
    manifest: Manifest,
    files: Mapping[str, Path],
    signer: Optional[Signer] = None,
    split: Optional[int] = None,
    progress: Progress = lambda n: None,
    fresh: Collection[str] = (),
    chunk: int = DEFAULT_CHUNK,
) -> Staged:
    """Write the bundle (its parts and parts index) under temporary names, not yet in place.

    Every local file is hashed again while it is copied, except the members named in `fresh`:
    files this very build downloaded or wrote, and hashed while it did. Each file larger than
    `chunk` bytes gets chunk digests (k3bundle/v2), so the installer verifies it on all cores;
    such a file is always hashed whole again while it is copied, fresh or not (with_chunks).
    """
    missing = [e.path for e in manifest.entries if e.path not in files]
    if missing:
        raise UsageError(f"no local file given for bundle member {missing[0]}")
    # Chunk digests a producer took in the same pass as the file's sha256 (an image archive
    # this build wrote) describe the same bytes: such a fresh file is copied without a re-read.
    same_pass = set(_producer_chunks(manifest, chunk))
    manifest = with_chunks(manifest, files, chunk)
    data = manifest.to_bytes()
    sink = PartWriter(target, split)
    fresh = {
        e.path
        for e in manifest.entries
        if e.path in fresh and (e.chunks is None or e.path in same_pass)
    }
    stale = any(e.path not in fresh for e in manifest.entries)
    checks = _InputChecks() if stale else None
    try:
        _write_members(sink, manifest, data, files, signer, progress, checks, fresh)
        if checks is not None:
            checks.finish()
    except BaseException:
        if checks is not None:
            checks.close()
        sink.abort()
        raise
    return stage_written(target, sink, hashlib.sha256(data).hexdigest(), split)


def with_chunks(manifest: Manifest, files: Mapping[str, Path], chunk: int) -> Manifest:
    """`manifest` with chunk digests on every entry larger than `chunk` bytes.

    Digests a producer took in the same pass as the file's sha256 (chunk size `chunk`) are
    kept as they are. Every chunk of every other such file is a job on one pool, so the pass
    runs on all cores. Those digests come from the bytes as they are now, so each such file is
    also hashed whole while it is copied (_InputChecks), even when this build just downloaded
    it: an installer that checks only the chunks records the whole-file sha256 as the placed
    file's, which holds only if the bytes copied are the bytes that sha256 was taken of. Bytes
    that changed between the chunk pass and the copy give a bundle the installer refuses: never
    a wrong file.
    """
    digests = _producer_chunks(manifest, chunk)
    large = [e for e in manifest.entries if e.size > chunk and e.path not in digests]
    if not large:
        return _chunked(manifest, digests, chunk)
    with contextlib.ExitStack() as opened, HashPool() as pool:
        jobs = {}
        for entry in large:
            local = files[entry.path]
            fd = opened.enter_context(open(local, "rb", buffering=0)).fileno()
            if os.fstat(fd).st_size != entry.size:
                raise _changed(local, f"{os.fstat(fd).st_size} bytes", f"{entry.size} bytes")
            jobs[entry.path] = hash_chunks(pool, fd, entry.size, chunk, local.name)
        try:
            pool.finish()
        except IntegrityError as exc:
            raise IntegrityError(
                f"cannot read a payload file to take its chunk digests: {exc.message}",
                "Check the disk that holds the cache and the build's input files.",
            ) from None
        for path, chunk_jobs in jobs.items():
            digests[path] = tuple(job.result() for job in chunk_jobs)
    return _chunked(manifest, digests, chunk)


def _producer_chunks(manifest: Manifest, chunk: int) -> Dict[str, Tuple[str, ...]]:
    """Chunk digests a producer took at size `chunk` in the pass that took the file's sha256."""
    return {
        e.path: e.chunks.sha256
        for e in manifest.entries
        if e.size > chunk and e.chunks is not None and e.chunks.size == chunk
    }


def _chunked(manifest: Manifest, digests: Mapping[str, Tuple[str, ...]], chunk: int) -> Manifest:
    """`manifest` whose entries carry exactly the chunk digests in `digests` (no others)."""
    entries = tuple(
        replace(e, chunks=Chunks(chunk, digests[e.path]) if e.path in digests else None)
        for e in manifest.entries
    )
    return replace(manifest, entries=entries)


def stage_written(target: Path, sink: PartWriter, bundle_id: str, split: Optional[int]) -> Staged:
    """Close the last part of a fully written bundle and stage its parts index (when split)."""
    try:
        renames = sink.finish()
    except BaseException:
        sink.abort()
        raise
    sha256s = {str(p["name"]): str(p["sha256"]) for p in sink.written}
    paths = [final for _, final in renames]
    staged = Staged(BundleOutput(paths, bundle_id, sink.total, None, sha256s), renames)
    if split is not None:
        try:
            index = staged.add(parts_index_path(target), _parts_index(target, sink, bundle_id))
        except BaseException:
            staged.abort()
            raise
        sha256s[index.name] = sha256_file(staged.renames[-1][0])
        staged.output = BundleOutput([*paths, index], bundle_id, sink.total, index, sha256s)
    return staged


def _write_members(
    sink: PartWriter,
    manifest: Manifest,
    data: bytes,
    files: Mapping[str, Path],
    signer: Optional[Signer],
    progress: Progress,
    checks: Optional[_InputChecks],
    fresh: Collection[str] = (),
) -> None:
    mtime = source_date_epoch()
    small = [(MANIFEST_NAME, data)]
    if signer is not None:
        small.append((SIGNATURE_NAME, signer(data).to_bytes()))
    for name, blob in small:
        write_small_member(sink, name, blob, mtime)
    for entry in manifest.entries:
        sink.write(tar_header(entry.path, entry.size, entry.mode, mtime))
        check = checks if entry.path not in fresh else None
        _copy_member(sink, entry, files[entry.path], check, progress)
    write_end(sink)


def _parts_index(target: Path, sink: PartWriter, bundle_id: str) -> Callable[[Path], object]:
    doc: Dict[str, Any] = {"format": PARTS_FORMAT, "bundle": target.name, "bundle_id": bundle_id}
    doc.update(size=sink.total, parts=sink.written)
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    return lambda tmp: tmp.write_bytes(text.encode("utf-8"))  # bytes: no \r\n on Windows
