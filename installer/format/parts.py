"""Split bundles: the parts index, and the parts read in order as one stream.

`k3bundle build --split SIZE` writes NAME.tar.000, .001, ... and NAME.tar.parts.json, which lists
each part's name, size and sha256. Any part or the index names the whole bundle; parts are read
where they lie, never joined on disk, and never deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Dict, List, Optional, Sequence

from k3bundle.installer.errors import FormatError, IntegrityError, K3BundleError
from k3bundle.installer.format import manifest_fields as fields
from k3bundle.installer.format.hashing import CHUNK, HashPool, PartJob, Segment, damaged_part
from k3bundle.installer.format.jsondoc import load_json

PARTS_SUFFIX = ".parts.json"
PARTS_FORMAT = "k3bundle-parts/v1"
_PART_RE = re.compile(r"(?P<base>.+)\.(?P<index>[0-9]{3})", re.ASCII | re.DOTALL)
MAX_INDEX_BYTES = 1 << 20  # 1,000 parts (NNN) take about 150 KiB
MAX_PARTS = 1000


@dataclass(frozen=True)
class Part:
    """One file of a split bundle, as the parts index records it."""

    path: Path
    size: int
    sha256: str


def parts_index_path(bundle: Path) -> Path:
    """Where the parts index of bundle NAME.tar lives: NAME.tar.parts.json."""
    return bundle.with_name(bundle.name + PARTS_SUFFIX)


def resolve_parts(path: Path) -> Optional[List[Part]]:
    """The parts of a split bundle given its index or any part; None for a single tar."""
    name = path.name
    if name.endswith(PARTS_SUFFIX):
        index = path
    elif _PART_RE.fullmatch(name):
        index = parts_index_path(path.with_name(_PART_RE.fullmatch(name).group("base")))  # type: ignore[union-attr]
    else:
        return None
    if not index.is_file():
        raise IntegrityError(
            f"parts index {index} is missing",
            f"Copy {index.name} from the build output next to the parts, then run again.",
        )
    return _read_parts_index(index)


def _read_parts_index(index: Path) -> List[Part]:
    doc = load_json(_index_bytes(index), f"parts index {index}", max_bytes=MAX_INDEX_BYTES)
    if not isinstance(doc, dict) or doc.get("format") != PARTS_FORMAT:
        raise FormatError(f"parts index {index} is malformed (not a {PARTS_FORMAT} object)")
    items = fields.objects(fields.array(doc, "parts", str(index)), f"parts index {index}: parts")
    if not 0 < len(items) <= MAX_PARTS:
        raise FormatError(f"parts index {index} lists {len(items)} parts (1 to {MAX_PARTS})")
    parts = [_part(index, position, item) for position, item in enumerate(items)]
    _check_parts_present(parts)
    return parts


def _index_bytes(index: Path) -> bytes:
    """The index file's bytes, refused by its size before it is read."""
    try:
        with open(index, "rb") as handle:
            data = handle.read(MAX_INDEX_BYTES + 1)  # bounded even if the file grows meanwhile
    except OSError as exc:
        raise FormatError(f"cannot read parts index {index}: {exc.strerror}") from None
    if len(data) > MAX_INDEX_BYTES:
        raise FormatError(f"parts index {index} is larger than {MAX_INDEX_BYTES} bytes")
    return data


def _part(index: Path, position: int, item: Dict[str, Any]) -> Part:
    """One part: the sibling NAME.tar.NNN in order, with a typed size and sha256."""
    expected = f"{index.name[: -len(PARTS_SUFFIX)]}.{position:03d}"
    where = f"parts index {index}: part {position}"
    name = fields.text(item, "name", where)
    if name != expected:
        raise FormatError(f"{where} is named {name[:80]!r}, not {expected!r}")
    sha = fields.text(item, "sha256", where, fields.SHA256)
    return Part(index.with_name(name), fields.integer(item, "size", where), sha)


