"""Keep the builder's memory flat as bundles grow: one malloc arena on glibc.

A build streams gigabytes through many short-lived buffers on many threads (downloads, registry
pulls, hashing, the producers). glibc gives each thread its own arena and raises its mmap
threshold once a large buffer is freed, so freed buffers stay in arenas the process never hands
back: the builder's peak RSS grew with the bundle (57 MiB at 256 MiB, 125 MiB at 16 GiB,
bench/scale.py). With one arena the same 1 GiB build peaks at ~59 MiB instead of ~79 MiB and is
no slower (the threads wait on the network and in hashlib, which holds no malloc lock).
Elsewhere (macOS, Windows, musl) nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)


def one_arena() -> bool:
    """Ask glibc for one malloc arena (before the build starts its threads); True if it took."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, 1))
