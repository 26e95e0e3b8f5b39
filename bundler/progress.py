"""tqdm progress bars at the edge, behind the installer's Progress interface."""

from __future__ import annotations

from typing import Any, Optional

from tqdm import tqdm

from k3bundle.installer.progress import Progress


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
