"""What release downloads and registry pulls share: the byte tally, Retry-After, cancellation
and the worker threads.

Ctrl-C reaches the main thread only. It sets the build's Cancel, which every streaming loop
checks between chunks and which shuts down the sockets of the transfers in flight, so a worker
blocked on a stalled socket wakes at once; the main thread then waits at most a second for the
workers (daemon threads) and leaves. Partial files stay where they are: each holds a prefix of
its content, which the next build hashes and resumes with a Range request.
"""

from __future__ import annotations

import contextlib
import email.utils
import errno
import hashlib
import queue
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Set, TypeVar

import requests

from k3bundle.installer.errors import K3BundleError, build_error

_T = TypeVar("_T")
_R = TypeVar("_R")
GRACE = 1.0  # seconds the main thread waits for workers after Ctrl-C
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG)
CHUNK = 4 << 20  # at most this much per read; a read returns whatever has arrived


class Interrupted(K3BundleError):
    """Ctrl-C: the build stopped; partial downloads are kept for the next run."""

    exit_code = 130


class Cancelled(KeyboardInterrupt):
    """Raised in a worker thread once the build is cancelled (never retried, never caught as an
    Exception)."""


class Tally:
    """Bytes received over the network, counted by every worker thread of a build."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.total = 0

    def add(self, count: int) -> None:
        """Count `count` more bytes (`+=` on an attribute is not atomic across threads)."""
        with self._lock:
            self.total += count


class Cancel:
    """A build's stop signal: checked between chunks, and it wakes transfers blocked on a socket."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._sockets: Set[socket.socket] = set()

    def is_set(self) -> bool:
        """Whether the build was cancelled."""
        return self._event.is_set()

    def check(self) -> None:
        """Raise Cancelled once the build is cancelled."""
        if self._event.is_set():
            raise Cancelled()

    def set(self) -> None:
        """Cancel: every check raises from now on, and open transfers' sockets are shut down."""
        with self._lock:
            self._event.set()
            for sock in self._sockets:
                with contextlib.suppress(OSError):  # already closed by its own thread
                    sock.shutdown(socket.SHUT_RDWR)

    def sleep(self, seconds: float) -> None:
        """Wait `seconds` (a retry's backoff), or raise Cancelled as soon as the build is."""
        if self._event.wait(seconds):
            raise Cancelled()

    @contextlib.contextmanager
    def watching(self, response: requests.Response) -> Iterator[None]:
        """While the body of `response` streams, a cancel shuts its socket down."""
        sock = _socket_of(response)
        with self._lock:
            self.check()
            if sock is not None:
                self._sockets.add(sock)
        try:
            yield
        finally:
            with self._lock:
                if sock is not None:
                    self._sockets.discard(sock)


def _socket_of(response: requests.Response) -> Optional[socket.socket]:
    connection = getattr(response.raw, "connection", None)  # urllib3 2's HTTPResponse
    sock = getattr(connection, "sock", None)
    return sock if isinstance(sock, socket.socket) else None


def run_parallel(
    work: Callable[[_T], _R], items: Sequence[_T], jobs: int, cancel: Cancel
) -> List[_R]:
    """`work` for every item, `jobs` threads at a time; results in order, the first error (in
    item order) raised; Ctrl-C cancels the rest and leaves within GRACE seconds."""
    pending: queue.SimpleQueue[int] = queue.SimpleQueue()
    for index in range(len(items)):
        pending.put(index)
    results: Dict[int, _R] = {}
    errors: Dict[int, BaseException] = {}

    def worker() -> None:
        while not cancel.is_set():
            try:
                index = pending.get_nowait()
            except queue.Empty:
                return
            try:
                results[index] = work(items[index])
            except BaseException as exc:  # handed to the main thread, which raises it
                errors[index] = exc

    # Daemon threads: one stuck before a server's first byte must not hold the exit.
    threads = [threading.Thread(target=worker, daemon=True) for _ in items[: max(1, jobs)]]
    _join(threads, cancel)
    if errors:
        raise errors[min(errors)]
    return [results[index] for index in range(len(items))]


def _join(threads: Sequence[threading.Thread], cancel: Cancel) -> None:
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except BaseException:  # Ctrl-C (KeyboardInterrupt) arrives in the main thread only
        cancel.set()
        deadline = time.monotonic() + GRACE
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        raise


def retry_after(
    response: requests.Response, now: Callable[[], float] = time.time
) -> Optional[float]:
    """The wait a Retry-After header asks for, in either form (seconds or an HTTP-date)."""
    value = response.headers.get("Retry-After", "").strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):  # absent or malformed: our own backoff applies
        return None
    return max(0.0, when.timestamp() - now())


def stream_body(
    response: requests.Response,
    partial: Path,
    offset: int,
    limit: int,
    digest: hashlib._Hash,
    cancel: Cancel,
    received: Callable[[int], None],
) -> int:
    """Append the body to `partial` from `offset`, hashing it, until it ends or one byte past
    `limit`; returns the partial's size. Checks `cancel` between reads."""
    # read1 returns what has arrived (readinto waits for a full buffer): progress moves, a
    # cancel is seen at once, and a cut connection loses no byte that already came.
    read = getattr(response.raw, "read1", response.raw.read)  # urllib3 1.26 has no read1
    written = offset
    try:
        with open(partial, "r+b" if offset else "wb") as out:
            out.seek(offset)
            out.truncate()
            while written <= limit:
                cancel.check()
                data = read(min(CHUNK, limit - written + 1))
                if not data:
                    break
                out.write(data)
                digest.update(data)
                written += len(data)
                received(len(data))
    except OSError as exc:
        if exc.errno not in DISK_ERRORS:  # a network error (the caller retries it)
            raise
        raise _write_error(exc, partial) from None
    cancel.check()  # a socket shut down by Ctrl-C ends the body early: keep the partial
    return written


def _write_error(exc: OSError, partial: Path) -> K3BundleError:
    """The disk failed the partial file: name it; when the disk is full, remove it.

    A partial that filled the disk would block every other write (and the next build's
    resume would only fill it again): it goes, and the next build starts that file over.
    """
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        partial.unlink(missing_ok=True)
    return build_error(exc, "write", partial)
