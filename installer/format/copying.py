"""Copy a region of one file into another in the kernel, with fallbacks for every filesystem.

copy_file_range works within one filesystem (and shares blocks where the filesystem can);
sendfile copies between any two files (a bundle on a FAT32 stick into /var); plain reads and
writes are the last resort. The bytes never pass through Python on the first two paths.
Each step is chosen at call time, so the same code runs where a call is missing (Windows has
neither, nor pread) or refuses regular files (macOS sendfile: ENOTSOCK).
"""

from __future__ import annotations

import errno
import os
from typing import Callable

from k3bundle.installer.format.positional import CHUNK, pread

COPY_CHUNK = 8 << 20  # how far the kernel copies before the caller hears of it
# What a kernel without the call, a filesystem or a non-socket target answers (macOS sendfile
# to a regular file: ENOTSOCK); EBADF for Windows-style descriptors; ENOTSUP is EOPNOTSUPP on
# Linux but not on macOS.
_NO_KERNEL_COPY = {
    errno.EXDEV,
    errno.ENOSYS,
    errno.EINVAL,
    errno.EOPNOTSUPP,
    getattr(errno, "ENOTSUP", errno.EOPNOTSUPP),
    errno.EPERM,
    errno.ENOTSOCK,
    errno.EBADF,
}


def copy_range(src: int, offset: int, size: int, dst: int, publish: Callable[[int], None]) -> None:
    """Copy `size` bytes at `offset` of `src` to the start of `dst`, in the kernel when it can.

    copy_file_range works within one filesystem; sendfile copies between any two files (a
    bundle on a FAT32 stick into /var); plain reads and writes are the last resort. A source that
    ends early raises EOFError.
    """
    done = 0
    copy = _copy_file_range
    while done < size:
        want = min(COPY_CHUNK, size - done)
        try:
            count = copy(src, dst, offset + done, want)
        except OSError as exc:
            if exc.errno not in _NO_KERNEL_COPY or copy is _read_write:
                raise
            copy = _sendfile if copy is _copy_file_range else _read_write
            continue
        if count <= 0:
            raise EOFError(offset + done)
        done += count
        publish(done)


def _copy_file_range(src: int, dst: int, offset: int, count: int) -> int:
    if not hasattr(os, "copy_file_range"):  # Python built without it
        raise OSError(errno.ENOSYS, "copy_file_range is not available")
    return os.copy_file_range(src, dst, count, offset)


def _sendfile(src: int, dst: int, offset: int, count: int) -> int:
    if not hasattr(os, "sendfile"):  # Windows
        raise OSError(errno.ENOSYS, "sendfile is not available")
    return os.sendfile(dst, src, offset, count)


def _read_write(src: int, dst: int, offset: int, count: int) -> int:
    data = pread(src, min(count, CHUNK), offset)
    view = memoryview(data)
    while view:
        view = view[os.write(dst, view) :]
    return len(data)
