"""A content-addressed download cache: nothing enters it unverified, several builds may share it.

Layout under the cache folder (default ~/.cache/k3bundle, or where the OS keeps caches):
  sha256/<hex>         verified content, named by its sha256
  partial/<hex>.part   an interrupted download of that content, resumed next time
  locks/<hex>.lock     held (an OS file lock) by the one process writing partial/<hex>.part
  index/...            small text the build needs offline (checksum files, channel answers)

Content is only ever stored under 64 lowercase hex digits: any other key is refused, so no name a
registry sends can become a path. Every write lands under a unique temporary name first and is
renamed into place, so two builds sharing one cache never see each other's half-written files.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional
from urllib.parse import quote

from k3bundle.bundler.net.limits import is_hex_key
from k3bundle.bundler.platform_dirs import user_cache_dir
from k3bundle.installer.errors import FetchError
from k3bundle.installer.format import sha256_file

_SUBFOLDERS = ("sha256", "partial", "locks", "index")


def default_cache_dir() -> Path:
    """The cache: $K3BUNDLE_CACHE_DIR, else where the OS keeps caches (platform_dirs)."""
    if os.environ.get("K3BUNDLE_CACHE_DIR"):
        return Path(os.environ["K3BUNDLE_CACHE_DIR"])
    return Path(user_cache_dir("k3bundle"))


def _checked(key: str) -> str:
    """`key` when it is 64 lowercase hex digits; the second wall behind the digest checks."""
    if not is_hex_key(key):
        raise FetchError(
            f"refusing cache key {str(key)[:100]!r}: not 64 lowercase hex digits",
            "A registry or mirror sent a malformed digest; nothing was read or written with it.",
        )
    return key


class Cache:
    """Verified blobs by sha256, resumable partial downloads, and a small text index."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._locks: Dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        for sub in _SUBFOLDERS:
            (root / sub).mkdir(parents=True, exist_ok=True)

    def blob(self, sha256: str) -> Path:
        """Where content with this sha256 lives (whether or not it is there yet)."""
        return self.root / "sha256" / _checked(sha256)

    def lookup(self, sha256: str) -> Optional[Path]:
        """The cached file for `sha256`, or None."""
        path = self.blob(sha256)
        return path if path.is_file() else None

    def evict_rotted(self, paths: Iterable[Path]) -> List[Path]:
        """Remove every entry among `paths` whose bytes no longer hash to its name (a disk
        error, or something else wrote to it), so the next build fetches it again."""
        rotted = []
        for path in paths:
            inside = path.parent == self.root / "sha256" and is_hex_key(path.name)
            if inside and path.is_file() and sha256_file(path) != path.name:
                path.unlink(missing_ok=True)
                rotted.append(path)
        return rotted

    def claim(self, sha256: str) -> threading.Lock:
        """The lock a thread holds while it fetches `sha256`, so a blob that two images share
        is downloaded once, by one thread, into one partial file."""
        with self._locks_guard:
            return self._locks.setdefault(_checked(sha256), threading.Lock())

    def partial(self, sha256: str) -> Path:
        """The resumable download of `sha256`."""
        return self.root / "partial" / f"{_checked(sha256)}.part"

    @contextlib.contextmanager
    def downloading(self, sha256: str) -> Iterator[Path]:
        """A partial file to download `sha256` into, held by this thread and process alone.

        The shared, resumable partial when no other process holds it; otherwise a private one,
        removed afterwards (two builds then fetch the same bytes; both admit identical content).
        """
        with self.claim(sha256):
            lock = _FileLock.acquire(self.root / "locks" / f"{sha256}.lock")
            if lock is not None:
                try:
                    yield self.partial(sha256)
                finally:
                    lock.release()
                return
            handle, name = tempfile.mkstemp(
                f".{os.getpid()}.private", sha256, self.root / "partial"
            )
            os.close(handle)
            try:
                yield Path(name)
            finally:
                Path(name).unlink(missing_ok=True)

    def admit(self, partial: Path, sha256: str) -> Path:
        """Move a download that was verified as `sha256` into the store."""
        target = self.blob(sha256)
        if target.is_file():  # another build admitted the same bytes first
            partial.unlink(missing_ok=True)
            return target
        os.replace(partial, target)
        return target

    def store(self, sha256: str, data: bytes) -> Path:
        """Admit bytes held in memory (a manifest), checked against `sha256` once more."""
        if hashlib.sha256(data).hexdigest() != _checked(sha256):
            raise FetchError(f"refusing to cache bytes that do not hash to {sha256}")
        return self.admit(self._write_temporary(self.root / "partial", data), sha256)

    def _write_temporary(self, folder: Path, data: bytes) -> Path:
        handle, name = tempfile.mkstemp(".tmp", ".k3b-", folder)
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        return Path(name)

    def _index_path(self, key: str) -> Path:
        return self.root / "index" / quote(key, safe="")

    def remember(self, key: str, text: str) -> None:
        """Keep a small text (a checksum file, a channel answer) for --offline builds."""
        path = self._index_path(key)
        tmp = self._write_temporary(path.parent, text.encode("utf-8"))
        os.replace(tmp, path)  # atomic: a concurrent build reads the old text or the new one

    def recall(self, key: str) -> Optional[str]:
        """A text kept by `remember`, or None."""
        path = self._index_path(key)
        return path.read_text("utf-8") if path.is_file() else None


class _FileLock:
    """An exclusive OS lock on a file (flock, or msvcrt on Windows); the OS drops it when the
    process dies, so a crashed build never leaves a stale lock behind."""

    def __init__(self, path: Path, handle: int) -> None:
        self.path, self.handle = path, handle

    @classmethod
    def acquire(cls, path: Path) -> Optional[_FileLock]:
        """The lock when nobody holds it, else None (never waits)."""
        for _ in range(5):
            handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            if not _try_lock(handle):
                os.close(handle)
                return None
            try:  # the holder before us may have removed the file we locked: lock it anew
                if os.path.samestat(os.fstat(handle), os.stat(path)):
                    return cls(path, handle)
            except FileNotFoundError:
                pass
            os.close(handle)
        return None

    def release(self) -> None:
        """Remove the lock file, then let go of the lock."""
        with contextlib.suppress(OSError):  # Windows keeps open files; the file is harmless
            self.path.unlink()
        os.close(self.handle)


if sys.platform == "win32":
    import msvcrt

    def _try_lock(handle: int) -> bool:
        try:
            msvcrt.locking(handle, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

else:
    import fcntl

    def _try_lock(handle: int) -> bool:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True
