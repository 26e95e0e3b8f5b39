"""A content-addressed download cache: nothing enters it unverified.

Layout under the cache folder (default ~/.cache/k3bundle):
  sha256/<hex>         verified content, named by its sha256
  partial/<hex>.part   an interrupted download of that content, resumed next time
  index/...            small text the build needs offline (checksum files, channel answers)
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Dict, Optional
from urllib.parse import quote

DEFAULT_CACHE = Path("~/.cache/k3bundle")


def default_cache_dir() -> Path:
    """The cache: $K3BUNDLE_CACHE_DIR, else $XDG_CACHE_HOME/k3bundle, else ~/.cache/k3bundle."""
    if os.environ.get("K3BUNDLE_CACHE_DIR"):
        return Path(os.environ["K3BUNDLE_CACHE_DIR"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"], "k3bundle")
    return DEFAULT_CACHE.expanduser()


class Cache:
    """Verified blobs by sha256, resumable partial downloads, and a small text index."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._locks: Dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        for sub in ("sha256", "partial", "index"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    def blob(self, sha256: str) -> Path:
        """Where content with this sha256 lives (whether or not it is there yet)."""
        return self.root / "sha256" / sha256

    def lookup(self, sha256: str) -> Optional[Path]:
        """The cached file for `sha256`, or None."""
        path = self.blob(sha256)
        return path if path.is_file() else None

    def claim(self, sha256: str) -> threading.Lock:
        """The lock a thread holds while it fetches `sha256`, so a blob that two images share
        is downloaded once, by one thread, into one partial file."""
        with self._locks_guard:
            return self._locks.setdefault(sha256, threading.Lock())

    def partial(self, sha256: str) -> Path:
        """The resumable download of `sha256`."""
        return self.root / "partial" / f"{sha256}.part"

    def admit(self, partial: Path, sha256: str) -> Path:
        """Move a download that was verified as `sha256` into the store."""
        target = self.blob(sha256)
        os.replace(partial, target)
        return target

    def _index_path(self, key: str) -> Path:
        return self.root / "index" / quote(key, safe="")

    def remember(self, key: str, text: str) -> None:
        """Keep a small text (a checksum file, a channel answer) for --offline builds."""
        path = self._index_path(key)
        # Unique per thread: image pulls of one reference for several arches run in parallel.
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(text, "utf-8")
        os.replace(tmp, path)

    def recall(self, key: str) -> Optional[str]:
        """A text kept by `remember`, or None."""
        path = self._index_path(key)
        return path.read_text("utf-8") if path.is_file() else None
