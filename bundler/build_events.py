"""Progress for `k3bundle build`'s downloads: tqdm bars on a terminal, log lines elsewhere.

Release files, image blobs and chart blobs all report through the same FetchEvents, so every
byte fetched is shown and counted in one total.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional

import click

from k3bundle.bundler.net.fetch import Download, FetchEvents
from k3bundle.bundler.progress import bar_write, new_bar
from k3bundle.installer.progress import human_size

if TYPE_CHECKING:
    from tqdm import tqdm

PERIOD = 10.0  # seconds between progress lines when stderr is not a terminal


def _key(download: Download) -> str:
    return download.sha256 or download.url


def retry_line(download: Download, attempt: int, reason: str, delay: float) -> str:
    """The line that reports one failed attempt: the URL, the attempt number and the wait."""
    return f"retrying {download.url} in {delay:.1f}s (attempt {attempt} failed: {reason})"


class TqdmFetchEvents(FetchEvents):
    """A tqdm bar per transfer plus one total in bytes (with speed and ETA), on a terminal."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bars: Dict[str, tqdm[Any]] = {}
        self._total: Optional[tqdm[Any]] = None
        self._expected: Dict[str, int] = {}  # per transfer: bytes received + bytes still due
        self._received: Dict[str, int] = {}

    def started(self, download: Download, total: Optional[int], done: int) -> None:
        """Open (or reopen, after a resume) the transfer's bar; grow the total by what is due."""
        key = _key(download)
        with self._lock:
            old = self._bars.pop(key, None)
            if old is not None:
                old.close()
            self._bars[key] = new_bar(
                total=total, initial=done, desc=download.name, **_BYTES, leave=False
            )
            received = self._received.setdefault(key, 0)
            self._expected[key] = received + (total - done if total is not None else 0)
            self._grow()

    def _grow(self) -> None:
        """The total's size: bytes received plus bytes due (unknown sizes: received only)."""
        totals = self._total_bar()
        totals.total = sum(self._expected.values())
        totals.refresh()

    def _total_bar(self) -> tqdm[Any]:
        if self._total is None:
            self._total = new_bar(total=0, desc="downloaded", **_BYTES, leave=True)
        return self._total

    def advanced(self, download: Download, count: int) -> None:
        """Move the transfer's bar and the total."""
        key = _key(download)
        with self._lock:
            received = self._received[key] = self._received.get(key, 0) + count
            bar = self._bars.get(key)
            if bar is not None:
                bar.update(count)
            self._total_bar().update(count)
            if received > self._expected.get(key, 0):  # a size nobody declared, or a liar
                self._expected[key] = received
                self._grow()

    def finished(self, download: Download, cached: bool) -> None:
        """Close the transfer's bar and say where the file came from."""
        with self._lock:
            bar = self._bars.pop(_key(download), None)
            if bar is not None:
                bar.close()
            bar_write(f"{'cached  ' if cached else 'verified'} {download.name}")

    def retried(self, download: Download, attempt: int, reason: str, delay: float) -> None:
        """Say which transfer is retried, after which attempt, and when."""
        bar_write(retry_line(download, attempt, reason, delay))

    def close(self) -> None:
        """Close every bar still open (the build ended, or was interrupted)."""
        with self._lock:
            for bar in [*self._bars.values(), *([self._total] if self._total else [])]:
                bar.close()
            self._bars.clear()


_BYTES: Dict[str, Any] = {"unit": "B", "unit_scale": True, "unit_divisor": 1024}


class LogFetchEvents(FetchEvents):
    """Progress as plain lines on stderr (not a terminal): a total every PERIOD seconds, and
    with -v a line per file and per retry."""

    def __init__(self, verbose: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        self.verbose, self._clock = verbose, clock
        self._lock = threading.Lock()
        self._received = 0
        self._began = self._last = clock()

    def started(self, download: Download, total: Optional[int], done: int) -> None:
        """Say a transfer began or resumed."""
        if self.verbose:
            how = f"resuming at {done} bytes" if done else "downloading"
            click.echo(f"{how} {download.url}", err=True)

    def advanced(self, download: Download, count: int) -> None:
        """Count the bytes; every PERIOD seconds, say how many arrived and how fast."""
        with self._lock:
            self._received += count
            now = self._clock()
            if now - self._last < PERIOD:
                return
            self._last = now
            speed = self._received / max(now - self._began, 1e-3)
        click.echo(
            f"downloaded {human_size(self._received)} so far ({human_size(speed)}/s)", err=True
        )

    def finished(self, download: Download, cached: bool) -> None:
        """Say where the file came from."""
        if self.verbose:
            how = "cached  " if cached else "verified"
            click.echo(f"{how} {download.name} sha256 {download.sha256}", err=True)

    def retried(self, download: Download, attempt: int, reason: str, delay: float) -> None:
        """Say which transfer is retried, after which attempt, and when."""
        if self.verbose:
            click.echo(retry_line(download, attempt, reason, delay), err=True)
