"""A host rooted at --root: compare, stage, commit or roll back files and links.

Every file is first written and verified under a temporary name in its target folder; `commit`
renames them all into place. Until then `abort` removes every staged file and every folder this
destination created, so a failure leaves the host as it was.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shlex
import stat
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

from k3bundle.installer.errors import InstallError, host_error
from k3bundle.installer.format.chunkhash import SliceJob, add_chunk_jobs
from k3bundle.installer.format.copying import copy_range
from k3bundle.installer.format.hashing import O_BINARY, HashJob, HashPool, Segment, sha256_file
from k3bundle.installer.format.jsondoc import load_json
from k3bundle.installer.host.layout import LINKED_COMMANDS, RECORD_PATH, staged_name
from k3bundle.installer.host.plan import Link, Placement
from k3bundle.installer.host.record import MAX_RECORD_BYTES, Record, RecordLink, parse_record
from k3bundle.installer.host.rootfs import (
    RootFS,
    is_dir_no_follow,
    make_folders,
    open_new,
    read_file,
    remove_file,
)

MAX_STATE_BYTES = 16 * 1024 * 1024  # env files and the --config copy k3bundle keeps
SYSTEM_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
Progress = Callable[[int], None]


@dataclass(frozen=True)
class Staged:
    """A file written under a temporary name, waiting for its rename."""

    tmp: Path
    final: Path


class HostDestination:
    """Files and links under one root folder, never outside it (rootfs.py)."""

    def __init__(self, root: str) -> None:
        self.fs = RootFS(root)
        self.root = self.fs.root
        self._staged: List[Staged] = []
        self._created_dirs: List[Path] = []  # host folders staging made, outermost first

    def path(self, target: str) -> Path:
        """The host path of an absolute target path, its folders resolved beneath the root."""
        return self.fs.host(target)

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
        """A JSON object k3bundle keeps under the root, or None when it is missing.

        A file that is not a JSON object is refused: it is state k3bundle wrote, changed since.
        """
        path = self.path(target)
        data = read_file(path, MAX_STATE_BYTES)
        if data is None:
            return None
        hint = f"k3bundle wrote {path}; restore it or move it away, then run again."
        doc = load_json(data, str(path), error=InstallError, hint=hint)
        if not isinstance(doc, dict):
            raise InstallError(f"{path} is not a JSON object", hint)
        return doc

    def read_record(self, target: str = RECORD_PATH) -> Optional[Record]:
        """The validated install record (or a kept previous one), None when there is none."""
        path = self.path(target)
        data = read_file(path, MAX_RECORD_BYTES)
        return None if data is None else parse_record(data, str(path))

    def is_current(self, placement: Placement) -> bool:
        """True when the file on disk already has the placement's content and mode."""
        return self.matches(placement.target, placement.size, placement.sha256, placement.mode)

    def matches(self, target: str, size: int, sha256: str, mode: Optional[int] = None) -> bool:
        """True when the target is a regular file (not a link) of this size, sha256 and mode."""
        path = self.path(target)
        try:
            info = path.lstat()
        except OSError:
            return False
        if not stat.S_ISREG(info.st_mode) or info.st_size != size:
            return False
        if mode is not None and (info.st_mode & 0o7777) != mode:
            return False
        return sha256_file(path) == sha256

    def current_targets(self, placements: Sequence[Placement]) -> Set[str]:
        """The targets that already hold their placement's content and mode, hashed on all cores.

        As `is_current` for each, but every file is hashed at once on a pool, and a payload file
        with chunk digests chunk by chunk: bytes that match every signed chunk digest have the
        entry's sha256 (chunkhash.py says why). Each file is opened without following a link
        and checked through that descriptor, so what is hashed is what was checked.
        """
        queued: List[Tuple[Placement, List[HashJob]]] = []
        with contextlib.ExitStack() as opened, HashPool() as pool:
            for placement in placements:
                fd = self._open_same_shape(placement)
                if fd is not None:
                    opened.callback(os.close, fd)
                    queued.append((placement, _current_jobs(pool, placement, fd)))
            for _, jobs in queued:
                for job in jobs:
                    job.done.wait()
        return {placement.target for placement, jobs in queued if _matched(placement, jobs)}

    def _open_same_shape(self, placement: Placement) -> Optional[int]:
        """A descriptor of the target when it is a regular file of the right size and mode."""
        try:
            fd = os.open(self.path(placement.target), os.O_RDONLY | os.O_NOFOLLOW | O_BINARY)
        except OSError:
            return None
        info = os.fstat(fd)
        same = stat.S_ISREG(info.st_mode) and info.st_size == placement.size
        if same and (info.st_mode & 0o7777) == placement.mode:
            return fd
        os.close(fd)
        return None

    def link_is_current(self, link: Union[Link, RecordLink]) -> bool:
        """True when the symlink already exists with the right target."""
        path = self.path(link.path)
        return path.is_symlink() and os.readlink(path) == link.target

    def staged_path(self, target: str) -> Path:
        """The temporary name a target is written under until the commit."""
        return self.path(staged_name(target))

    def missing_dirs(self, targets: Iterable[str]) -> List[str]:
        """The folders (as target paths, like "/etc/rancher/k3s") placing these would create,
        parents first; never the root folder itself."""
        missing: List[str] = []
        for target in targets:
            folder = posixpath.dirname(target)
            chain: List[str] = []
            while folder not in ("/", "") and not os.path.lexists(self.path(folder)):
                chain.append(folder)
                folder = posixpath.dirname(folder)
            missing.extend(p for p in reversed(chain) if p not in missing)
        return missing

    def check_placeable(self, targets: Iterable[str]) -> None:
        """Refuse before any change when a folder (not a link) sits where a file or link goes."""
        for target in targets:
            if is_dir_no_follow(self.path(target)):
                raise InstallError(
                    f"{self.path(target)} is a folder, but the install places a file there",
                    "Move that folder away and run again (nothing has been changed).",
                )

    def read_env(self, target: str) -> Dict[str, str]:
        """KEY="value" lines of an env file we wrote (empty when missing)."""
        data = read_file(self.path(target), MAX_STATE_BYTES)
        if data is None:
            return {}
        found: Dict[str, str] = {}
        for line in data.decode("utf-8", "replace").splitlines():
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
            try:
                for chunk in chunks:
                    _write_all(out, chunk)
                    progress(len(chunk))
                if sync:
                    os.fsync(out.fileno())
            except OSError as exc:
                raise host_error(exc, "write", final) from None
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
            raise host_error(exc, "copy", placement.target) from None
        finally:
            os.close(fd)
        return final

    def _open_staged(self, placement: Placement) -> Tuple[Path, int]:
        self._make_dirs(posixpath.dirname(placement.target))
        final, tmp = self.path(placement.target), self.staged_path(placement.target)
        fd = open_new(tmp, placement.mode)
        self._staged.append(Staged(tmp, final))
        os.fchmod(fd, placement.mode)  # exact (not umask'd), and before any fsync of the file
        return final, fd

    def ensure_empty_file(self, target: str, mode: int) -> None:
        """Create an empty file (and its folders) unless something is there already."""
        self._make_dirs(posixpath.dirname(target))
        self._created_dirs.clear()  # kept: the file lives in them now
        try:
            fd = os.open(
                self.path(target), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode
            )
        except FileExistsError:
            return
        except OSError as exc:
            raise host_error(exc, "create", self.path(target)) from None
        os.close(fd)

    def abort(self) -> None:
        """Remove staged files and the folders this destination created."""
        for staged in self._staged:
            with contextlib.suppress(InstallError):
                remove_file(staged.tmp)
        self._staged.clear()
        for folder in reversed(self._created_dirs):
            with contextlib.suppress(OSError):  # not empty: something else lives there now
                folder.rmdir()
        self._created_dirs.clear()
        self.fs.forget()

    def _make_dirs(self, folder: str) -> None:
        self._created_dirs.extend(make_folders(self.fs, folder))


def _current_jobs(pool: HashPool, placement: Placement, fd: int) -> List[HashJob]:
    """Hash jobs over the open target: one per chunk for a chunked entry, else one."""
    entry, whole = placement.entry, [(fd, 0, placement.size)]
    if entry is not None and entry.chunks is not None:
        return list(add_chunk_jobs(pool, entry, placement.target, whole, entry.size).jobs)
    return [pool.add(SliceJob(fd, 0, placement.size, placement.target))]


def _matched(placement: Placement, jobs: Sequence[HashJob]) -> bool:
    """Every chunk matched its digest, or the whole file's sha256 is the placement's."""
    if any(job.error is not None or job.sha256 is None for job in jobs):
        return False
    chunked = placement.entry is not None and placement.entry.chunks is not None
    return chunked or jobs[0].sha256 == placement.sha256


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
    if len(value) >= 2 and value[0] == value[-1] == "'":
        # upstream's install.sh writes `export`'s output: K3S_TOKEN='a'\''b' (an adopted env file)
        try:
            return "".join(shlex.split(value))
        except ValueError:
            return value
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
