"""sha256 of payload bytes: file hashes, a two-buffer streaming hasher, and a pool of hash workers.

The fast path of install and verify: a member of a plain bundle file is copied by the kernel
(copying.py) into its staged file, and a worker thread hashes the staged file
right behind the copy, so what is checked is exactly what will be renamed into place. hashlib
releases the GIL, so sha256 of one member runs on one core while the next member is copied and
hashed on another: sha256 costs about as much as tar's whole extraction, and spreading it over
the cores is what keeps install close to `tar -xf`.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from k3bundle.installer.errors import IntegrityError
from k3bundle.installer.format.manifest import Entry
from k3bundle.installer.format.positional import CHUNK, O_BINARY, pread, pread_into

__all__ = ["CHUNK", "O_BINARY", "pread", "pread_into"]


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hashed_chunks(
    readinto: Callable[[memoryview], Optional[int]], digest: Any
) -> Iterator[memoryview]:
    """Chunks read with `readinto`, each fed to `digest` on a second thread while it is yielded.

    Two buffers take turns; a buffer is refilled only after its hash has finished, and the last
    hash has finished when the generator ends.
    """
    buffers = (memoryview(bytearray(CHUNK)), memoryview(bytearray(CHUNK)))
    pending: Optional[threading.Event] = None
    turn = 0
    while True:
        view = buffers[turn]
        count = readinto(view) or 0
        if pending is not None:
            pending.wait()
        if not count:
            return
        pending = _background().submit(digest.update, view[:count])
        yield view[:count]
        turn ^= 1


class _Background:
    """One long-lived daemon thread that runs calls in order (hashlib releases the GIL)."""

    def __init__(self) -> None:
        self._calls: queue.Queue[Tuple[Callable[[Any], Any], Any, threading.Event]] = queue.Queue()
        threading.Thread(target=self._run, name="k3bundle-sha256", daemon=True).start()

    def submit(self, call: Callable[[Any], Any], argument: Any) -> threading.Event:
        """Run call(argument) on the thread; the event is set when it has returned."""
        finished = threading.Event()
        self._calls.put((call, argument, finished))
        return finished

    def _run(self) -> None:
        while True:
            call, argument, finished = self._calls.get()
            try:
                call(argument)
            finally:
                finished.set()


_BACKGROUND: List[_Background] = []


def _background() -> _Background:
    if not _BACKGROUND:
        _BACKGROUND.append(_Background())
    return _BACKGROUND[0]


def corrupted(entry: Entry, bundle: str, actual: str) -> IntegrityError:
    """The one message for a member whose bytes differ from the signed manifest."""
    return IntegrityError(
        f"{entry.path} in {bundle} is corrupted: sha256 {actual}, "
        f"the signed manifest says {entry.sha256}",
    )


def truncated(bundle: str, member: str) -> IntegrityError:
    """The one message for a bundle that ends inside a member's bytes."""
    return IntegrityError(f"{bundle} is truncated inside {member}")


Segment = Tuple[Union[int, Path], int, int]  # (open descriptor or path, offset, length)


class HashJob:
    """sha256 of a member's bytes, hashed as they arrive; checked against its manifest entry.

    With `sync`, a staged copy that checked out is also flushed to disk (fsync) by the worker.

    The bytes are a list of segments (a member of a split bundle may span two parts). A segment
    names an open descriptor (the bundle, whose bytes are all there) or the path of a file that a
    copier is filling: it calls `publish(n)` when the first n bytes are in place, and the worker
    opens the path once there is something to read. Without an entry the job hashes until
    `publish(n, final=True)` and leaves the digest in `sha256`.
    """

    rank = 1  # which error to report first when several jobs fail (lower first)
    counts = True  # whether its bytes count as progress

    def __init__(
        self,
        entry: Optional[Entry],
        bundle: str,
        segments: Sequence[Segment],
        available: int = 0,
        sync: bool = False,
    ) -> None:
        self.entry, self.bundle = entry, bundle
        self._segments, self._sync = list(segments), sync
        self._available, self._cancelled = available, False
        self._final: Optional[int] = entry.size if entry is not None else None
        self._ready = threading.Condition()
        self.hashed = 0
        self.sha256: Optional[str] = None
        self.done = threading.Event()
        self.error: Optional[IntegrityError] = None

    @property
    def label(self) -> str:
        """What is hashed, for messages."""
        return self.entry.path if self.entry is not None else str(self._segments[0][0])

    def publish(self, count: int, final: bool = False) -> None:
        """The first `count` bytes may now be hashed (and, when final, nothing comes after)."""
        with self._ready:
            self._available = count
            if final:
                self._final = count
            self._ready.notify()

    def cancel(self) -> None:
        """Stop early: the work is being abandoned."""
        with self._ready:
            self._cancelled = True
            self._ready.notify()

    def result(self) -> str:
        """Wait for the digest (for a job without an entry); raise what went wrong."""
        self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.sha256 is not None, "the job was cancelled"
        return self.sha256

    def check(self, actual: str) -> None:
        """Compare the digest with what it must be (the entry's, when there is one)."""
        if self.entry is not None and actual != self.entry.sha256:
            raise corrupted(self.entry, self.bundle, actual)

    def run(self, buffer: memoryview) -> None:
        """Hash every byte (in a worker), then check the digest."""
        reader = _SegmentReader(self._segments)
        try:
            digest = hashlib.sha256()
            while True:
                limit = self._wait_for_bytes()
                if limit is None:
                    return
                self._hash_until(limit, reader, buffer, digest)
                if self._cancelled:
                    return
                if self._final is not None and self.hashed >= self._final:
                    break
            self.sha256 = digest.hexdigest()
            self.check(self.sha256)
            if self._sync:
                reader.sync()  # the verified bytes are on disk before anything commits
        except IntegrityError as exc:
            self.error = exc
        except OSError as exc:
            self.error = IntegrityError(f"cannot read {self.label}: {exc.strerror}")
        except Exception as exc:  # never pass a job that did not finish (MemoryError, a bug)
            self.error = IntegrityError(f"could not hash {self.label}: {exc!r}")
        finally:
            reader.close()
            self.done.set()

    def _hash_until(
        self, limit: int, reader: _SegmentReader, buffer: memoryview, digest: Any
    ) -> None:
        while self.hashed < limit and not self._cancelled:  # cancelled: stop within a chunk
            count = reader.readinto(self.hashed, buffer[: min(len(buffer), limit - self.hashed)])
            if count <= 0:
                raise truncated(self.bundle, self.label)
            digest.update(buffer[:count])
            self.hashed += count

    def _wait_for_bytes(self) -> Optional[int]:
        with self._ready:
            while (
                self._available <= self.hashed
                and not self._cancelled
                and (self._final is None or self.hashed < self._final)
            ):
                self._ready.wait()
            return None if self._cancelled else self._available

    def start(self) -> HashJob:
        """Run on a thread of its own (a writer's running hash, which must never queue)."""
        buffer = memoryview(bytearray(CHUNK))
        thread = threading.Thread(target=self.run, args=(buffer,), name="k3bundle-sha256")
        thread.daemon = True
        thread.start()
        return self


class PartJob(HashJob):
    """The sha256 of one part of a split bundle, checked against the parts index."""

    rank = 0  # a damaged part explains a corrupted member in it: name the part first
    counts = False

    def __init__(self, path: Path, size: int, sha256: str) -> None:
        super().__init__(None, path.name, [(path, 0, size)], available=size)
        self._final, self._expected = size, sha256

    def check(self, actual: str) -> None:
        """A part whose hash differs from the index is damaged."""
        if actual != self._expected:
            raise damaged_part(self.bundle)


def damaged_part(name: str) -> IntegrityError:
    """The one message for a part whose bytes differ from the parts index."""
    return IntegrityError(
        f"bundle part {name} is damaged (its sha256 does not match the index)",
        f"Copy {name} again from the build output; the other parts are fine so far.",
    )


class _SegmentReader:
    """Positional reads across a job's segments, opening paths when first needed."""

    def __init__(self, segments: Sequence[Segment]) -> None:
        self._segments = segments
        self._opened: Dict[int, int] = {}

    def readinto(self, position: int, view: memoryview) -> int:
        """Read at `position` of the joined segments (within one segment); 0 past the end."""
        start = 0
        for index, (file, offset, length) in enumerate(self._segments):
            if position < start + length:
                want = min(len(view), start + length - position)
                fd = self._fd(index, file)
                return pread_into(fd, view[:want], offset + position - start)
            start += length
        return 0

    def _fd(self, index: int, file: Union[int, Path]) -> int:
        if isinstance(file, int):
            return file
        if index not in self._opened:
            self._opened[index] = os.open(file, os.O_RDONLY | O_BINARY)
        return self._opened[index]

    def sync(self) -> None:
        """fsync the files this reader opened (a staged copy, once it has checked out)."""
        for fd in self._opened.values():
            os.fsync(fd)

    def close(self) -> None:
        """Close what this reader opened."""
        for fd in self._opened.values():
            os.close(fd)
        self._opened.clear()


class HashPool:
    """Worker threads that run HashJobs in the order they are added; `finish` checks them all."""

    def __init__(self, progress: Callable[[int], None] = lambda count: None, workers: int = 0):
        count = workers or max(2, min(4, os.cpu_count() or 2))
        self._progress, self._reported = progress, 0
        self._queue: queue.Queue[Optional[HashJob]] = queue.Queue()
        self.jobs: List[HashJob] = []
        self._threads = [
            threading.Thread(target=self._work, name=f"k3bundle-sha256-{n}", daemon=True)
            for n in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def add(self, job: HashJob) -> HashJob:
        """Queue a job; it starts as soon as a worker is free."""
        self.jobs.append(job)
        self._queue.put(job)
        return job

    def poll(self) -> None:
        """Report the bytes hashed since the last report (call from the main thread)."""
        hashed = sum(job.hashed for job in self.jobs if job.counts)
        if hashed > self._reported:
            self._progress(hashed - self._reported)
            self._reported = hashed

    def finish(self) -> None:
        """Wait for every job; raise the first error (a damaged part, else in manifest order)."""
        for job in self.jobs:
            while not job.done.wait(0.1):
                self.poll()
        self.poll()
        self.close()
        for job in self.jobs:
            if job.error is None and job.sha256 is None:  # it stopped without a digest
                job.error = IntegrityError(f"{job.label} was not hashed to the end")
        failed = [job for job in self.jobs if job.error is not None]
        if failed:
            first = min(failed, key=lambda job: job.rank)
            assert first.error is not None
            raise first.error

    def close(self) -> None:
        """Cancel what is left and stop the workers (idempotent)."""
        for job in self.jobs:
            job.cancel()
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()
        self._threads = []

    def __enter__(self) -> HashPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _work(self) -> None:
        buffer = memoryview(bytearray(CHUNK))
        while True:
            job = self._queue.get()
            if job is None:
                return
            job.run(buffer)
