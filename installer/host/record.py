"""The install record (`/var/lib/k3bundle/record.json`): its model, bytes and validation.

The record says what an install placed, so uninstall, rollback and upgrades act on it. It lives on
the host, where anyone with root's write access may have changed it: `parse_record` checks the
format version, every field's type, and that every path is one an install could have placed
(layout.py) before any command trusts a word of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from k3bundle.installer.errors import InstallError
from k3bundle.installer.format.jsondoc import load_json
from k3bundle.installer.format.manifest import ARCHES, KINDS, canonical_json
from k3bundle.installer.host.layout import (
    BIN_DIRS,
    DATA_DIR,
    data_dir_problem,
    image_cache,
    placeable_file,
    placeable_folder,
    placeable_link,
)

RECORD_FORMAT = "k3bundle-record/v1"
MAX_RECORD_BYTES = 64 * 1024 * 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MODE = re.compile(r"0[0-7]{3}")
_KINDS = (*KINDS, "generated")
# Remembered options: key -> the types its value may have (None: JSON null).
_OPTION_TYPES: Mapping[str, Tuple[type, ...]] = {
    "role": (str,),
    "server_url": (str, type(None)),
    "cluster_init": (bool,),
    "exec_args": (list,),
    "node_labels": (list,),
    "tls_sans": (list,),
    "node_name": (str, type(None)),
    "image_cache": (bool,),
    "bin_dir": (str,),
    "data_dir": (str,),  # k3s's data dir: every payload path is checked against it
}


@dataclass(frozen=True)
class RecordFile:
    """One file an install placed, with what it held when placed."""

    path: str
    sha256: str
    size: int
    mode: int
    kind: str

    def to_json(self) -> Dict[str, Any]:
        """The file as the record stores it."""
        return {
            "path": self.path,
            "sha256": self.sha256,
            "size": self.size,
            "mode": f"{self.mode:04o}",
            "kind": self.kind,
        }


@dataclass(frozen=True)
class RecordLink:
    """A symlink an install made."""

    path: str
    target: str


@dataclass(frozen=True)
class Record:
    """What one generation of k3bundle placed on a host."""

    bundle_id: str
    k3s_version: str
    arch: str
    role: str
    options: Mapping[str, Any] = field(default_factory=dict)
    files: Tuple[RecordFile, ...] = ()
    links: Tuple[RecordLink, ...] = ()
    folders: Tuple[str, ...] = ()
    ensured: Tuple[str, ...] = ()
    previous: Optional[Mapping[str, str]] = None  # bundle_id and k3s_version of the one before

    def to_bytes(self) -> bytes:
        """Canonical JSON, as placed on the host."""
        doc = {
            "format": RECORD_FORMAT,
            "bundle_id": self.bundle_id,
            "k3s_version": self.k3s_version,
            "arch": self.arch,
            "role": self.role,
            "options": dict(self.options),
            "ensured": list(self.ensured),
            "files": [f.to_json() for f in self.files],
            "links": [{"path": x.path, "target": x.target} for x in self.links],
            "folders": list(self.folders),
            "previous": dict(self.previous) if self.previous is not None else None,
        }
        return canonical_json(doc) + b"\n"

    def file(self, path: str) -> Optional[RecordFile]:
        """The recorded file at `path`, if any."""
        return next((f for f in self.files if f.path == path), None)

    @property
    def data_dir(self) -> str:
        """k3s's data dir that the payload went to."""
        return str(self.options.get("data_dir") or DATA_DIR)

    @property
    def bin_dir(self) -> Optional[str]:
        """The folder the k3s binary went to."""
        value = self.options.get("bin_dir")
        return str(value) if value else None


class RecordError(InstallError):
    """A state file k3bundle cannot trust: malformed, or naming a path it never places."""


def parse_record(data: bytes, where: str) -> Record:
    """Validate the record's bytes (read from `where`, for messages) and build the model."""
    doc = load_json(data, where, error=RecordError, hint=_repair(where))
    check = _Checker(where)
    doc = check.mapping(doc, "the record")
    if doc.get("format") != RECORD_FORMAT:
        raise RecordError(f"{where} has the unknown format {doc.get('format')!r}", _repair(where))
    options = check.options(doc.get("options", {}))
    check.data_dir = str(options.get("data_dir", DATA_DIR))
    return Record(
        bundle_id=check.text(doc.get("bundle_id"), "bundle_id"),
        k3s_version=check.text(doc.get("k3s_version"), "k3s_version"),
        arch=check.choice(doc.get("arch"), "arch", ARCHES),
        role=check.choice(doc.get("role"), "role", ("server", "agent")),
        options=options,
        files=tuple(check.file(item) for item in check.items(doc.get("files", []), "files")),
        links=tuple(check.link(item) for item in check.items(doc.get("links", []), "links")),
        folders=tuple(check.folder(f) for f in check.items(doc.get("folders", []), "folders")),
        ensured=tuple(check.ensured(p) for p in check.items(doc.get("ensured", []), "ensured")),
        previous=check.previous(doc.get("previous")),
    )


