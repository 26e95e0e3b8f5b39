"""HTTP for release files, registries and chart repositories: settings, the one session class,
retry delays (backoff with jitter, Retry-After in both forms), the byte tally, the streaming
loop into a partial file, cancellation and the worker threads.

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
import queue
import random
import socket
import threading
import time
from dataclasses import dataclass
from http.cookiejar import DefaultCookiePolicy
from pathlib import Path
from typing import (
    Any,
    Callable,
    Collection,
    Dict,
    Iterator,
    List,
    Optional,
    Protocol,
    Sequence,
    Set,
    Tuple,
    TypeVar,
    Union,
)

import requests
import requests.adapters
import urllib3
import urllib3.connection

from k3bundle.bundler.net.limits import SafeSession
from k3bundle.installer.errors import K3BundleError, build_error

USER_AGENT = "k3bundle/0.1 (air-gap bundler for k3s)"
RETRY_STATUS = {429, 500, 502, 503, 504}
TRANSIENT = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.HTTPError,  # raised by response.raw mid-body: dropped, timed out, short
)
_T = TypeVar("_T")
_R = TypeVar("_R")
GRACE = 1.0  # seconds the main thread waits for workers after Ctrl-C
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG)
CHUNK = 256 << 10  # at most this much per read; a read returns whatever has arrived
# (a read allocates this much before it learns how much came: 4 MiB reads of the ~64 KiB a
# 1 Gbit/s link delivers at a time cost 1.5 CPU s per GiB in allocation, bench/build_vs_curl.py)


class Hasher(Protocol):
    """What stream_body feeds each received piece to (a StreamDigest)."""

    def update(self, data: bytes) -> None:
        """Take the next bytes."""


@dataclass(frozen=True)
class FetchSettings:
    """Network limits: connect/read timeouts, retry count and backoff, parallel jobs."""

    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    retries: int = 5
    backoff: float = 0.5
    max_backoff: float = 30.0
    jobs: int = 4
    offline: bool = False
    ca_file: Optional[str] = None  # CA bundle for https (--ca-file); None: requests' default
    jitter: float = 0.0  # share of each backoff taken off at random (the CLI sets 0.5)

    @property
    def timeout(self) -> Tuple[float, float]:
        """The (connect, read) timeout pair requests takes."""
        return (self.connect_timeout, self.read_timeout)


class BoundedSession(SafeSession):
    """The one session class: our timeouts on every request, checked redirects, a User-Agent,
    no cookies, identity encoding (payloads are compressed; Range offsets stay true)."""

    def __init__(
        self,
        timeout: Tuple[float, float],
        insecure: Collection[str] = (),
        verify: Union[bool, str] = True,
    ) -> None:
        super().__init__(insecure)
        self.timeout, self.verify = timeout, verify
        self.headers["User-Agent"] = USER_AGENT
        self.headers["Accept-Encoding"] = "identity"
        self.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        for prefix in ("https://", "http://"):
            self.mount(prefix, WakeableAdapter())

    def request(
        self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:
        """requests.Session.request with a default timeout."""
        kwargs.setdefault("timeout", self.timeout)
        return super().request(method, url, *args, **kwargs)


def make_session() -> requests.Session:
    """A session for release files and chart repositories (the Fetcher makes one per thread)."""
    return BoundedSession(FetchSettings().timeout)


def retry_delay(
    settings: FetchSettings,
    attempt: int,
    asked: Optional[float],
    rand: Callable[[], float] = random.random,
) -> float:
    """The wait before retrying after failed attempt `attempt` (0-based): the server's
    Retry-After when it sent one, else exponential backoff less a random share, so workers
    that failed together do not all come back at the same instant; at most max_backoff."""
    if asked is not None:
        return min(asked, settings.max_backoff)
    nominal = min(settings.backoff * 2.0**attempt, settings.max_backoff)
    return nominal * (1 - settings.jitter * rand())


class RetryLater(Exception):
    """A transient failure: try again (after `delay` seconds when the server said so)."""

    def __init__(self, reason: str, delay: Optional[float] = None) -> None:
        super().__init__(reason)
        self.reason, self.delay = reason, delay


def with_retries(
    once: Callable[[], _R],
    settings: FetchSettings,
    cancel: Cancel,
    retried: Callable[[int, str, float], None],
    give_up: Callable[[int, str], K3BundleError],
    sleep: Optional[Callable[[float], None]] = None,
) -> _R:
    """The one retry loop: `once()` until it returns, at most settings.retries more times after
    a RetryLater or a transient network error, waiting retry_delay between attempts (a Ctrl-C
    ends the wait). `retried(attempt, reason, delay)` reports each retry; `give_up(attempts,
    reason)` is the error raised when none is left. A cancelled transfer is never retried."""
    for attempt in range(settings.retries + 1):
        cancel.check()
        try:
            return once()
        except RetryLater as retry:
            reason, asked = retry.reason, retry.delay
        except TRANSIENT as exc:  # also raised mid-body, while a file streams
            reason, asked = f"{type(exc).__name__}: {exc}", None
        cancel.check()  # a transfer cut short by Ctrl-C is not retried
        if attempt >= settings.retries:
            raise give_up(attempt + 1, reason)
        delay = retry_delay(settings, attempt, asked)
        retried(attempt + 1, reason, delay)
        (sleep or cancel.sleep)(delay)
    raise AssertionError("unreachable")


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
        with self.holding(_socket_of(response), check=True):
            yield

    @contextlib.contextmanager
    def holding(self, sock: Optional[socket.socket], check: bool = False) -> Iterator[None]:
        """While this block runs, a cancel shuts `sock` down (at once when it already came):
        a thread blocked reading it wakes. `check`: raise Cancelled first when cancelled."""
        with self._lock:
            if check:
                self.check()
            if sock is not None:
                self._sockets.add(sock)
                if self._event.is_set():
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
        try:
            yield
        finally:
            with self._lock:
                if sock is not None:
                    self._sockets.discard(sock)


# The Cancel of the build whose worker runs on this thread (run_parallel sets it): a request
# still waiting for its response headers is woken through it too, not only a streaming body.
_worker = threading.local()


class _WakeableConnection:
    """Mixed into urllib3's connections: while waiting for a response's headers, the socket is
    held by the worker's Cancel, so Ctrl-C wakes a server that accepted and never answered."""

    sock: Optional[socket.socket]

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        """urllib3's getresponse, wakeable by the build's Cancel."""
        cancel: Optional[Cancel] = getattr(_worker, "cancel", None)
        if cancel is None:
            return super().getresponse(*args, **kwargs)  # type: ignore[misc]
        with cancel.holding(self.sock):
            return super().getresponse(*args, **kwargs)  # type: ignore[misc]


class _HTTPConnection(_WakeableConnection, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_WakeableConnection, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class WakeableAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter whose connections a build's Cancel can wake before the headers."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        """The pool manager, making wakeable connections."""
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


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
        _worker.cancel = cancel
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
    if len(results) < len(items):  # cancelled (another part of the build failed) before all ran
        raise Cancelled()
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
    digest: Hasher,
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
