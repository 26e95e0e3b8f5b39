"""tqdm progress bars at the edge, behind the installer's Progress interface."""

from __future__ import annotations

import sys
import threading
from typing import Any, Dict, Optional, Sequence

from tqdm import tqdm

from k3bundle.installer.progress import Progress

from .fetch import Download, FetchEvents


class TqdmProgress(Progress):
    """One tqdm bar per piece of long work, on stderr."""

    def __init__(self) -> None:
        self._bar: Optional[tqdm[Any]] = None

    def start(self, label: str, total: int) -> None:
        """Open a byte-counting bar."""
        self._bar = tqdm(
            total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024, leave=True
        )

    def advance(self, count: int) -> None:
        """Move the bar."""
        if self._bar is not None:
            self._bar.update(count)

    def finish(self) -> None:
        """Close the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


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
