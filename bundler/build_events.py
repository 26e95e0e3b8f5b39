"""Progress for `k3bundle build`'s downloads: tqdm bars on a terminal, log lines with -v."""

from __future__ import annotations

import sys
import threading
from typing import Any, Dict, Optional, Sequence

import click
from tqdm import tqdm

from .fetch import Download, FetchEvents


class TqdmFetchEvents(FetchEvents):
    """A tqdm bar per file being downloaded plus one total bar, on a terminal."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bars: Dict[str, tqdm[Any]] = {}
        self._total: Optional[tqdm[Any]] = None

    def planned(self, downloads: Sequence[Download]) -> None:
        """Open the total bar, counting files."""
        self._total = tqdm(total=len(downloads), desc="release files", unit="file", leave=True)

    def started(self, download: Download, total: Optional[int], done: int) -> None:
        """Open (or reopen, after a resume) the file's bar."""
        with self._lock:
            old = self._bars.pop(download.sha256, None)
            if old is not None:
                old.close()
            bar = tqdm(
                total=total,
                initial=done,
                desc=download.name,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                leave=False,
            )
            self._bars[download.sha256] = bar

    def advanced(self, download: Download, count: int) -> None:
        """Move the file's bar."""
        bar = self._bars.get(download.sha256)
        if bar is not None:
            bar.update(count)

    def finished(self, download: Download, cached: bool) -> None:
        """Close the file's bar and say where the file came from."""
        with self._lock:
            bar = self._bars.pop(download.sha256, None)
            if bar is not None:
                bar.close()
            if self._total is not None:
                self._total.update(1)
                if self._total.n >= (self._total.total or 0):
                    self._total.close()
            tqdm.write(f"{'cached  ' if cached else 'verified'} {download.name}", file=sys.stderr)

    def retrying(self, download: Download, reason: str, delay: float) -> None:
        """Say why a transfer is retried."""
        tqdm.write(f"retrying {download.name} in {delay:.1f}s: {reason}", file=sys.stderr)


class LogFetchEvents(FetchEvents):
    """One line per file on stderr (for -v when stderr is not a terminal)."""

    def started(self, download: Download, total: Optional[int], done: int) -> None:
        """Say a transfer began or resumed."""
        how = f"resuming at {done} bytes" if done else "downloading"
        click.echo(f"{how} {download.url}", err=True)

    def finished(self, download: Download, cached: bool) -> None:
        """Say where the file came from."""
        how = "cached  " if cached else "verified"
        click.echo(f"{how} {download.name} sha256 {download.sha256}", err=True)

    def retrying(self, download: Download, reason: str, delay: float) -> None:
        """Say why a transfer is retried."""
        click.echo(f"retrying {download.name} in {delay:.1f}s: {reason}", err=True)
