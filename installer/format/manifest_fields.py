"""Typed reads of untrusted JSON fields: every manifest value is checked for type and shape here.

JSON gives Python values of any type; a field read with the wrong type would surface later as an
AttributeError or TypeError far from the bundle. Each reader here either returns a value of the
promised type and range or raises FormatError naming the field. `bool` is refused wherever an
integer is expected (True is an int in Python).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Pattern, Tuple

from k3bundle.installer.errors import FormatError

MANIFEST_NAME = "k3bundle.json"
SIGNATURE_NAME = "k3bundle.json.sig"
MAX_ENTRY_SIZE = 1 << 50  # 1 PiB: far above any k3s payload, far below what breaks arithmetic
MAX_PATH = 1024
MAX_TEXT = 4096
# Chunk digests (k3bundle/v2): a power of two in these bounds; the builder's choice is measured
# (bench/install_vs_tar.py): small enough that the workers hash right behind the kernel copy.
MIN_CHUNK = 1 << 16
MAX_CHUNK = 1 << 30
DEFAULT_CHUNK = 16 << 20
# The installer stages files as `.NAME.k3bundle-tmp...`: a member named like that could collide.
STAGING_MARK = ".k3bundle-tmp"

K3S_VERSION = re.compile(r"v[0-9]+\.[0-9]+\.[0-9]+(?:-(?:alpha|beta|rc)[0-9]+)?\+k3s[0-9]+", re.A)
SHA256 = re.compile(r"[0-9a-f]{64}", re.A)
MODE = re.compile(r"[0-7]{3,4}", re.A)
_SAFE_PATH = re.compile(r"[A-Za-z0-9._+-]{1,255}(?:/[A-Za-z0-9._+-]{1,255})*", re.A)  # NAME_MAX
# inspect prints these strings to a terminal: no escape sequences, no line breaks.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def text(
    doc: Mapping[str, Any], key: str, where: str, pattern: Optional[Pattern[str]] = None
) -> str:
    """`doc[key]` as a str (at most MAX_TEXT characters, matching `pattern` whole if given)."""
    value = doc.get(key)
    if not isinstance(value, str):
        raise FormatError(f"{where}: field {key!r} is missing or not a string")
    bad = pattern is not None and not pattern.fullmatch(value)
    if bad or len(value) > MAX_TEXT or _CONTROL.search(value):
        raise FormatError(f"{where}: field {key!r} has a malformed value {value[:80]!r}")
    return value


def integer(doc: Mapping[str, Any], key: str, where: str, maximum: int = MAX_ENTRY_SIZE) -> int:
    """`doc[key]` as an int in 0..maximum (a bool is not an int here)."""
    value = doc.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise FormatError(f"{where}: field {key!r} is missing or not an integer")
    if value < 0:
        raise FormatError(f"{where}: field {key!r} has a negative size {value}")
    if value > maximum:
        raise FormatError(f"{where}: field {key!r} is {value}, more than the maximum {maximum}")
    return value


def array(doc: Mapping[str, Any], key: str, where: str) -> List[Any]:
    """`doc[key]` as a list."""
    value = doc.get(key)
    if not isinstance(value, list):
        raise FormatError(f"{where}: field {key!r} is missing or not a list")
    return value


def optional_mapping(doc: Mapping[str, Any], key: str, where: str) -> Dict[str, Any]:
    """`doc[key]` as a dict; absent or null is an empty one."""
    value = doc.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise FormatError(f"{where}: field {key!r} is not an object")
    return value


def optional_array(doc: Mapping[str, Any], key: str, where: str) -> List[Any]:
    """`doc[key]` as a list; absent or null is an empty one."""
    return [] if doc.get(key) is None else array(doc, key, where)


def string_map(doc: Mapping[str, Any], key: str, where: str) -> Dict[str, str]:
    """`doc[key]` as an object of strings (absent or null: empty)."""
    value = optional_mapping(doc, key, where)
    for name, item in value.items():
        if not isinstance(item, str) or len(item) > MAX_TEXT or _CONTROL.search(name + item):
            raise FormatError(f"{where}: {key}.{name[:40]!r} is not a printable string")
    return value


def objects(items: List[Any], where: str) -> List[Dict[str, Any]]:
    """Each item of a list as a dict."""
    for position, item in enumerate(items):
        if not isinstance(item, dict):
            raise FormatError(f"{where}[{position}] is not an object")
    return items


def mode(doc: Mapping[str, Any], where: str) -> int:
    """A file mode written as octal digits ("0644"); absent means 0644."""
    value = doc.get("mode", "0644")
    if not isinstance(value, str) or not MODE.fullmatch(value):
        raise FormatError(f"{where} has a malformed mode {value!r}")
    return int(value, 8)


def check_member_path(path: str) -> str:
    """Refuse absolute, `..`, hidden, empty, unusual or staging-like member paths; return it."""
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path:
        raise FormatError(f"bundle member {path!r} has an absolute or malformed path")
    framed = f"/{path}/"  # string tests instead of a split: this runs once per entry
    if "/../" in framed:
        raise FormatError(f"bundle member {path!r} leaves the bundle (a '..' path)")
    if len(path) > MAX_PATH:
        raise FormatError(f"bundle member {path[:80]!r}... has a name longer than allowed")
    # No hidden names: the installer's own files (staging names, the image cache .cache.json)
    # start with '.', so a member named like one could take its place.
    bad = "/." in framed or STAGING_MARK in path or not _SAFE_PATH.fullmatch(path)
    if bad or path in (MANIFEST_NAME, SIGNATURE_NAME):
        raise FormatError(f"bundle member {path[:300]!r} has a name k3bundle/v1 does not allow")
    return path


@dataclass(frozen=True)
class Chunks:
    """The sha256 of each consecutive `size`-byte slice of a file (the last one shorter).

    They let the installer verify one large file on every core, slice by slice. They are part
    of the signed manifest, next to the file's whole sha256, which the signer computed from the
    same bytes.
    """

    size: int
    sha256: Tuple[str, ...]

    def to_json(self) -> Dict[str, Any]:
        """The `chunks` object of a manifest entry."""
        return {"size": self.size, "sha256": list(self.sha256)}

    def spans(self, total: int) -> List[Tuple[int, int]]:
        """(offset, length) of each chunk of a `total`-byte file."""
        return [(start, min(self.size, total - start)) for start in range(0, total, self.size)]


def chunk_count(total: int, size: int) -> int:
    """How many `size`-byte chunks a `total`-byte file has (the last one may be shorter)."""
    return -(-total // size)


def chunks(doc: Mapping[str, Any], total: int, where: str) -> Optional[Chunks]:
    """An entry's optional `chunks`: a power-of-two size in bounds, one digest per chunk.

    Only a file larger than one chunk carries them (a single chunk would only repeat the
    file's sha256): one shape per file, so the same file always gets the same entry.
    """
    if "chunks" not in doc:
        return None
    value = doc["chunks"]
    if not isinstance(value, dict) or set(value) != {"size", "sha256"}:
        raise FormatError(f"{where}: field 'chunks' is not an object of 'size' and 'sha256'")
    size = integer(value, "size", f"{where}: chunks", MAX_CHUNK)
    if size < MIN_CHUNK or size & (size - 1):
        raise FormatError(
            f"{where}: chunk size {size} is not a power of two from {MIN_CHUNK} to {MAX_CHUNK}"
        )
    if total <= size:
        raise FormatError(f"{where} has chunks of {size} bytes but only {total} bytes")
    digests = array(value, "sha256", f"{where}: chunks")
    if len(digests) != chunk_count(total, size):
        raise FormatError(
            f"{where} lists {len(digests)} chunk digests; {total} bytes in chunks of {size} "
            f"make {chunk_count(total, size)}"
        )
    for position, digest in enumerate(digests):
        if not isinstance(digest, str) or not SHA256.fullmatch(digest):
            raise FormatError(f"{where}: chunk digest {position} is not 64 lowercase hex digits")
    return Chunks(size, tuple(digests))
