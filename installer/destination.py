"""A host rooted at --root: compare, stage, commit or roll back files and links.

Every file is first written and verified under a temporary name in its target folder; `commit`
renames them all into place. Until then `abort` removes every staged file and every folder this
destination created, so a failure leaves the host as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import (
    IO,
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
)

from .copying import copy_range
from .errors import InstallError
from .hashing import Segment, sha256_file
from .plan import LINKED_COMMANDS, Link, Placement
from .transaction import missing_folders

SYSTEM_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
Progress = Callable[[int], None]


@dataclass(frozen=True)
class Staged:
    """A file written under a temporary name, waiting for its rename."""

    tmp: Path
    final: Path


class HostDestination:
    """Files and links under one root folder."""

    def __init__(self, root: str) -> None:
        self.root = Path(root)
        self._staged: List[Staged] = []
        self._created_dirs: List[Path] = []

    def path(self, target: str) -> Path:
        """The host path of an absolute target path, under the root."""
        return self.root / target.lstrip("/")

    def existing_commands(self) -> Set[str]:
        """Which of kubectl/crictl/ctr already exist on the system PATH (other than our links)."""
        found = set()
        for command in LINKED_COMMANDS:
            for folder in SYSTEM_PATH:
                candidate = self.path(f"{folder}/{command}")
                ours = candidate.is_symlink() and os.readlink(candidate) == "k3s"
                if not ours and (candidate.exists() or candidate.is_symlink()):
                    found.add(command)
        return found

    def read_json(self, target: str) -> Optional[Mapping[str, Any]]:
        """A JSON file under the root, or None when it is missing or unreadable."""
        try:
            doc = json.loads(self.path(target).read_text("utf-8"))
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def is_current(self, placement: Placement) -> bool:
        """True when the file on disk already has the placement's content and mode."""
        path = self.path(placement.target)
        try:
            info = path.lstat()
        except OSError:
            return False
        if not path.is_file() or path.is_symlink() or info.st_size != placement.size:
            return False
        return (info.st_mode & 0o7777) == placement.mode and sha256_file(path) == placement.sha256

    def link_is_current(self, link: Link) -> bool:
        """True when the symlink already exists with the right target."""
        path = self.path(link.path)
        return path.is_symlink() and os.readlink(path) == link.target

    def staged_path(self, target: str) -> Path:
        """The temporary name a target is written under until the commit."""
        final = self.path(target)
        return final.with_name(f".{final.name}.k3bundle-tmp")

    def missing_dirs(self, targets: Iterable[str]) -> List[str]:
        """Host folders that staging these targets would create, parents first."""
        missing: List[str] = []
        for target in targets:
            chain = [str(p) for p in missing_folders(self.path(target).parent)]
            missing.extend(p for p in chain if p not in missing)
        return missing

    def missing_targets(self, targets: Iterable[str]) -> List[str]:
        """The folders (as target paths, like "/etc/rancher/k3s") these targets would create."""
        inside = [Path(p).relative_to(self.root) for p in self.missing_dirs(targets)]
        return [f"/{p}" for p in inside if p != Path(".")]  # never the root folder itself

    def read_env(self, target: str) -> Dict[str, str]:
        """KEY="value" lines of an env file we wrote (empty when missing)."""
        try:
            lines = self.path(target).read_text("utf-8").splitlines()
        except OSError:
            return {}
        found: Dict[str, str] = {}
        for line in lines:
            key, equals, value = line.partition("=")
            if equals and key.strip():
                found[key.strip()] = _unquote(value.strip())
        return found

    def stage(
        self,
        placement: Placement,
        chunks: Iterable[memoryview],
        progress: Progress,
        sync: bool = False,
    ) -> Path:
        """Write chunks to a temporary name beside the target.

        Payload chunks come from sources.VerifyingStream, which hashes them as they pass and
        raises at the end when size or sha256 differ from the signed manifest: the bytes are
        hashed once, while they are written, and checked before any rename.
        """
        final, fd = self._open_staged(placement)
        with os.fdopen(fd, "wb", buffering=0) as out:
            for chunk in chunks:
                _write_all(out, chunk)
                progress(len(chunk))
            if sync:
                os.fsync(out.fileno())
        return final

    def stage_copy(
        self, placement: Placement, segments: Sequence[Segment], published: Progress
    ) -> Path:
        """Copy a member's bytes from the bundle's file(s) to a temporary name, in the kernel.

        `published(n)` says that the first n bytes are in the staged file: a HashPool job hashes
        them there, behind the copy, and the pool is checked before any rename. A bundle that
        ends early raises EOFError.
        """
        final, fd = self._open_staged(placement)
        try:
            done = 0
            for file, offset, length in segments:
                with _opened(file) as source:
                    copy_range(source, offset, length, fd, _shifted(published, done))
                done += length
        except OSError as exc:
            raise InstallError(
                f"cannot copy {placement.target} into place: {exc.strerror}",
                "Check the free space under the root and that the bundle is readable, then run "
                "again (nothing has been changed).",
            ) from None
        finally:
            os.close(fd)
        return final

    def _open_staged(self, placement: Placement) -> Tuple[Path, int]:
        final = self.path(placement.target)
        self._make_dirs(final.parent)
        tmp = self.staged_path(placement.target)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, placement.mode)
        except OSError as exc:
            raise InstallError(f"cannot write {final}: {exc.strerror}", "Run as root.") from None
        self._staged.append(Staged(tmp, final))
        os.fchmod(fd, placement.mode)  # exact (not umask'd), and before any fsync of the file
        return final, fd

    def abort(self) -> None:
        """Remove staged files and the folders this destination created."""
        for staged in self._staged:
            with contextlib.suppress(FileNotFoundError):
                staged.tmp.unlink()
        self._staged.clear()
        for folder in reversed(self._created_dirs):
            with contextlib.suppress(OSError):  # not empty: something else lives there now
                folder.rmdir()
        self._created_dirs.clear()

    def _make_dirs(self, folder: Path) -> None:
        for path in missing_folders(folder):
            try:
                path.mkdir(mode=0o755)
            except OSError as exc:
                raise InstallError(
                    f"cannot create {path}: {exc.strerror}", "Run as root."
                ) from None
            self._created_dirs.append(path)


def _shifted(published: Progress, base: int) -> Progress:
    """published(base + n): counts within one segment, as counts within the whole member."""
    return lambda count: published(base + count)


@contextlib.contextmanager
def _opened(file: Union[int, Path]) -> Iterator[int]:
    """A descriptor for a segment's file: the open one, or the path opened for the copy."""
    if isinstance(file, int):
        yield file
        return
    fd = os.open(file, os.O_RDONLY)
    try:
        yield fd
    finally:
        os.close(fd)


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        out, escaped = [], False
        for char in value[1:-1]:
            if escaped or char != "\\":
                out.append(char)
                escaped = False
            else:
                escaped = True
        return "".join(out)
    return value


def _write_all(out: IO[bytes], view: memoryview) -> None:
    while view:
        written = out.write(view) or 0
        view = view[written:]
