"""One pass over a stream of bytes: its sha256 and its chunk digests (k3bundle/v2), together.

A download and an image archive this build writes are both hashed as their bytes go by. Taking
the DEFAULT_CHUNK slice digests in that same pass means the bundle writer never reads such a file
again: not for its sha256, not for its chunk digests, and the two provably describe the same
bytes (what lets an installer that checks only the chunks record the whole-file sha256).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import List, Optional

from k3bundle.installer.format import DEFAULT_CHUNK, Chunks

READ = 1 << 20


class StreamDigest:
    """sha256 of every byte fed to `update`, and of every `chunk`-byte slice of them (none
    when `chunk` is None: a registry blob needs only its sha256)."""

    def __init__(self, chunk: Optional[int] = DEFAULT_CHUNK) -> None:
        self.size = 0
        self._whole, self._slice = hashlib.sha256(), hashlib.sha256()
        self._chunk = chunk or 0
        self._slices: List[str] = []

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Feed the next bytes of the stream."""
        self._whole.update(data)
        if not self._chunk:
            self.size += len(data)
            return
        view = memoryview(data)
        while view:
            room = self._chunk - (self.size % self._chunk)
            part, view = view[:room], view[room:]
            self._slice.update(part)
            self.size += len(part)
            if self.size % self._chunk == 0:
                self._slices.append(self._slice.hexdigest())
                self._slice = hashlib.sha256()

    def hexdigest(self) -> str:
        """The sha256 of everything fed so far."""
        return self._whole.hexdigest()

    def chunks(self) -> Optional[Chunks]:
        """The chunk digests of everything fed so far; None up to one chunk (none are kept)."""
        if not self._chunk or self.size <= self._chunk:
            return None
        slices = list(self._slices)
        if self.size % self._chunk:
            slices.append(self._slice.hexdigest())
        return Chunks(self._chunk, tuple(slices))


def digest_prefix(path: Path, size: int, chunk: Optional[int] = DEFAULT_CHUNK) -> StreamDigest:
    """A StreamDigest fed the first `size` bytes of `path` (to resume a partial download)."""
    digest = StreamDigest(chunk)
    if size:
        with open(path, "rb") as handle:
            left = size
            while left:
                data = handle.read(min(READ, left))
                if not data:
                    break
                digest.update(data)
                left -= len(data)
    return digest
