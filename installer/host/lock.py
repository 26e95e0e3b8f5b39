"""One writer per root: an exclusive lock under ROOT/var/lib/k3bundle/ for a command's whole run.

`flock` on `ROOT/var/lib/k3bundle/lock`. A second command that would change the root waits for
the first (saying so), or with --no-wait refuses; read-only commands take a shared lock without
waiting and say when a change is running. Messages name the holder from the kernel's /proc/locks.
The lock file holds only the list of folders made for it (written once, when they are made), so
a second run that changes nothing leaves it untouched. When a run ends and the state folder
holds nothing but the lock (a refused first install), the lock file and the folders made for it
are removed again, so a refusal changes nothing; a waiter then finds its lock file unlinked and
takes a fresh one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Callable, Iterator, List, Optional

from k3bundle.installer.errors import InstallError, K3BundleError, host_error
from k3bundle.installer.format.jsondoc import load_json
from k3bundle.installer.host.layout import LOCK_PATH, STATE_DIR, placeable_folder
from k3bundle.installer.host.rootfs import RootFS, make_folders

Report = Callable[[str], None]


class HostLock:
    """The lock of one root, held from `acquire` to `release`."""

    def __init__(self, fs: RootFS) -> None:
        self.fs = fs
        self.created: List[str] = []  # target folders made for the lock file, outermost first
        self.made_root = False  # the root folder itself did not exist
        self._fd: Optional[int] = None

    @property
    def path(self) -> Path:
        """The lock file on the host."""
        return self.fs.host(LOCK_PATH)

    def acquire(self, wait: bool, report: Report) -> None:
        """Take the exclusive lock: wait (with a message) or refuse when another run holds it."""
        while True:
            fd = self._open(create=True)
            assert fd is not None
            if not _try(fd, fcntl.LOCK_EX):
                holder = _holder(fd)
                if not wait:
                    os.close(fd)
                    raise busy(self.fs, holder, "Wait for it to finish, or run again with --wait.")
                report(f"waiting for another k3bundle ({holder}) to finish with {self.fs.root}")
                fcntl.flock(fd, fcntl.LOCK_EX)
            if self._still_ours(fd):
                break
            os.close(fd)  # the holder removed the lock file when it was done: take a new one
        self._fd = fd
        self._remember_created()

    def _remember_created(self) -> None:
        """Keep the folders made for the lock in the lock file itself, so that whoever ends a
        run that was refused or killed before its journal existed can remove them again."""
        assert self._fd is not None
        earlier = _created_in(self._fd)
        mine = [f for f in self.created if f not in earlier]
        self.created = [*earlier, *mine]
        if mine:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, json.dumps(self.created).encode("utf-8"), 0)

    def shared(self) -> Optional[str]:
        """For read-only commands: who holds the lock right now, or None when nobody does."""
        fd = self._open(create=False)
        if fd is None:
            return None
        try:
            if _try(fd, fcntl.LOCK_SH):
                return None
            return _holder(fd)
        finally:
            os.close(fd)  # closing drops a shared lock too: reading goes on without it

    def release(self, remove: bool = False) -> None:
        """Drop the lock; remove the lock file (and folders made for it) when nothing else is
        kept in the state folder, or when `remove` (uninstall)."""
        if self._fd is None:
            return
        state = self.fs.host(STATE_DIR)
        others = [p for p in _entries(state) if p != self.path.name]
        if remove or not others:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            for folder in sorted(set(self.created), key=lambda f: f.count("/"), reverse=True):
                with contextlib.suppress(OSError):  # not empty: an install placed files there
                    self.fs.host(folder).rmdir()
            if self.made_root:
                with contextlib.suppress(OSError):
                    self.fs.root.rmdir()
        os.close(self._fd)
        self._fd = None

    def _open(self, create: bool) -> Optional[int]:
        flags = os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        if create:
            self._make_state_dir()
            flags |= os.O_CREAT | os.O_RDWR
        # else O_RDONLY: flock needs no write access, and a reader may not have it
        try:
            return os.open(self.path, flags, 0o600)
        except FileNotFoundError:
            if create:
                raise
            return None
        except OSError as exc:
            if not create:  # read-only: a lock we cannot open is a lock nobody holds for us
                return None
            raise host_error(exc, "create the lock file", self.path) from None

    def _make_state_dir(self) -> None:
        if not os.path.isdir(self.fs.root):
            try:
                os.makedirs(self.fs.root, mode=0o755)
            except OSError as exc:
                raise host_error(exc, "create", self.fs.root) from None
            self.made_root = True
        made = make_folders(self.fs, STATE_DIR)
        if made:
            os.chmod(made[-1], 0o700)
        targets = [f"/{p.relative_to(self.fs.root)}" for p in made]
        self.created += [t for t in targets if placeable_folder(t)]  # not those behind a link

    def _still_ours(self, fd: int) -> bool:
        try:
            now = os.lstat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


def busy(fs: RootFS, holder: str, hint: str) -> InstallError:
    """The error for a root another k3bundle is changing."""
    return InstallError(f"another k3bundle ({holder}) is changing {fs.root}", hint)


@contextlib.contextmanager
def locked(fs: RootFS, wait: bool, report: Report) -> Iterator[HostLock]:
    """Hold the root's exclusive lock for the block."""
    lock = HostLock(fs)
    lock.acquire(wait, report)
    try:
        yield lock
    finally:
        lock.release()


def _created_in(fd: int) -> List[str]:
    """The folders an earlier run made for the lock, as its lock file lists them."""
    data = os.pread(fd, 4096, 0)
    try:
        folders = load_json(data, "the lock file") if data else []
    except K3BundleError:
        return []
    if not isinstance(folders, list):
        return []
    return [f for f in folders if isinstance(f, str) and placeable_folder(f)]


def _try(fd: int, kind: int) -> bool:
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(fd: int) -> str:
    """'pid N: COMMAND LINE' of the process holding the lock on fd's file, from /proc/locks."""
    info = os.fstat(fd)
    inode = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as locks:
            pids = [line.split()[4] for line in locks if _names(line, inode)]
    except OSError:
        pids = []
    if not pids:
        return "pid unknown"
    return f"pid {pids[0]}: {_command_line(pids[0])}"


def _names(line: str, inode: str) -> bool:
    fields = line.split()
    return len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == inode


def _command_line(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            words = handle.read(4096).split(b"\0")
    except OSError:
        return "k3bundle"
    shown = [w.decode("utf-8", "replace") for w in words if w][:8]
    return " ".join(shown) or "k3bundle"


def _entries(folder: Path) -> List[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []
