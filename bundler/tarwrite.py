"""Writing a deterministic tar, in parts: headers, padding, small members, the end-of-archive.

Shared by the bundle writer and `k3bundle slice`: uid/gid 0, no user names, pax headers, the
end padded to a whole 10 KiB record as tar does; parts of at most a limit, each hashed by a
thread that reads it back behind the writes.
"""

from __future__ import annotations

import os
import sys
import tarfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from k3bundle.installer.format import O_BINARY, HashJob, copy_range

BLOCK = 512
RECORD = 20 * BLOCK
Progress = Callable[[int], None]


class PartWriter:
    """A sink that writes parts of at most `limit` bytes (or one file when no limit).

    Each part's sha256 (for SHA256SUMS and the parts index) is computed by a HashJob on its own
    thread that reads the part back right behind the writes, so payload files can be copied in
    by the kernel (`copy_from`) without passing through this process.
    """

    def __init__(self, target: Path, limit: Optional[int]) -> None:
        self.target, self.limit = target, limit
        self.written: List[Dict[str, object]] = []
        self.total = 0
        self._fd = -1
        self._in_part = 0
        self._hash: Optional[HashJob] = None

    def _name(self) -> Path:
        if self.limit is None:
            return self.target
        return self.target.with_name(f"{self.target.name}.{len(self.written):03d}")

    def _room(self, want: int) -> int:
        """Open a part when none is, and say how many of `want` bytes fit in it."""
        if self._fd < 0:
            tmp = tmp_name(self._name())
            self._fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | O_BINARY, 0o644)
            self._hash = HashJob(None, self.target.name, [(tmp, 0, sys.maxsize)]).start()
        return want if self.limit is None else min(want, self.limit - self._in_part)

    def _advance(self, count: int) -> None:
        self._in_part += count
        self.total += count
        assert self._hash is not None
        self._hash.publish(self._in_part)

    def _close_if_full(self) -> None:
        if self.limit is not None and self._in_part >= self.limit:
            self._close_part()

    def write(self, data: bytes | memoryview) -> None:
        """Append bytes, moving to the next part whenever one is full."""
        view = memoryview(data)
        while view:
            piece = view[: self._room(len(view))]
            view = view[len(piece) :]
            while piece:
                count = os.write(self._fd, piece)
                piece = piece[count:]
                self._advance(count)
            self._close_if_full()

    def copy_from(self, source: int, size: int, progress: Progress) -> None:
        """Append the first `size` bytes of the open file `source`, copied by the kernel."""
        done = 0
        while done < size:
            room = self._room(size - done)
            copied = 0

            def published(count: int) -> None:
                nonlocal copied
                step, copied = count - copied, count
                self._advance(step)
                progress(step)

            copy_range(source, done, room, self._fd, published)
            done += room
            self._close_if_full()

    def _close_part(self) -> None:
        os.close(self._fd)
        self._fd = -1
        assert self._hash is not None
        self._hash.publish(self._in_part, final=True)
        sha256 = self._hash.result()
        self.written.append({"name": self._name().name, "size": self._in_part, "sha256": sha256})
        self._hash, self._in_part = None, 0

    def finish(self) -> List[Tuple[Path, Path]]:
        """Close the last part; every part as (temporary name, final name), not yet renamed."""
        if self._fd >= 0:
            self._close_part()
        final = [self.target.with_name(str(p["name"])) for p in self.written]
        return [(tmp_name(path), path) for path in final]

    def abort(self) -> None:
        """Remove every temporary part after a failure."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._hash is not None:
            self._hash.cancel()
        names = [str(p["name"]) for p in self.written] + [self._name().name]
        for name in names:
            tmp_name(self.target.with_name(name)).unlink(missing_ok=True)


def tar_header(name: str, size: int, mode: int, mtime: int, kind: bytes = tarfile.REGTYPE) -> bytes:
    """A member's pax header block(s): uid/gid 0, no user names, the given mode, mtime and
    type (a regular file unless `kind` says)."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime, info.type = size, mode, mtime, kind
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    blocks = bytearray(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict"))
    _as_on_python_39(blocks, 0)  # the pax header's own ustar block, when there is one
    if len(blocks) > BLOCK:
        _as_on_python_39(blocks, len(blocks) - BLOCK)  # the member's ustar block
    return bytes(blocks)


_DEVICE_FIELDS = slice(329, 345)  # ustar devmajor + devminor, 8 bytes each
_CHKSUM = slice(148, 156)


def _as_on_python_39(blocks: bytearray, start: int) -> None:
    """Blank devmajor/devminor and re-sum the ustar block at `start`, as Python 3.9+ writes them.

    Python 3.8's tarfile._create_header computes blank device fields for non-device members
    but still packs itn(0) (seven zeros and a NUL), as 3.9+ no longer does; that and the checksum it
    changes were the only header bytes that differed between 3.8 and 3.13 (every other field,
    pax records included, is the same), so blanking them gives the same bytes everywhere.
    """
    block = memoryview(blocks)[start : start + BLOCK]
    block[_DEVICE_FIELDS] = bytes(16)
    block[_CHKSUM] = b" " * 8
    block[148:155] = b"%06o\0" % sum(block)  # tarfile's own layout: 6 octal digits, NUL, space


def padding(size: int) -> bytes:
    """The zeros that fill a member's data up to the next 512-byte block."""
    return b"\0" * (-size % BLOCK)


def tmp_name(final: Path) -> Path:
    """Where an output is written until it is renamed into place: .NAME.tmp beside it."""
    return final.with_name(f".{final.name}.tmp")


def write_small_member(sink: PartWriter, name: str, blob: bytes, mtime: int) -> None:
    """Append the manifest or signature member (mode 0644) with its data."""
    sink.write(tar_header(name, len(blob), 0o644, mtime) + blob + padding(len(blob)))


def end_of_archive(total: int) -> bytes:
    """The end-of-archive blocks after `total` bytes, padded to a whole 10 KiB record as tar
    does."""
    end = 2 * BLOCK
    return b"\0" * (end + (-(total + end) % RECORD))


def write_end(sink: PartWriter) -> None:
    """Append the end-of-archive blocks (end_of_archive)."""
    sink.write(end_of_archive(sink.total))
