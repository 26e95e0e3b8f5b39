"""Crash-safe changes to a host: a journal makes each install, rollback or uninstall all-or-nothing.

Staging writes verified files under temporary names and lists them in the journal; a crash then
leaves the old installation, and the next command removes the leftovers. Committing first copies
(hard-links) every file it will replace or remove into `previous.new/`, then renames the staged
files into place (the install record among them) and makes `previous.new/` the kept previous
generation. The journal says which step was reached, every step is idempotent, and the next
command finishes a commit that was cut off: the host is always either the old installation or the
new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

STATE_DIR = "/var/lib/k3bundle"
RECORD_PATH = f"{STATE_DIR}/record.json"
JOURNAL_PATH = f"{STATE_DIR}/journal.json"
PREVIOUS_DIR = f"{STATE_DIR}/previous"
_NEXT_PREVIOUS = f"{STATE_DIR}/previous.new"


@dataclass
class Change:
    """What one commit does; paths are absolute on the host (not under --root)."""

    moves: List[Tuple[str, str]] = field(default_factory=list)  # (host source, target)
    removals: List[str] = field(default_factory=list)
    links: List[Tuple[str, str]] = field(default_factory=list)  # (path, link target)
    unlinks: List[str] = field(default_factory=list)
    backups: List[str] = field(default_factory=list)  # targets whose current file is kept
    keep_previous: bool = True  # False (uninstall): drop the previous generation too


class Journal:
    """The journal file of one root, and the commit protocol it protects."""

    def __init__(self, root: str, durable: bool = False) -> None:
        self.root, self.durable = Path(root), durable
        self.path = self.host(JOURNAL_PATH)
        self._tmp = self.path.with_name(self.path.name + ".tmp")  # the next journal, until renamed
        self._created: List[Path] = []  # folders made for the journal, removed by discard()

    def host(self, target: str) -> Path:
        """An absolute target path under the root."""
        return self.root / target.lstrip("/")

    def pending(self) -> Optional[Dict[str, Any]]:
        """The interrupted operation, if a journal (or a first one never put in place) is left."""
        try:
            doc = json.loads(self.path.read_text("utf-8"))
        except FileNotFoundError:
            return self._unwritten()
        except ValueError:
            return {"state": "staging", "staged": [], "dirs": []}  # cut off mid-write
        return doc if isinstance(doc, dict) else None

    def _unwritten(self) -> Optional[Dict[str, Any]]:
        """Cut off while writing the first journal: nothing was staged or changed yet, but the
        temporary journal and the folders made for it are left to remove."""
        try:
            doc = json.loads(self._tmp.read_text("utf-8"))
        except FileNotFoundError:
            return None
        except ValueError:
            doc = None
        staging = isinstance(doc, dict) and doc.get("state") == "staging"
        return {"state": "staging", "staged": [], "dirs": doc["dirs"] if staging else []}

    def _write(self, doc: Dict[str, Any]) -> None:
        for path in missing_folders(self.path.parent):
            path.mkdir(mode=0o755)
            self._created.append(path)
        os.chmod(self.path.parent, 0o700)
        tmp = self._tmp
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(doc, handle, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        if self.durable:
            _fsync_dir(self.path.parent)

    def begin_staging(self, staged: List[str], dirs: List[str]) -> None:
        """Record what staging may leave behind, before it writes anything."""
        self._write({"state": "staging", "staged": staged, "dirs": dirs})

    def discard(self) -> None:
        """Drop a staging journal whose files were already removed (or never written)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        for folder in reversed(self._created):
            with contextlib.suppress(OSError):
                folder.rmdir()
        self._created.clear()

    def commit(self, change: Change) -> None:
        """Back up, apply, keep the previous generation; resumable at every step."""
        doc = {"state": "backup", "change": asdict(change)}
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
            with contextlib.suppress(FileNotFoundError):
                Path(staged).unlink()
        for journal in (self._tmp, self.path):  # a commit's first journal may be half-written
            with contextlib.suppress(FileNotFoundError):
                journal.unlink()
        for folder in reversed(doc.get("dirs", [])):  # the journal's own folder among them
            with contextlib.suppress(OSError):
                Path(folder).rmdir()

    def _finish(self, doc: Dict[str, Any]) -> None:
        change = Change(**{k: _tuples(k, v) for k, v in doc["change"].items()})
        if doc["state"] == "backup":
            self._backup(change)
            doc["state"] = "apply"
            self._write(doc)
        self._apply(change)
        self._keep_previous(change)
        if self.durable:  # what changed is on disk before the journal that replays it goes
            self._fsync_folders(change)
        self.path.unlink()

    def _fsync_folders(self, change: Change) -> None:
        """fsync every folder whose entries changed, and the folders above them up to the root
        (a folder staging created is an entry of its parent)."""
        changed = [t for _, t in change.moves] + change.removals + change.unlinks
        changed += [path for path, _ in change.links]
        folders: Set[Path] = set()
        for target in changed:
            folder = self.host(target).parent
            while folder not in folders and folder != self.root.parent and folder.exists():
                folders.add(folder)
                if folder == self.root:
                    break
                folder = folder.parent
        for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
            _fsync_dir(folder)

    def _backup(self, change: Change) -> None:
        if not change.backups:  # nothing replaced: the kept previous generation stays as it is
            return
        folder = self.host(_NEXT_PREVIOUS)
        if not folder.exists():
            folder.mkdir(parents=True, mode=0o700)
        for target in change.backups:
            current, kept = self.host(target), folder / "files" / target.lstrip("/")
            if current.is_file() and not current.is_symlink() and not kept.exists():
                _keep(current, kept)

    def _apply(self, change: Change) -> None:
        for source, target in change.moves:
            if Path(source).exists():
                final = self.host(target)
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, final)
        for target in [*change.removals, *change.unlinks]:
            with contextlib.suppress(FileNotFoundError):
                self.host(target).unlink()
        for path, link_target in change.links:
            _symlink(self.host(path), link_target)

    def _keep_previous(self, change: Change) -> None:
        previous, incoming = self.host(PREVIOUS_DIR), self.host(_NEXT_PREVIOUS)
        if not change.keep_previous:
            shutil.rmtree(incoming, ignore_errors=True)
            shutil.rmtree(previous, ignore_errors=True)
            return
        if incoming.exists():
            shutil.rmtree(previous, ignore_errors=True)
            os.replace(incoming, previous)


def missing_folders(folder: Path) -> List[Path]:
    """`folder` and its ancestors that do not exist yet, outermost first."""
    missing: List[Path] = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    return missing[::-1]


def _tuples(key: str, value: Any) -> Any:
    if key in ("moves", "links"):
        return [tuple(pair) for pair in value]
    return value


def _keep(current: Path, kept: Path) -> None:
    """Keep a file's current content at `kept`: a hard link when possible, else a copy."""
    kept.parent.mkdir(parents=True, exist_ok=True)
    tmp = kept.with_name(kept.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(current, tmp)
    except OSError:
        shutil.copy2(current, tmp)
    os.replace(tmp, kept)


def _symlink(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.k3bundle-tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, path)


def previous_file(root: str, target: str) -> Path:
    """Where the previous generation keeps its copy of `target`."""
    return Path(root) / PREVIOUS_DIR.lstrip("/") / "files" / target.lstrip("/")


def _fsync_dir(folder: Path) -> None:
    """Make a folder's entries (a rename, a new file) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
