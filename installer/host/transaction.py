"""Crash-safe changes to a host: a journal makes each install, rollback or uninstall all-or-nothing.

Staging writes verified files under temporary names and lists them in the journal; a crash then
leaves the old installation, and the next command removes the leftovers. Committing first copies
(hard-links) every file it will replace or remove into `previous.new/`, then renames the staged
files into place (the install record among them) and makes `previous.new/` the kept previous
generation. The journal says which step was reached, every step is idempotent, and the next
command finishes a commit that was cut off: the host is always either the old installation or the
new one.

The journal is a file on the host like any other, so it is data, not authority: every path in it
is a target path (never a host path), and journal_rules.py refuses any that an install could not
have written for its plan before a single one is acted on.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

from k3bundle.installer.errors import host_error
from k3bundle.installer.format.jsondoc import load_json
from k3bundle.installer.format.manifest import canonical_json
from k3bundle.installer.host.journal_rules import JOURNAL_FORMAT, JournalError, checked, repair
from k3bundle.installer.host.layout import (
    JOURNAL_PATH,
    NEXT_PREVIOUS_DIR,
    PREVIOUS_DIR,
    STATE_DIR,
    incoming_copy,
    staged_name,
)
from k3bundle.installer.host.rootfs import RootFS, make_folders, open_new, read_file, remove_file

MAX_JOURNAL_BYTES = 64 * 1024 * 1024


@dataclass
class Change:
    """What one commit does; every path is a target path (as on the host, not under --root)."""

    moves: List[Tuple[str, str]] = field(default_factory=list)  # (source target, target)
    removals: List[str] = field(default_factory=list)
    links: List[Tuple[str, str]] = field(default_factory=list)  # (path, link target)
    unlinks: List[str] = field(default_factory=list)
    backups: List[str] = field(default_factory=list)  # targets whose current file is kept
    keep_previous: bool = True  # False (uninstall): drop the previous generation too


class Journal:
    """The journal file of one root, and the commit protocol it protects."""

    def __init__(self, fs: RootFS, durable: bool = False) -> None:
        self.fs, self.durable = fs, durable
        self._created: List[Path] = []  # folders made for the journal, removed by discard()
        self.leftover_dirs: List[str] = []  # folders recovery could not remove yet (the lock's)

    @property
    def path(self) -> Path:
        """The journal file on the host."""
        return self.fs.host(JOURNAL_PATH)

    @property
    def _tmp(self) -> Path:  # the next journal, until renamed over the current one
        return self.path.with_name(self.path.name + ".tmp")

    def host(self, target: str) -> Path:
        """An absolute target path under the root."""
        return self.fs.host(target)

    def pending(self) -> Optional[Dict[str, Any]]:
        """The interrupted operation, if a journal (or a first one never put in place) is left.

        Raises JournalError for a journal k3bundle cannot have written.
        """
        data = read_file(self.path, MAX_JOURNAL_BYTES)
        if data is None:
            return self._unwritten()
        # Written whole and fsynced before its rename: a journal that does not parse is not ours.
        return checked(load_json(data, str(self.path), JournalError, repair(self.path)), self.path)

    def _unwritten(self) -> Optional[Dict[str, Any]]:
        """Cut off while writing the first journal: nothing was staged or changed yet, but the
        temporary journal and the folders made for it are left to remove."""
        data = read_file(self._tmp, MAX_JOURNAL_BYTES)
        if data is None:
            return None
        doc: Any = None
        with contextlib.suppress(JournalError):
            doc = checked(load_json(data, str(self._tmp), JournalError), self._tmp)
        staging = isinstance(doc, dict) and doc.get("state") == "staging"
        return {"state": "staging", "staged": [], "dirs": doc["dirs"] if staging else []}

    def _write(self, doc: Dict[str, Any]) -> None:
        self._make_folder()
        data = canonical_json({"format": JOURNAL_FORMAT, **doc}) + b"\n"
        with os.fdopen(open_new(self._tmp, 0o600), "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(self._tmp, self.path)
        if self.durable:
            _fsync_dir(self.path.parent)

    def _make_folder(self) -> None:
        self._created.extend(make_folders(self.fs, STATE_DIR))
        os.chmod(self.path.parent, 0o700)

    def begin_staging(self, staged: List[str], dirs: List[str]) -> None:
        """Record what staging may leave behind (targets, and the folders it may create)."""
        self._write({"state": "staging", "staged": staged, "dirs": dirs})

    def discard(self) -> None:
        """Drop a staging journal whose files were already removed (or never written)."""
        remove_file(self.path)
        for folder in reversed(self._created):
            with contextlib.suppress(OSError):
                folder.rmdir()
        self._created.clear()

    def commit(self, change: Change) -> None:
        """Back up, apply, keep the previous generation; resumable at every step."""
        doc = checked({"state": "backup", "change": asdict(change)}, self.path)
        self._write(doc)
        self._finish(doc)

    def recover(self) -> Optional[str]:
        """Finish or undo an operation a crash cut off; say which, or None if there was none."""
        doc = self.pending()
        if doc is None:
            return None
        if doc.get("state") == "staging":
            self._unstage(doc)
            return "removed the files of an install that was interrupted before it committed"
        self._finish(doc)
        return "completed a change that was interrupted after it committed"

    def _unstage(self, doc: Dict[str, Any]) -> None:
        for staged in doc.get("staged", []):
            remove_file(self.fs.host(staged))
        for journal in (self._tmp, self.path):  # a commit's first journal may be half-written
            remove_file(journal)
        for folder in reversed(doc.get("dirs", [])):  # the journal's own folder among them
            try:
                self.fs.host(folder).rmdir()
            except FileNotFoundError:
                continue
            except OSError:
                self.leftover_dirs.append(folder)
        self.fs.forget()

    def _finish(self, doc: Dict[str, Any]) -> None:
        change = Change(**{k: _tuples(k, v) for k, v in doc["change"].items()})
        try:
            if doc["state"] == "backup":
                self._backup(change)
                doc["state"] = "apply"
                self._write(doc)
            self._apply(change)
            self._keep_previous(change)
            if self.durable:  # what changed is on disk before the journal that replays it goes
                self._fsync_folders(change)
        except OSError as exc:
            raise host_error(exc, "finish the change under", self.fs.root) from None
        self.path.unlink()

    def _fsync_folders(self, change: Change) -> None:
        """fsync every folder whose entries changed, and the folders above them up to the root
        (a folder staging created is an entry of its parent)."""
        changed = [t for _, t in change.moves] + change.removals + change.unlinks
        changed += [path for path, _ in change.links]
        folders: Set[Path] = set()
        root = self.fs.root
        for target in changed:
            folder = self.host(target).parent
            while folder not in folders and folder != root.parent and folder.exists():
                folders.add(folder)
                if folder == root:
                    break
                folder = folder.parent
        for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
            _fsync_dir(folder)

    def _backup(self, change: Change) -> None:
        if not change.backups:  # nothing replaced: the kept previous generation stays as it is
            return
        for target in change.backups:
            current, kept = self.host(target), self.host(incoming_copy(target))
            if current.is_file() and not current.is_symlink() and not kept.exists():
                self._make_parents(incoming_copy(target))
                _keep(self.host(target), self.host(incoming_copy(target)))

    def _make_parents(self, target: str) -> None:
        make_folders(self.fs, os.path.dirname(target), 0o700)

    def _apply(self, change: Change) -> None:
        for source, target in change.moves:
            staged = self.host(source)
            if os.path.lexists(staged):
                self._make_parents(target)
                os.replace(staged, self.host(target))
        for target in [*change.removals, *change.unlinks]:
            remove_file(self.host(target))
        for path, link_target in change.links:
            self._make_parents(path)
            _symlink(self.host(path), self.host(staged_name(path)), link_target)

    def _keep_previous(self, change: Change) -> None:
        previous, incoming = self.host(PREVIOUS_DIR), self.host(NEXT_PREVIOUS_DIR)
        if not change.keep_previous:
            shutil.rmtree(incoming, ignore_errors=True)
            shutil.rmtree(previous, ignore_errors=True)
            return
        if os.path.isdir(incoming) and not os.path.islink(incoming):
            shutil.rmtree(previous, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                remove_file(previous)  # a link or file planted where the folder goes
            os.replace(incoming, previous)


def _tuples(key: str, value: Any) -> Any:
    if key in ("moves", "links"):
        return [tuple(pair) for pair in value]
    return value


def _keep(current: Path, kept: Path) -> None:
    """Keep a file's current content at `kept`: a hard link when possible, else a copy."""
    tmp = kept.with_name(kept.name + ".tmp")
    remove_file(tmp)
    try:
        os.link(current, tmp, follow_symlinks=False)
    except OSError:
        shutil.copy2(current, tmp, follow_symlinks=False)
    os.replace(tmp, kept)


def _symlink(path: Path, tmp: Path, target: str) -> None:
    remove_file(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, path)


def _fsync_dir(folder: Path) -> None:
    """Make a folder's entries (a rename, a new file) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
