"""Start reading a bundle from its medium while Python is still importing the installer.

A bundle on a USB stick is not in the page cache. Python's start-up and the installer's imports
take about 0.1 s before the first byte of the bundle is read; a thread started first reads the
beginning of the bundle during that time instead of after it. The thread reads one STEP at a
time, never queueing more: on a host that has just booted, Python's own files come from the same
disk, and a deep queue of bundle reads ahead of them would delay the imports more than it saves
(posix_fadvise(WILLNEED) of the same range did exactly that). A step already in the page cache
(a warm bundle: RWF_NOWAIT says its last page is) is not read again.

Only the first AHEAD bytes of each regular file named on the command line are read (the pubkey
and config files are tiny), so a bundle larger than memory pushes nothing out of the cache.
Nothing here can fail a command: any error means no read-ahead, and the command reads the file
as it always does. Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading

TYPE_CHECKING = False  # typing is not imported at run time: this module runs before all else
if TYPE_CHECKING:
    from typing import List, Optional, Sequence

AHEAD = 64 << 20  # more than a stick reads while Python starts
STEP = 2 << 20
COMMANDS = ("install", "verify")  # the ones that read a whole bundle (inspect: its manifest)
VERBOSE = ("-v", "--verbose")  # the one global option, allowed before the command
_PROBE = 4096
# preadv2's flag that reads only what the page cache holds (Linux); None where there is none
_NOWAIT = getattr(os, "RWF_NOWAIT", None) if hasattr(os, "preadv") else None


def start(argv: Sequence[str]) -> Optional[threading.Thread]:
    """Read ahead the files a bundle-reading command in `argv` names, on a thread (returned;
    None when there is nothing to read ahead)."""
    if not hasattr(os, "pread"):  # Windows
        return None
    words = [w for w in argv if w not in VERBOSE]
    if not words or words[0] not in COMMANDS:
        return None
    names = [w for w in words[1:] if not w.startswith("-")]
    if not names:
        return None
    thread = threading.Thread(target=advise, args=(names,), name="k3bundle-readahead", daemon=True)
    try:
        thread.start()
    except RuntimeError:  # no thread to be had (a pids limit): the command reads as always
        return None
    return thread


def advise(names: List[str]) -> None:
    """Bring the first AHEAD bytes of every regular file among `names` into the page cache."""
    for name in names:
        # gone, unreadable, a bad name, anything: the command reads it and says so, not this
        with contextlib.suppress(Exception):
            _read_ahead(name)


def _read_ahead(name: str) -> None:
    if not stat.S_ISREG(os.stat(name).st_mode):  # never open a device, FIFO or folder
        return
    # O_NONBLOCK: swapped for a FIFO since, it still must not hang this thread
    fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode):
            end = min(info.st_size, AHEAD)
            for offset in range(0, end, STEP):
                # the step's last page: the kernel's own read-ahead may hold its first ones
                if not _cached(fd, max(offset, min(offset + STEP, end) - _PROBE)):
                    os.pread(fd, STEP, offset)
    finally:
        os.close(fd)


def _cached(fd: int, offset: int) -> bool:
    """True when the page at `offset` is in the page cache (Linux's RWF_NOWAIT); False when it
    is not, or when nothing can tell."""
    if _NOWAIT is None:
        return False
    try:
        return os.preadv(fd, [bytearray(_PROBE)], offset, _NOWAIT) > 0
    except OSError:  # EAGAIN: not cached; EOPNOTSUPP: a filesystem that cannot say
        return False
