"""Read a bundle (one tar, or its parts) as one stream and yield verified payload members.

A BundleSource reads the manifest and signature members first, then yields (entry, stream) pairs
in archive order; each stream hashes what is read from it and raises IntegrityError at its end
when the bytes do not match the manifest. Nothing here writes to the host.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator, List, Optional, Protocol, Sequence, Tuple, cast

from .errors import FormatError, IntegrityError, K3BundleError
from .manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    SIGNATURE_NAME,
    Entry,
    Manifest,
    check_member_path,
)

CHUNK = 1 << 20
PARTS_SUFFIX = ".parts.json"
PARTS_FORMAT = "k3bundle-parts/v1"
_PART_RE = re.compile(r"^(?P<base>.+)\.(?P<index>\d{3})$")
_PLAIN_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)


class Reader(Protocol):
    """Anything with read(): a file, a part sequence, a member stream."""

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes; b"" at the end."""


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
    elif _PART_RE.match(name):
        index = parts_index_path(path.with_name(_PART_RE.match(name).group("base")))  # type: ignore[union-attr]
    else:
        return None
    if not index.is_file():
        raise IntegrityError(
            f"parts index {index} is missing",
            f"Copy {index.name} from the build output next to the parts, then run again.",
        )
    return _read_parts_index(index)


def _read_parts_index(index: Path) -> List[Part]:
    try:
        doc = json.loads(index.read_text("utf-8"))
        if doc.get("format") != PARTS_FORMAT:
            raise ValueError("format")
        parts = [
            Part(index.with_name(p["name"]), int(p["size"]), str(p["sha256"])) for p in doc["parts"]
        ]
    except (ValueError, KeyError, TypeError, OSError):
        raise FormatError(f"parts index {index} is malformed") from None
    for part in parts:
        if "/" in part.path.name or part.path.name.startswith("."):
            raise FormatError(f"parts index {index} names an unsafe part {part.path.name!r}")
    _check_parts_present(parts)
    return parts


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
    """The parts of a split bundle read in order as one stream; each part's sha256 is checked."""

    def __init__(self, parts: Sequence[Part]) -> None:
        super().__init__()
        self._parts = list(parts)
        self._current: Optional[IO[bytes]] = None
        self._hash = hashlib.sha256()
        self._next = 0

    def readable(self) -> bool:
        """Parts are read, never written."""
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        """Fill `buffer` from the current part, moving to the next one at its end."""
        while True:
            if self._current is None and not self._open_next():
                return 0
            assert self._current is not None
            count = self._current.readinto(buffer)  # type: ignore[attr-defined]
            if count:
                self._hash.update(memoryview(buffer)[:count])
                return int(count)
            self._finish_part()

    def drain(self) -> None:
        """Read to the end so that every part's hash is checked."""
        while self.read(CHUNK):
            pass

    def _open_next(self) -> bool:
        if self._next >= len(self._parts):
            return False
        self._current = open(self._parts[self._next].path, "rb")  # noqa: SIM115
        self._hash = hashlib.sha256()
        return True

    def _finish_part(self) -> None:
        part = self._parts[self._next]
        assert self._current is not None
        self._current.close()
        self._current = None
        self._next += 1
        if self._hash.hexdigest() != part.sha256:
            raise IntegrityError(
                f"bundle part {part.path.name} is damaged (its sha256 does not match the index)",
                f"Copy {part.path.name} again from the build output; "
                "the other parts are fine so far.",
            )

    def close(self) -> None:
        """Close the open part."""
        if self._current is not None:
            self._current.close()
            self._current = None
        super().close()


class VerifyingStream:
    """A member's bytes, hashed as they are read and checked against the entry at the end."""

    def __init__(self, raw: Reader, entry: Entry, bundle: str) -> None:
        self._raw, self._entry, self._bundle = raw, entry, bundle
        self._hash = hashlib.sha256()
        self._seen = 0
        self.checked = False

    def read(self, size: int = -1) -> bytes:
        """Read, hash, and at the end compare size and sha256 with the manifest."""
        left = self._entry.size - self._seen
        data = self._raw.read(left if size < 0 else min(size, left)) if left else b""
        self._hash.update(data)
        self._seen += len(data)
        if not data and not self.checked:
            self._check()
        return data

    def _check(self) -> None:
        self.checked = True
        actual = self._hash.hexdigest()
        if self._seen != self._entry.size or actual != self._entry.sha256:
            raise IntegrityError(
                f"{self._entry.path} in {self._bundle} is corrupted: sha256 {actual}, "
                f"the signed manifest says {self._entry.sha256}",
            )

    def finish(self) -> None:
        """Read whatever the consumer left, so the check always runs."""
        while self.read(CHUNK):
            pass


@dataclass(frozen=True)
class Header:
    """The first members: the manifest bytes and, when signed, the signature bytes."""

    manifest: bytes
    signature: Optional[bytes]


