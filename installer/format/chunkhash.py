"""Chunk digests (k3bundle/v2): one large member hashed on every core, slice by slice.

A real release is dominated by one file (the airgap image tarball, about three quarters of the
bytes); one sha256 stream over it runs on one core while `tar -xf` only copies. A v2 manifest
carries the sha256 of each CHUNK-byte slice of such a file (manifest_fields.Chunks), so the
installer hands every slice to its own HashPool job, and the builder computes them the same way.

Why the install record may then keep the entry's whole-file sha256 although the installer never
hashed the file whole: the signed manifest binds that sha256 to the chunk digests. The signer's
builder took both of the same bytes (it hashes every chunked file whole again while it copies it
into the bundle, writer.with_chunks), so bytes that match every signed chunk digest are those
bytes, and their sha256 is the one the manifest states; other bytes with the same chunk digests
would need a sha256 collision. The upstream sha256 stays recorded in the entry's `source` and was
checked at build time.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import List, Optional, Protocol, Sequence

from k3bundle.installer.errors import IntegrityError
from k3bundle.installer.format.hashing import HashJob, HashPool, Segment
from k3bundle.installer.format.manifest import Entry
from k3bundle.installer.format.manifest_fields import Chunks, chunk_count


class Publisher(Protocol):
    """What a copier tells how far it got: the first `count` bytes are in place."""

    def publish(self, count: int, final: bool = False) -> None:
        """The first `count` bytes may now be hashed."""


def slice_segments(segments: Sequence[Segment], start: int, length: int) -> List[Segment]:
    """The segments that hold bytes start..start+length of the bytes `segments` join."""
    out: List[Segment] = []
    base = 0
    for file, offset, size in segments:
        lo, hi = max(start, base), min(start + length, base + size)
        if lo < hi:
            out.append((file, offset + lo - base, hi - lo))
        base += size
    return out


class ChunkJob(HashJob):
    """The sha256 of one chunk of a member, checked against its digest in the signed manifest."""

    def __init__(
        self,
        entry: Entry,
        bundle: str,
        segments: Sequence[Segment],
        index: int,
        available: int,
        group: _Group,
    ) -> None:
        super().__init__(entry, bundle, segments, available)
        assert entry.chunks is not None
        self.index, self.offset = index, index * entry.chunks.size
        self.length = min(entry.chunks.size, entry.size - self.offset)
        self._final, self._group = self.length, group

    def check(self, actual: str) -> None:
        """Compare with the chunk's digest; name the chunk's byte range when it differs."""
        assert self.entry is not None and self.entry.chunks is not None
        expected = self.entry.chunks.sha256[self.index]
        if actual != expected:
            raise chunk_corrupted(self.entry, self.bundle, self.index, actual)
        self._group.passed()

    def publish_member(self, count: int) -> None:
        """The member's first `count` bytes are in place: as much of this chunk as that covers."""
        self.publish(max(0, min(self.length, count - self.offset)))


def chunk_corrupted(entry: Entry, bundle: str, index: int, actual: str) -> IntegrityError:
    """The one message for a chunk whose bytes differ from the signed manifest."""
    assert entry.chunks is not None
    start = index * entry.chunks.size
    end = min(start + entry.chunks.size, entry.size) - 1
    count = chunk_count(entry.size, entry.chunks.size)
    return IntegrityError(
        f"{entry.path} in {bundle} is corrupted: bytes {start}-{end} (chunk {index + 1} of "
        f"{count}) have sha256 {actual}, the signed manifest says {entry.chunks.sha256[index]}",
    )


class _Group:
    """The chunk jobs of one staged file: the last one to pass flushes the file (with sync)."""

    def __init__(self, count: int, sync_path: Optional[Path]) -> None:
        self._left, self._sync_path = count, sync_path
        self._lock = threading.Lock()

    def passed(self) -> None:
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last and self._sync_path is not None:  # every chunk checked out: now to the disk
            fd = os.open(self._sync_path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


class ChunkedJobs:
    """A chunked member's jobs, fed as one: `publish(n)` reaches the chunks n covers."""

    def __init__(self, jobs: Sequence[ChunkJob]) -> None:
        self.jobs = list(jobs)

    def publish(self, count: int, final: bool = False) -> None:
        """The member's first `count` bytes are in place."""
        for job in self.jobs:
            job.publish_member(count)


def add_chunk_jobs(
    pool: HashPool,
    entry: Entry,
    bundle: str,
    segments: Sequence[Segment],
    available: int,
    sync_path: Optional[Path] = None,
) -> ChunkedJobs:
    """Queue one job per chunk of `entry` over its bytes in `segments`, in order.

    `available` bytes are in place already (a bundle's own bytes: all of them; a staged copy
    being filled: none, and the copier publishes as it goes).
    """
    chunks: Chunks = entry.chunks  # type: ignore[assignment]
    group = _Group(chunk_count(entry.size, chunks.size), sync_path)
    jobs = []
    for index, (start, length) in enumerate(chunks.spans(entry.size)):
        part = slice_segments(segments, start, length)
        have = max(0, min(length, available - start))
        jobs.append(ChunkJob(entry, bundle, part, index, have, group))
        pool.add(jobs[-1])
    return ChunkedJobs(jobs)


class SliceJob(HashJob):
    """The sha256 of `length` bytes at `offset` of an open file (the builder's chunk digests)."""

    def __init__(self, fd: int, offset: int, length: int, label: str) -> None:
        super().__init__(None, label, [(fd, offset, length)], available=length)
        self._final = length


def hash_chunks(pool: HashPool, fd: int, size: int, chunk: int, label: str) -> List[SliceJob]:
    """Queue the digest of each `chunk`-byte slice of the open file `fd` on `pool`."""
    jobs = [SliceJob(fd, start, min(chunk, size - start), label) for start in range(0, size, chunk)]
    for job in jobs:
        pool.add(job)
    return jobs
