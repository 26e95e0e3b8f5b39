"""Progress reporting: the core calls a Progress; the CLI decides how (or whether) to show it."""

from __future__ import annotations

import sys
import time
from typing import IO, Optional


class Progress:
    """Silent progress: the default when output is not a terminal."""

    def start(self, label: str, total: int) -> None:
        """A long piece of work of `total` bytes begins."""

    def advance(self, count: int) -> None:
        """`count` more bytes are done."""

    def finish(self) -> None:
        """The work is over."""


class TextProgress(Progress):
    """A one-line percentage on a terminal, redrawn at most ten times a second."""

    def __init__(self, stream: Optional[IO[str]] = None) -> None:
        self._stream = stream or sys.stderr
        self._label, self._total, self._done, self._drawn = "", 0, 0, 0.0

    def start(self, label: str, total: int) -> None:
        """Remember what is being done and how much of it there is."""
        self._label, self._total, self._done = label, max(total, 1), 0
        self._draw()

    def advance(self, count: int) -> None:
        """Count bytes and redraw now and then."""
        self._done += count
        if time.monotonic() - self._drawn > 0.1:
            self._draw()

    def finish(self) -> None:
        """Draw 100 % and end the line."""
        self._done = self._total
        self._draw()
        self._stream.write("\n")

    def _draw(self) -> None:
        self._drawn = time.monotonic()
        percent = 100 * self._done // self._total
        mib = self._done / 2**20
        self._stream.write(
            f"\r{self._label}: {percent:3d}% ({mib:,.0f} of {self._total / 2**20:,.0f} MiB)"
        )
        self._stream.flush()


def human_size(size: float) -> str:
    """1536 → '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