def _check_parts_present(parts: Sequence[Part]) -> None:
    for part in parts:
        if not part.path.is_file():
            raise IntegrityError(
                f"bundle part {part.path.name} is missing",
                f"Copy {part.path.name} from the build output next to the other parts.",
            )
        size = part.path.stat().st_size
        if size != part.size:
            raise IntegrityError(
                f"bundle part {part.path.name} has {size} bytes, the index says {part.size}",
                f"Copy {part.path.name} again from the build output (it is incomplete or damaged).",
            )


class PartsReader(io.RawIOBase):
    """The parts of a split bundle read in order as one stream; each part's sha256 is checked.

    Read as a stream, every byte is hashed on the way. Once `hash_in(pool)` is called, each part
    is hashed whole by a PartJob on the pool instead, and member data can be taken in place
    (`take`) to be copied and hashed by the kernel and the pool. With `check=False` nothing is
    hashed and `take` always skips: for reading the member headers up front, never for payload.
    """

    def __init__(self, parts: Sequence[Part], check: bool = True) -> None:
        super().__init__()
        self._parts = list(parts)
        self._check = check
        self._current: Optional[IO[bytes]] = None
        self._hash = hashlib.sha256()
        self._next = 0
        self._pool: Optional[HashPool] = None
        self.jobs: List[PartJob] = []

    def readable(self) -> bool:
        """Parts are read, never written."""
        return True

    def hash_in(self, pool: HashPool) -> None:
        """From now on, hash each part whole on `pool` (the open one and those opened later)."""
        self._pool = pool
        if self._current is not None:
            self._submit(self._parts[self._next])

    def readinto(self, buffer: Any) -> int:
        """Fill `buffer` from the current part, moving to the next one at its end."""
        while True:
            if self._current is None and not self._open_next():
                return 0
            assert self._current is not None
            count = self._current.readinto(buffer)  # type: ignore[attr-defined]
            if count:
                if self._pool is None and self._check:
                    self._hash.update(memoryview(buffer)[:count])
                return int(count)
            self._finish_part()

    def take(self, size: int) -> Optional[List[Segment]]:
        """The next `size` bytes as (part path, offset, length) segments, skipped, not read.

        None while parts are hashed as a stream (every byte must pass through the hash). Fewer
        bytes than asked when the parts end first.
        """
        if self._pool is None and self._check:
            return None
        segments: List[Segment] = []
        while size > 0 and (self._current is not None or self._open_next()):
            assert self._current is not None
            part = self._parts[self._next]
            position = self._current.tell()
            count = min(size, part.size - position)
            if count <= 0:
                self._finish_part()
                continue
            segments.append((part.path, position, count))
            self._current.seek(count, io.SEEK_CUR)
            size -= count
        return segments

    def drain(self) -> None:
        """Read to the end so that every part's hash is checked (or queued on the pool)."""
        while self.read(CHUNK):
            pass

    def blame(self) -> None:
        """After a failure: raise naming a damaged part, if one is."""
        if self._pool is None:
            self.drain()
            return
        with contextlib.suppress(K3BundleError):
            self.drain()
        for job in self.jobs:
            job.done.wait()
            if job.error is not None:
                raise job.error

    def _open_next(self) -> bool:
        if self._next >= len(self._parts):
            return False
        part = self._parts[self._next]
        self._current = open(part.path, "rb")  # noqa: SIM115
        self._hash = hashlib.sha256()
        if self._pool is not None:
            self._submit(part)
        return True

    def _submit(self, part: Part) -> None:
        assert self._pool is not None
        self.jobs.append(PartJob(part.path, part.size, part.sha256))
        self._pool.add(self.jobs[-1])

    def _finish_part(self) -> None:
        part = self._parts[self._next]
        assert self._current is not None
        self._current.close()
        self._current = None
        self._next += 1
        if self._pool is None and self._check and self._hash.hexdigest() != part.sha256:
            raise damaged_part(part.path.name)

    def close(self) -> None:
        """Close the open part."""
        if self._current is not None:
            self._current.close()
            self._current = None
        super().close()
