"""The root is a boundary: host paths resolved beneath --root, never through a link out of it.

A tree under --root is hostile until checked: any folder on the way to a target may be a symlink.
`RootFS.host` resolves a target's folders the way a chroot would see them (an absolute link
target is read inside the root, a relative one from its folder) and refuses a link whose `..`
climbs above the root, a file where a folder belongs, and link loops. The last component is never
followed: every operation on it is a rename, unlink, rmdir, `lstat` or an open with O_NOFOLLOW,
each of which acts on the link itself. One writer per root (lock.py) keeps the tree from changing
under a run; a process with write access to the root's folders is trusted like root.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from k3bundle.installer.errors import InstallError, host_error
from k3bundle.installer.host.layout import folder_mode

MAX_LINKS = 40  # as the kernel's own limit on links followed in one lookup


class RootFS:
    """Paths under one root folder, resolved without leaving it."""

    def __init__(self, root: str) -> None:
        self.root = Path(os.path.abspath(root))
        self._folders: Dict[str, Path] = {}

    def host(self, target: str) -> Path:
        """The host path of an absolute target path: its folders resolved beneath the root."""
        folder, name = posixpath.split(posixpath.normpath("/" + target.lstrip("/")))
        if name in ("", ".", ".."):
            return self.folder(folder)
        return self.folder(folder) / name

    def folder(self, target: str) -> Path:
        """The host path of a target folder, every component resolved beneath the root."""
        key = posixpath.normpath("/" + target.lstrip("/"))
        found = self._folders.get(key)
        if found is None:
            found = self._resolve(key)
            self._folders[key] = found
        return found

    def forget(self) -> None:
        """Drop cached resolutions (after folders were created or removed)."""
        self._folders.clear()

    def shown(self, path: Path) -> str:
        """A host path as a target path ("/usr/local/bin/k3s"), for messages."""
        try:
            inside = path.relative_to(self.root)
        except ValueError:
            return str(path)
        return "/" + str(inside) if str(inside) != "." else "/"

    def _resolve(self, target: str) -> Path:
        parts = [p for p in target.split("/") if p]
        resolved: List[str] = []  # components below the root, all real folders (or missing)
        links = 0
        while parts:
            name = parts.pop(0)
            if name == ".":
                continue
            if name == "..":
                if not resolved:
                    raise _escape(self.root, target)
                resolved.pop()
                continue
            here = self.root.joinpath(*resolved, name)
            kind = _kind(here)
            if kind == "link":
                links += 1
                if links > MAX_LINKS:
                    raise _loop(here)
                link = os.readlink(here)
                if link.startswith("/"):
                    resolved = []
                parts = [p for p in link.split("/") if p] + parts
                continue
            if kind == "other":
                raise _not_a_folder(here, self.root)
            resolved.append(name)
        return self.root.joinpath(*resolved)


def _kind(path: Path) -> str:
    """'dir', 'missing', 'link' or 'other' (a file, a socket...), without following a link."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        if exc.errno == errno.ENOTDIR:
            return "other"
        raise host_error(exc, "look at", path) from None
    if stat.S_ISLNK(mode):
        return "link"
    return "dir" if stat.S_ISDIR(mode) else "other"


def _escape(root: Path, target: str) -> InstallError:
    return InstallError(
        f"a symlink on the way to {target} leads out of {root}",
        f"k3bundle never writes outside --root; replace that link under {root} with a folder "
        "(or a link that stays inside the root) and run again (nothing has been changed).",
    )


def _loop(path: Path) -> InstallError:
    return InstallError(
        f"too many symlinks at {path}", "Replace the link loop with a folder and run again."
    )


def _not_a_folder(path: Path, root: Path) -> InstallError:
    return InstallError(
        f"{path} is not a folder, but k3bundle places files inside it",
        f"Move it away (it is under {root}) and run again (nothing has been changed).",
    )


def make_folders(fs: RootFS, target: str, mode: Optional[int] = None) -> List[Path]:
    """Create the target folder where the root resolves it, and every missing folder on the way
    there (a link inside the root may point at one not made yet); the new ones, outermost first.

    Each new folder gets `mode`, or by default layout.folder_mode of the target path it is.
    """
    folder = fs.folder(target)
    missing: List[Tuple[Path, int]] = []
    # Links resolve only in the existing start of the path: the missing folders end the resolved
    # path as the target's last parts end the target, so each gets the mode of its target path.
    named = target
    while folder != fs.root and not os.path.lexists(folder):
        missing.append((folder, folder_mode(named) if mode is None else mode))
        folder, named = folder.parent, posixpath.dirname(named)
    for path, path_mode in reversed(missing):
        try:
            path.mkdir(mode=path_mode)
        except OSError as exc:
            raise host_error(exc, "create", path) from None
    if missing:  # staging calls this once per file: keep the resolutions when nothing was made
        fs.forget()
    return [path for path, _ in reversed(missing)]


def open_new(path: Path, mode: int) -> int:
    """Create `path` for writing: never through a link, never an existing file (O_EXCL).

    A leftover of an earlier run under the same reserved name is removed first (it is ours:
    the journal lists such names and no manifest path can produce one); a folder there is refused.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(path, flags, mode)
    except FileExistsError:
        remove_file(path)
    except OSError as exc:
        raise host_error(exc, "write", path) from None
    try:
        return os.open(path, flags, mode)
    except OSError as exc:
        raise host_error(exc, "write", path) from None


def remove_file(path: Path) -> bool:
    """Unlink a file or link (never a folder's content); False when nothing was there."""
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            raise InstallError(
                f"{path} is a folder where k3bundle keeps a file",
                "Move that folder away and run again.",
            )
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise host_error(exc, "remove", path) from None
    return True


def read_file(path: Path, limit: int) -> Optional[bytes]:
    """A regular file's bytes (not through a link), None when missing; at most `limit` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            return None  # a link or a file on the way: not a state file k3bundle wrote
        raise host_error(exc, "read", path) from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return None
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise InstallError(
            f"{path} is larger than {limit} bytes: it is not a file k3bundle wrote",
            "Move it away (k3bundle status shows what is installed) and run again.",
        )
    return data


def is_dir_no_follow(path: Path) -> bool:
    """True for a real folder (not a link to one)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False