class BundleSource:
    """A bundle on disk, read once from start to end."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.name = self.path.name
        self.parts = resolve_parts(self.path)
        if self.parts is None and not self.path.is_file():
            raise IntegrityError(f"bundle {path} does not exist", "Check the path and try again.")
        raw = PartsReader(self.parts) if self.parts else open(self.path, "rb")  # noqa: SIM115
        self._raw = cast(IO[bytes], raw)
        self._tar = self._open_tar()
        self._pending: Optional[tarfile.TarInfo] = None

    def __enter__(self) -> BundleSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the open files."""
        self._tar.close()
        self._raw.close()

    def total_size(self) -> int:
        """Bytes this source will read from disk."""
        if self.parts:
            return sum(p.size for p in self.parts)
        return self.path.stat().st_size

    def _open_tar(self) -> tarfile.TarFile:
        try:
            return tarfile.open(fileobj=self._raw, mode="r|", bufsize=CHUNK)
        except tarfile.TarError:
            self._raw.close()
            raise FormatError(
                f"{self.name} is not a tar archive (or is truncated at its start)"
            ) from None

    def read_header(self) -> Header:
        """Read the manifest member and, if present, the signature member."""
        manifest = self._small_member(MANIFEST_NAME, required=True)
        assert manifest is not None
        return Header(manifest, self._small_member(SIGNATURE_NAME, required=False))

    def _small_member(self, name: str, required: bool) -> Optional[bytes]:
        info = self._next_member()
        if info is None or info.name != name:
            if required:
                raise FormatError(
                    f"{self.name} does not start with {name}: it is not a k3bundle/v1 bundle"
                )
            self._pending = info
            return None
        _check_type(info, self.name)
        if info.size > MAX_MANIFEST_BYTES:
            raise FormatError(
                f"{name} in {self.name} is {info.size} bytes, larger than any real manifest"
            )
        data = self._extract(info).read()
        return data

    def payload(self, manifest: Manifest) -> Iterator[Tuple[Entry, VerifyingStream]]:
        """Yield each payload member with a verifying stream, enforcing the manifest's list."""
        try:
            yield from self._payload(manifest)
        except IntegrityError:
            self._blame_part()
            raise

    def _payload(self, manifest: Manifest) -> Iterator[Tuple[Entry, VerifyingStream]]:
        expected = list(manifest.entries)
        by_path = {e.path: e for e in expected}
        for position, entry in enumerate(expected):
            info = self._next_member()
            if info is None:
                raise IntegrityError(
                    f"{self.name} ends before {entry.path}: "
                    "the bundle is truncated or a member is missing"
                )
            _check_type(info, self.name)
            check_member_path(info.name)
            if info.name != entry.path:
                raise _misplaced(info.name, entry, by_path, expected[:position], self.name)
            if info.size != entry.size:
                raise IntegrityError(
                    f"{info.name} in {self.name} has {info.size} bytes, "
                    f"the manifest says {entry.size}"
                )
            stream = VerifyingStream(self._extract(info), entry, self.name)
            yield entry, stream
            stream.finish()
        self._expect_end(by_path)

    def _expect_end(self, by_path: dict[str, Entry]) -> None:
        extra = self._next_member()
        if extra is not None:
            if extra.name in by_path:
                raise FormatError(f"{self.name} holds {extra.name} twice (a duplicate path)")
            raise FormatError(
                f"{self.name} holds {extra.name}, which the signed manifest does not list"
            )
        if isinstance(self._raw, PartsReader):
            self._raw.drain()
        # tarfile takes a missing end-of-archive marker for the end: a cut there is a truncation.
        if self.total_size() < self._tar.offset + 2 * tarfile.BLOCKSIZE:
            raise IntegrityError(f"{self.name} is truncated: its end-of-archive blocks are missing")

    def _blame_part(self) -> None:
        if isinstance(self._raw, PartsReader):
            self._raw.drain()  # raises naming the damaged part, if one is

    def _next_member(self) -> Optional[tarfile.TarInfo]:
        if self._pending is not None:
            info, self._pending = self._pending, None
            return info
        try:
            return self._tar.next()
        except tarfile.TarError as exc:
            raise IntegrityError(f"{self.name} is truncated or damaged ({exc})") from None

    def _extract(self, info: tarfile.TarInfo) -> Reader:
        stream = self._tar.extractfile(info)
        assert stream is not None
        return _TruncationGuard(stream, self.name, info.name)


class _TruncationGuard:
    """Turn tarfile's 'unexpected end of data' into an IntegrityError naming the member."""

    def __init__(self, raw: IO[bytes], bundle: str, member: str) -> None:
        self._raw, self._bundle, self._member = raw, bundle, member

    def read(self, size: int = -1) -> bytes:
        """Read from the member, mapping truncation to IntegrityError."""
        try:
            return self._raw.read(size)
        except tarfile.TarError:
            raise IntegrityError(f"{self._bundle} is truncated inside {self._member}") from None


def _check_type(info: tarfile.TarInfo, bundle: str) -> None:
    if info.type not in _PLAIN_TYPES or info.issparse():
        what = (
            "a symlink" if info.issym() else "a hardlink" if info.islnk() else "not a regular file"
        )
        what = "a device or fifo" if info.ischr() or info.isblk() or info.isfifo() else what
        raise FormatError(
            f"{bundle}: member {info.name!r} is {what}; bundles hold regular files only"
        )


def _misplaced(
    name: str, wanted: Entry, by_path: dict[str, Entry], done: Sequence[Entry], bundle: str
) -> K3BundleError:
    if name in {e.path for e in done}:
        return FormatError(f"{bundle} holds {name} twice (a duplicate path)")
    if name in by_path:
        return IntegrityError(f"{bundle} lacks {wanted.path}, which the signed manifest lists")
    return FormatError(f"{bundle} holds {name}, which the signed manifest does not list")
