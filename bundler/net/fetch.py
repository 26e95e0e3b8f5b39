"""Downloads behind one seam: one requests session, bounded timeouts and retries, resume, hashing.

Every file is streamed to a partial file in the cache while it is hashed, resumed with an HTTP
Range request after a dropped connection (or restarted when the server ignores Range), retried a
bounded number of times with backoff on connection errors, 5xx and 429, and admitted into the
cache only when its sha256 matches the expected one.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Dict, Optional, Sequence, TypeVar

import requests

from k3bundle.bundler.cache import Cache
from k3bundle.bundler.net.limits import (
    MAX_RELEASE_FILE,
    MAX_TEXT,
    REDIRECT_ERRORS,
    read_bounded,
    redirect_error,
    too_large,
)
from k3bundle.bundler.net.transport import (
    RETRY_STATUS,
    USER_AGENT,
    Cancel,
    FetchSettings,
    RetryLater,
    Tally,
    make_session,
    retry_after,
    run_parallel,
    stream_body,
    with_retries,
)
from k3bundle.bundler.stream_digest import StreamDigest, digest_prefix
from k3bundle.installer.errors import FetchError, IntegrityError
from k3bundle.installer.format import Chunks

__all__ = ["USER_AGENT", "FetchSettings", "make_session"]  # their home is bundler/net/transport.py

_T = TypeVar("_T")
DEFAULT_SETTINGS = FetchSettings()


@dataclass(frozen=True)
class Download:
    """One file to fetch: where from, the sha256 it must have, and at most how many bytes."""

    url: str
    sha256: str
    name: str
    max_size: int = MAX_RELEASE_FILE  # the declared size when one is known (a chart's layer)


class FetchEvents:
    """Callbacks for progress; silent by default, the CLI draws bars from them."""

    def planned(self, downloads: Sequence[Download]) -> None:
        """These files will be fetched (or taken from the cache)."""

    def started(self, download: Download, total: Optional[int], done: int) -> None:
        """A transfer began (or resumed at `done` bytes)."""

    def advanced(self, download: Download, count: int) -> None:
        """`count` more bytes arrived."""

    def finished(self, download: Download, cached: bool) -> None:
        """The file is verified and in the cache (`cached`: no transfer was needed)."""

    def retrying(self, download: Download, reason: str, delay: float) -> None:
        """A transfer failed transiently and will be retried after `delay` seconds."""

    def retried(self, download: Download, attempt: int, reason: str, delay: float) -> None:
        """Attempt number `attempt` failed; by default the same as `retrying`."""
        self.retrying(download, reason, delay)


class NotFoundError(FetchError):
    """The server says the file does not exist (HTTP 404)."""


class Fetcher:
    """Fetches verified files into a Cache, in parallel, resuming where transfers broke off."""

    def __init__(
        self,
        cache: Cache,
        settings: FetchSettings = DEFAULT_SETTINGS,
        events: Optional[FetchEvents] = None,
        session_factory: Callable[[], requests.Session] = make_session,
        sleep: Optional[Callable[[float], None]] = None,
        cancel: Optional[Cancel] = None,
    ) -> None:
        self.cache, self.settings = cache, settings
        self.events = events or FetchEvents()
        self._local = threading.local()
        self.cancel = cancel or Cancel()  # shared with the registry clients of the same build
        self._session_factory = session_factory
        self._sleep = sleep or self.cancel.sleep  # a backoff ends at once on Ctrl-C
        self.tally = Tally()
        # Every file this run fetched (and verified), by sha256: its chunk digests, taken in
        # the download's own hashing pass (None up to one chunk).
        self.chunks: Dict[str, Optional[Chunks]] = {}

    @property
    def downloaded(self) -> Collection[str]:
        """The sha256s this run fetched (and verified)."""
        return self.chunks.keys()

    @property
    def transferred(self) -> int:
        """Bytes received so far, by this Fetcher and the registry clients sharing its tally."""
        return self.tally.total

    def _session(self) -> requests.Session:
        # requests sessions are not thread-safe: one per worker thread.
        if not hasattr(self._local, "session"):
            self._local.session = self._session_factory()
            if self.settings.ca_file:
                self._local.session.verify = self.settings.ca_file
        session: requests.Session = self._local.session
        return session

    def get_text(self, url: str, max_bytes: int = MAX_TEXT) -> str:
        """A small UTF-8 text file (a checksum file) of at most `max_bytes`, with the same retry
        rules as downloads."""
        data = self._retrying(url, lambda: self._get_bytes_once(url, max_bytes))
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise FetchError(f"{url} is not UTF-8 text", "Check the URL.") from None

    def _get_bytes_once(self, url: str, max_bytes: int) -> bytes:
        try:
            get = self._session().get
            with get(url, stream=True, timeout=self.settings.timeout) as response:
                self._check_status(response, url)
                return read_bounded(response, max_bytes, url)
        except REDIRECT_ERRORS as exc:
            raise redirect_error(url, exc) from None

    def fetch_all(self, downloads: Sequence[Download]) -> Dict[str, Path]:
        """Fetch every download (in parallel, --jobs at once); return {sha256: cached path}."""
        unique = list({d.sha256: d for d in downloads}.values())
        self.events.planned(unique)
        paths = run_parallel(self.fetch, unique, self.settings.jobs, self.cancel)
        return {d.sha256: p for d, p in zip(unique, paths)}

    def fetch(self, download: Download) -> Path:
        """One verified file in the cache: from the cache when present, else downloaded."""
        cached = self.cache.lookup(download.sha256)
        if cached is None and self.settings.offline:
            raise FetchError(
                f"--offline: {download.name} (sha256 {download.sha256[:12]}…) is not in the cache "
                f"{self.cache.root}",
                "Run the same build once with network access to fill the cache.",
            )
        if cached is None:
            with self.cache.downloading(download.sha256) as partial:
                # another thread or build may have admitted it while we waited
                cached = self.cache.lookup(download.sha256)
                if cached is None:
                    return self._fetch_into(download, partial)
        self.events.finished(download, cached=True)
        return cached

    def _fetch_into(self, download: Download, partial: Path) -> Path:
        return self._retrying(download.url, lambda: self._transfer(download, partial), download)

    def _retrying(
        self, url: str, once: Callable[[], _T], download: Optional[Download] = None
    ) -> _T:
        """`once` through the transport's one retry loop, retries reported as events."""
        about = download or Download(url, "", url.rsplit("/", 1)[-1])

        def give_up(attempts: int, reason: str) -> FetchError:
            return FetchError(
                f"giving up on {url} after {attempts} attempts: {reason}",
                "Check the network or the mirror, then build again: finished files are cached "
                "and an interrupted one resumes where it stopped.",
            )

        def retried(attempt: int, reason: str, delay: float) -> None:
            self.events.retried(about, attempt, reason, delay)

        return with_retries(once, self.settings, self.cancel, retried, give_up, self._sleep)

    def _check_status(self, response: requests.Response, url: str) -> None:
        if response.status_code in RETRY_STATUS:
            raise RetryLater(f"HTTP {response.status_code}", retry_after(response))
        if response.status_code == 404:
            raise NotFoundError(
                f"not found: {url} (HTTP 404)", "Check the version, architecture and --release-url."
            )
        if response.status_code >= 400:
            raise FetchError(
                f"{url} answered HTTP {response.status_code}",
                "Check the URL and your access to it.",
            )

    def _transfer(self, download: Download, partial: Path) -> Path:
        have = partial.stat().st_size if partial.exists() else 0
        have = have if have <= download.max_size else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with self._session().get(
                download.url, headers=headers, stream=True, timeout=self.settings.timeout
            ) as response:
                if response.status_code == 416:
                    partial.unlink()
                    raise RetryLater("the server refused to resume (HTTP 416); starting over", 0)
                self._check_status(response, download.url)
                resumed = have > 0 and response.status_code == 206
                with self.cancel.watching(response):
                    return self._stream(download, response, partial, have if resumed else 0)
        except REDIRECT_ERRORS as exc:
            raise redirect_error(download.url, exc) from None

    def _stream(
        self, download: Download, response: requests.Response, partial: Path, offset: int
    ) -> Path:
        digest = digest_prefix(partial, offset)
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        limit = min(download.max_size, total if total is not None else download.max_size)
        if total is not None and total > download.max_size:
            partial.unlink(missing_ok=True)
            raise too_large(download.url, download.max_size)
        self.events.started(download, total, offset)
        written = self._write(download, response, partial, offset, limit, digest)
        if written > limit:  # stopped one buffer past the bound: nothing of it is kept
            partial.unlink()
            raise too_large(download.url, limit)
        return self._admit(download, partial, digest)

    def _write(
        self,
        download: Download,
        response: requests.Response,
        partial: Path,
        offset: int,
        limit: int,
        digest: StreamDigest,
    ) -> int:
        """Append the body to `partial` from `offset`, stopping one byte past `limit`."""

        def received(count: int) -> None:
            self.tally.add(count)
            self.events.advanced(download, count)

        return stream_body(response, partial, offset, limit, digest, self.cancel, received)

    def _admit(self, download: Download, partial: Path, digest: StreamDigest) -> Path:
        actual = digest.hexdigest()
        if actual != download.sha256:
            partial.unlink()
            raise IntegrityError(
                f"checksum mismatch for {download.url}: "
                f"expected sha256 {download.sha256}, got {actual}",
                "The download or the mirror is corrupt; nothing was cached. Build again, or check "
                "the mirror against upstream's sha256sum file.",
            )
        path = self.cache.admit(partial, download.sha256)
        self.chunks[download.sha256] = digest.chunks()
        self.events.finished(download, cached=False)
        return path