def _repair(where: str) -> str:
    return (
        f"k3bundle wrote {where} and it has been changed since. Restore it from a backup, or "
        "move it away and reinstall the bundle (k3bundle then treats the host as new)."
    )


class _Checker:
    """Field checks that raise a RecordError naming the record and the field."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.data_dir = DATA_DIR  # the record's own, once its options are checked

    def fail(self, what: str) -> RecordError:
        return RecordError(f"{self.where}: {what}", _repair(self.where))

    def mapping(self, value: Any, what: str) -> Dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(f"{what} is not a JSON object")
        return value

    def items(self, value: Any, what: str) -> List[Any]:
        if not isinstance(value, list):
            raise self.fail(f"{what!r} is not a list")
        return value

    def text(self, value: Any, what: str) -> str:
        if not isinstance(value, str) or not value or len(value) > 4096:
            raise self.fail(f"{what!r} is not a short text")
        return value

    def choice(self, value: Any, what: str, allowed: Tuple[str, ...]) -> str:
        if value not in allowed:
            raise self.fail(f"{what!r} is {value!r}, not one of {', '.join(allowed)}")
        return str(value)

    def file(self, item: Any) -> RecordFile:
        item = self.mapping(item, "a 'files' item")
        path = item.get("path")
        if not isinstance(path, str) or not placeable_file(path, self.data_dir):
            raise self.fail(f"lists {path!r}, a file k3bundle never places")
        size, sha, mode = item.get("size"), item.get("sha256"), item.get("mode")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise self.fail(f"the size of {path} is not a byte count")
        if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
            raise self.fail(f"the sha256 of {path} is not 64 hex digits")
        if not isinstance(mode, str) or not _MODE.fullmatch(mode):
            raise self.fail(f"the mode of {path} is not an octal mode like 0644")
        kind = self.choice(item.get("kind"), f"kind of {path}", _KINDS)
        return RecordFile(path, sha, size, int(mode, 8), kind)

    def link(self, item: Any) -> RecordLink:
        item = self.mapping(item, "a 'links' item")
        path, target = item.get("path"), item.get("target")
        if not isinstance(path, str) or not isinstance(target, str):
            raise self.fail("a link's path and target must be texts")
        if not placeable_link(path, target):
            raise self.fail(f"lists the link {path} -> {target}, which k3bundle never makes")
        return RecordLink(path, target)

    def folder(self, value: Any) -> str:
        if not isinstance(value, str) or not placeable_folder(value, self.data_dir):
            raise self.fail(f"lists the folder {value!r}, which k3bundle never creates")
        return value

    def ensured(self, value: Any) -> str:
        cache = image_cache(self.data_dir)
        if value != cache:
            raise self.fail(f"lists {value!r} as ensured; only {cache} can be")
        return cache

    def options(self, value: Any) -> Dict[str, Any]:
        options = self.mapping(value, "'options'")
        for key, item in options.items():
            if key not in _OPTION_TYPES:
                raise self.fail(f"has the unknown option {key!r}")
            if not isinstance(item, _OPTION_TYPES[key]):
                raise self.fail(f"the option {key!r} has the wrong type")
            if isinstance(item, list) and not all(isinstance(x, str) for x in item):
                raise self.fail(f"the option {key!r} must list texts only")
        if "bin_dir" in options and options["bin_dir"] not in BIN_DIRS:
            raise self.fail(f"bin_dir {options['bin_dir']!r} is not one of {', '.join(BIN_DIRS)}")
        if "role" in options:
            self.choice(options["role"], "options.role", ("server", "agent"))
        problem = data_dir_problem(options["data_dir"]) if "data_dir" in options else None
        if problem:
            raise self.fail(f"data_dir {options['data_dir']!r} cannot be k3s's data dir: {problem}")
        return options

    def previous(self, value: Any) -> Optional[Dict[str, str]]:
        if value is None:
            return None
        prior = self.mapping(value, "'previous'")
        keys = [key for key in ("bundle_id", "k3s_version") if prior.get(key) is not None]
        return {key: self.text(prior[key], f"previous.{key}") for key in keys}
