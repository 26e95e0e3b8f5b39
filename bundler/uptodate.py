"""Whether the output folder already holds exactly the build asked for (a no-op rebuild).

A build records, in the cache's index under a key derived from the output folder's absolute
path (the folder itself keeps exactly the bundle, the installer and SHA256SUMS), the digest of
everything that decides the outputs' bytes (the manifest, which lists every payload file's
sha256, the code that writes bundles, the signing key, part size, file name, member timestamps
and the installer's own bytes)
and, for each file written, its size, inode, mtime and ctime with its sha256. When a rebuild asks
for the same digest and every file is still untouched, the build is up to date and nothing is
written again. No tool can set a ctime back, so a file changed in any way since (even with its
mtime restored) is written again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

from k3bundle.bundler.cache import Cache
from k3bundle.installer.errors import FetchError
from k3bundle.installer.format import load_json

STAMP_FORMAT = "k3bundle-build/v1"


def _key(output: Path) -> str:
    return "build-output-" + hashlib.sha256(str(output.resolve()).encode()).hexdigest()


def recipe(
    manifest: bytes,
    writer: str,
    key_id: Optional[str],
    split: Optional[int],
    bundle_name: str,
    installer_sha256: str,
    mtime: int,
) -> str:
    """The digest of everything that decides the bytes of a build's outputs."""
    doc = {
        "manifest": hashlib.sha256(manifest).hexdigest(),
        "writer": writer,
        "key": key_id,
        "split": split,
        "name": bundle_name,
        "installer": installer_sha256,
        "mtime": mtime,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _state(path: Path) -> Dict[str, int]:
    info = path.stat()
    return {
        "size": info.st_size,
        "ino": info.st_ino,
        "mtime_ns": info.st_mtime_ns,
        "ctime_ns": info.st_ctime_ns,
    }


def current(cache: Cache, output: Path, digest: str) -> Optional[Mapping[str, Any]]:
    """The record, when DIR holds the build `digest` describes with every file untouched."""
    try:
        stamp = load_json(cache.recall(_key(output)) or "{}", "the build record", FetchError)
        if stamp.get("format") != STAMP_FORMAT or stamp.get("recipe") != digest:
            return None
        for name, recorded in stamp["files"].items():
            if _state(output / name) != {k: recorded[k] for k in _STATE_KEYS}:
                return None
    except (FetchError, OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return dict(stamp)


_STATE_KEYS = ("size", "ino", "mtime_ns", "ctime_ns")


def save(
    cache: Cache,
    output: Path,
    digest: str,
    files: Sequence[Path],
    sha256s: Mapping[str, str],
    extra: Mapping[str, Any],
) -> None:
    """Record the build just written."""
    doc = {
        "format": STAMP_FORMAT,
        "recipe": digest,
        "files": {p.name: {**_state(p), "sha256": sha256s[p.name]} for p in files},
        **extra,
    }
    cache.remember(_key(output), json.dumps(doc, indent=2, sort_keys=True) + "\n")


def forget(cache: Cache, output: Path) -> None:
    """Drop the record before files are rewritten (a failed build then never looks current)."""
    cache.remember(_key(output), "{}")
