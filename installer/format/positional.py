"""Positional reads that leave every other reader's offset alone, on every platform.

Hash workers read the same files (often through dup'ed descriptors, which share one offset) at
the same time as the kernel copies into them; `pread` gives each read its own position. Where
the platform lacks it (Windows; older macOS has no preadv) a seek+read under one lock stands in.
"""

from __future__ import annotations

import os
import threading

CHUNK = 1 << 20
O_BINARY = getattr(os, "O_BINARY", 0)  # Windows opens descriptors in text mode without it
_SEEK_LOCK = threading.Lock()  # dup'ed descriptors share one offset: seek+read as one step


def pread_into(fd: int, view: memoryview, offset: int) -> int:
    """Read into `view` at `offset` of `fd` without moving any other reader's position.

    preadv, else pread (no preadv on older macOS), else seek+read under one process-wide
    lock (Windows has neither): every emulated read of a shared descriptor takes that lock.
    """
    if hasattr(os, "preadv"):
        return os.preadv(fd, [view], offset)
    data = pread(fd, len(view), offset)
    view[: len(data)] = data
    return len(data)


def pread(fd: int, count: int, offset: int) -> bytes:
    """Up to `count` bytes at `offset` of `fd` (os.pread, or a locked seek+read without it)."""
    if hasattr(os, "pread"):
        return os.pread(fd, count, offset)
    with _SEEK_LOCK:
        os.lseek(fd, offset, os.SEEK_SET)
        return os.read(fd, count)
