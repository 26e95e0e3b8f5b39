"""Read a bundle (one tar, or its parts) as one stream and yield verified payload members.

A BundleSource reads the manifest and signature members first, then yields (entry, stream) pairs
in archive order; each stream hashes what is read from it and raises IntegrityError at its end
when the bytes do not match the manifest. Nothing here writes to the host.
"""

from __future__ import annotations

import hashlib
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    IO,
    Callable,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    cast,
)

from k3bundle.installer.errors import FormatError, IntegrityError, K3BundleError
from k3bundle.installer.format.chunkhash import Publisher, add_chunk_jobs
from k3bundle.installer.format.hashing import (
    CHUNK,
    HashJob,
    HashPool,
    Segment,
    corrupted,
    hashed_chunks,
)
from k3bundle.installer.format.manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    MAX_SIGNATURE_BYTES,
    SIGNATURE_NAME,
    Entry,
    Manifest,
    check_member_path,
)
from k3bundle.installer.format.parts import PartsReader, resolve_parts
from k3bundle.installer.format.slices import Holding, decide_holding, scan_member_names
from k3bundle.installer.format.tarstream import END_BLOCKS, RawReader, TarStream

_PLAIN_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)


class VerifyingStream:
    """A member's bytes, hashed as they are read and checked against the entry at the end.

    In a plain bundle file the member can instead be taken in place (`extent`): the caller
    copies it with the kernel and hands the hashing to HashPool jobs (`hash_staged`,
    `verify_in`).
    """

    def __init__(self, tar: TarStream, entry: Entry, bundle: str, mtime: int = 0) -> None:
        self._tar, self.entry, self.bundle = tar, entry, bundle
        self.mtime = mtime  # the member's tar mtime, which a slice keeps
        self._hash = hashlib.sha256()
        self._seen = 0
        self.checked = False

    def extent(self) -> Optional[List[Segment]]:
        """Where the member's bytes lie in the bundle's file(s), or None when read as a stream.

        Whoever takes the extent owns the verification: the stream no longer checks anything.
        """
        if self._seen or self.checked:
            return None
        extent = self._tar.take_extent()
        self.checked = extent is not None
        return extent

    def hash_staged(self, pool: HashPool, staged: Path, sync: bool = False) -> Publisher:
        """Queue the job(s) that hash the staged copy of this member as a copier fills it (and,
        with `sync`, flush it to disk once it checked out); the copier publishes to the result.

        A member with chunk digests (k3bundle/v2) gets one job per chunk, so one large file is
        hashed on every worker; the others one job for the whole file.
        """
        whole = [(staged, 0, self.entry.size)]
        if self.entry.chunks is not None:
            return add_chunk_jobs(pool, self.entry, self.bundle, whole, 0, staged if sync else None)
        return pool.add(HashJob(self.entry, self.bundle, whole, 0, sync))

    def verify_in(self, pool: HashPool, progress: Callable[[int], None]) -> None:
        """Verify without placing: pool jobs over the bytes in place, else read through."""
        extent = self.extent()
        if extent is None:
            self.drain(progress)
        elif self.entry.chunks is not None:
            add_chunk_jobs(pool, self.entry, self.bundle, extent, self.entry.size)
        else:
            pool.add(HashJob(self.entry, self.bundle, extent, self.entry.size))

    def readinto(self, view: memoryview) -> int:
        """Read into `view` and hash; at the end compare size and sha256 with the manifest."""
        count = self._tar.readinto(view)
        if count:
            self._hash.update(view[:count])
            self._seen += count
        elif not self.checked:
            self._check()
        return count

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes (all that is left when negative), verified like readinto."""
        out = bytearray()
        view = memoryview(bytearray(CHUNK))
        while size < 0 or len(out) < size:
            want = CHUNK if size < 0 else min(CHUNK, size - len(out))
            count = self.readinto(view[:want])
            if not count:
                break
            out += view[:count]
        return bytes(out)

    def _check(self) -> None:
        self.checked = True
        actual = self._hash.hexdigest()
        if self._seen != self.entry.size or actual != self.entry.sha256:
            raise corrupted(self.entry, self.bundle, actual)

    def chunks(self) -> Iterator[memoryview]:
        """The member's bytes in chunks, hashed on a second thread while the caller writes them.

        The size and sha256 check runs after the last chunk, before the caller can rename
        anything into place.
        """
        for chunk in hashed_chunks(self._tar.readinto, self._hash):
            self._seen += len(chunk)
            yield chunk
        if not self.checked:
            self._check()

    def drain(self, progress: Callable[[int], None] = lambda count: None) -> None:
        """Read (and so verify) whatever the consumer left."""
        if self.checked:
            return
        for chunk in self.chunks():
            progress(len(chunk))


@dataclass(frozen=True)
class Header:
    """The first members: the manifest bytes and, when signed, the signature bytes."""

    manifest: bytes
    signature: Optional[bytes]
    mtimes: Mapping[str, int] = field(default_factory=dict)  # member name → tar mtime


class BundleSource:
    """A bundle on disk, read once from start to end."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.name = self.path.name
        self.parts = resolve_parts(self.path)
        if self.parts is None and not self.path.is_file():
            raise IntegrityError(f"bundle {path} does not exist", "Check the path and try again.")
        self._parts_reader = PartsReader(self.parts) if self.parts else None
        self._raw: RawReader = self._parts_reader or open(self.path, "rb", buffering=0)  # noqa: SIM115
        self._tar = TarStream(self._raw, self.name)
        self._pending: Optional[tarfile.TarInfo] = None
        self._mtimes: Dict[str, int] = {}
        self._holding: Optional[Holding] = None

    def __enter__(self) -> BundleSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the open files."""
        cast(IO[bytes], self._raw).close()

    def total_size(self) -> int:
        """Bytes this source will read from disk."""
        if self.parts:
            return sum(p.size for p in self.parts)
        return self.path.stat().st_size

    def read_header(self) -> Header:
        """Read the manifest member and, if present, the signature member."""
        manifest = self._small_member(MANIFEST_NAME, required=True)
        assert manifest is not None
        signature = self._small_member(SIGNATURE_NAME, required=False)
        return Header(manifest, signature, dict(self._mtimes))

    def holding(self, manifest: Manifest) -> Holding:
        """Which architectures the archive holds, from its member headers (read once, up front).

        Read through a second handle that seeks from header to header, so the streaming pass
        knows before its first payload byte which members a slice leaves out.
        """
        if self._holding is None:
            raw = self._scan_reader()
            try:
                names, complete = scan_member_names(raw, self.name)
            finally:
                cast(IO[bytes], raw).close()
            self._holding = decide_holding(manifest, names, complete, self.name)
        return self._holding

    def _scan_reader(self) -> RawReader:
        if self.parts:
            return PartsReader(self.parts, check=False)
        return open(self.path, "rb", buffering=0)  # closed by the caller

    def _small_member(self, name: str, required: bool) -> Optional[bytes]:
        info = self._first_member() if required else self._next_member(name)
        if info is None or info.name != name:
            if required:
                raise FormatError(
                    f"{self.name} does not start with {name}: it is not a k3bundle/v1 bundle"
                )
            self._pending = info
            return None
        _check_type(info, self.name)
        limit = MAX_MANIFEST_BYTES if name == MANIFEST_NAME else MAX_SIGNATURE_BYTES
        if info.size > limit:  # from the header, before a byte of it is read
            raise FormatError(
                f"{name} in {self.name} is {info.size} bytes, more than the {limit} a k3bundle/v1 "
                "bundle allows"
            )
        self._mtimes[name] = int(info.mtime)
        data: bytes = self._tar.read_all()
        return data

    def _first_member(self) -> Optional[tarfile.TarInfo]:
        try:
            return self._next_member(MANIFEST_NAME)
        except IntegrityError:
            raise FormatError(
                f"{self.name} is not a tar archive (or is truncated at its start)"
            ) from None

    def payload(
        self, manifest: Manifest, pool: Optional[HashPool] = None
    ) -> Iterator[Tuple[Entry, VerifyingStream]]:
        """Yield each payload member with a verifying stream, enforcing the manifest's list.

        With a pool, the parts of a split bundle are hashed on it and their members can be
        taken in place like those of a single file.
        """
        if pool is not None and self._parts_reader is not None:
            self._parts_reader.hash_in(pool)
        try:
            yield from self._payload(manifest)
        except K3BundleError as exc:
            if isinstance(exc, IntegrityError) or pool is not None:
                self._blame_part()
            raise

    def _payload(self, manifest: Manifest) -> Iterator[Tuple[Entry, VerifyingStream]]:
        # A slice leaves out whole architectures: those entries are skipped, never looked for.
        holding = self.holding(manifest)
        expected = [e for e in manifest.entries if holding.expects(e)]
        by_path = {e.path: e for e in expected}
        left_out = {e.path: e for e in manifest.entries if e.path not in by_path}
        for position, entry in enumerate(expected):
            info = self._next_member(entry.path)
            if info is None:
                raise IntegrityError(
                    f"{self.name} ends before {entry.path}: "
                    "the bundle is truncated or a member is missing"
                )
            _check_type(info, self.name)
            check_member_path(info.name)
            if info.name in left_out:
                raise _left_out(left_out[info.name], self.name)
            if info.name != entry.path:
                raise _misplaced(info.name, entry, by_path, expected[:position], self.name)
            if info.size != entry.size:
                raise IntegrityError(
                    f"{info.name} in {self.name} has {info.size} bytes, "
                    f"the manifest says {entry.size}"
                )
            stream = VerifyingStream(self._tar, entry, self.name, int(info.mtime))
            yield entry, stream
            stream.drain()
        self._expect_end(by_path, left_out)

    def _expect_end(self, by_path: Dict[str, Entry], left_out: Dict[str, Entry]) -> None:
        extra = self._next_member()
        if extra is not None:
            if extra.name in left_out:
                raise _left_out(left_out[extra.name], self.name)
            if extra.name in by_path:
                raise FormatError(f"{self.name} holds {extra.name} twice (a duplicate path)")
            raise FormatError(
                f"{self.name} holds {extra.name}, which the signed manifest does not list"
            )
        if self._parts_reader is not None:
            self._parts_reader.drain()

    def _blame_part(self) -> None:
        if self._parts_reader is not None:
            self._parts_reader.blame()  # raises naming the damaged part, if one is

    def _next_member(self, expecting: str = END_BLOCKS) -> Optional[tarfile.TarInfo]:
        if self._pending is not None:
            info, self._pending = self._pending, None
            return info
        return None if self._tar.ended else self._tar.next(expecting)


def _check_type(info: tarfile.TarInfo, bundle: str) -> None:
    if info.type not in _PLAIN_TYPES or info.issparse():
        what = (
            "a symlink" if info.issym() else "a hardlink" if info.islnk() else "not a regular file"
        )
        what = "a device or fifo" if info.ischr() or info.isblk() or info.isfifo() else what
        raise FormatError(
            f"{bundle}: member {info.name!r} is {what}; bundles hold regular files only"
        )


def _left_out(entry: Entry, bundle: str) -> K3BundleError:
    """A member of an architecture the archive's headers said it leaves out (it changed since)."""
    return FormatError(
        f"{bundle} holds {entry.path} of architecture {entry.arch}, whose other files it "
        "leaves out: a slice holds all of an architecture's files or none"
    )


def _misplaced(
    name: str, wanted: Entry, by_path: dict[str, Entry], done: Sequence[Entry], bundle: str
) -> K3BundleError:
    if name in {e.path for e in done}:
        return FormatError(f"{bundle} holds {name} twice (a duplicate path)")
    if name in by_path:
        return IntegrityError(f"{bundle} lacks {wanted.path}, which the signed manifest lists")
    return FormatError(f"{bundle} holds {name}, which the signed manifest does not list")
