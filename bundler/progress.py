"""tqdm progress bars at the edge, behind the installer's Progress interface."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Optional

from k3bundle.installer.progress import Progress

if TYPE_CHECKING:
    from tqdm import tqdm


def new_bar(**options: Any) -> tqdm[Any]:
    """A tqdm bar; tqdm is imported on the first one (a run with no terminal draws none, and
    importing tqdm costs ~70 ms of start-up: it reads its version from package metadata)."""
    from tqdm import tqdm

    return tqdm(**options)


def bar_write(text: str) -> None:
    """A line on stderr above the bars (tqdm.write)."""
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)


class TqdmProgress(Progress):
    """One tqdm bar per piece of long work, on stderr."""

    def __init__(self) -> None:
        self._bar: Optional[tqdm[Any]] = None

    def start(self, label: str, total: int) -> None:
        """Open a byte-counting bar."""
        self._bar = new_bar(
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
