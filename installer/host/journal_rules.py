"""The journal's rules: which documents k3bundle could have written, checked before any is obeyed.

A journal names staged files, folders, moves, removals and links. Each must be one an install,
rollback or uninstall could have produced (layout.py): a staged name beside a placeable file, a
move from its staged name or its kept copy, a folder on the way to a place files go. Anything
else is refused, naming the journal and how to repair it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

from k3bundle.installer.errors import InstallError
from k3bundle.installer.host.layout import (
    ANY_DATA_DIR,
    STAGED_SUFFIX,
    SYSTEMD_DIR,
    is_normal_path,
    kept_copy,
    placeable_file,
    placeable_folder,
    placeable_link,
    staged_name,
)

JOURNAL_FORMAT = "k3bundle-journal/v1"


class JournalError(InstallError):
    """A journal that names what k3bundle would never have written: refused, never obeyed."""


def checked(doc: Any, where: Path) -> Dict[str, Any]:
    """The journal document, once every path in it is one k3bundle could have written."""

    def refuse(what: str) -> JournalError:
        return JournalError(f"{where} {what}", repair(where))

    if not isinstance(doc, dict) or doc.get("format", JOURNAL_FORMAT) != JOURNAL_FORMAT:
        raise refuse("is not a k3bundle journal")
    state = doc.get("state")
    if state == "staging":
        staged, dirs = _texts(doc.get("staged"), refuse), _texts(doc.get("dirs"), refuse)
        for path in staged:
            target = _unstaged(path)
            if not _placeable(target) or staged_name(target) != path:
                raise refuse(f"names {path!r}, which no install stages")
        targets = [_unstaged(path) for path in staged]
        for folder in dirs:
            # A folder under a custom data dir only on the way to a file this journal stages.
            below = any(target.startswith(folder + "/") for target in targets)
            normal = is_normal_path(folder) and folder != "/"
            if not placeable_folder(folder) and not (below and normal):
                raise refuse(f"names the folder {folder!r}, which no install creates")
        return {"state": state, "staged": staged, "dirs": dirs}
    if state not in ("backup", "apply") or not isinstance(doc.get("change"), dict):
        raise refuse(f"has the unknown state {state!r}")
    return {"state": state, "change": _checked_change(doc["change"], refuse)}


def _checked_change(
    change: Dict[str, Any], refuse: Callable[[str], JournalError]
) -> Dict[str, Any]:
    keys = {"moves", "removals", "links", "unlinks", "backups", "keep_previous"}
    if set(change) != keys or not isinstance(change["keep_previous"], bool):
        raise refuse("holds a change of the wrong shape")
    for source, target in _pairs(change["moves"], refuse):
        if not _placeable(target) or source not in (staged_name(target), kept_copy(target)):
            raise refuse(f"moves {source!r} over {target!r}, which no install does")
    for key in ("removals", "backups"):
        if not all(_placeable(p) for p in _texts(change[key], refuse)):
            raise refuse(f"lists {key} that k3bundle never placed")
    for path, target in _pairs(change["links"], refuse):
        if not placeable_link(path, target):
            raise refuse(f"makes the link {path!r} -> {target!r}, which no install makes")
    if not all(_link_path(p) for p in _texts(change["unlinks"], refuse)):
        raise refuse("removes links that k3bundle never made")
    return change


def _placeable(path: str) -> bool:
    # A journal does not name k3s's data dir (a rollback may even move between two): payload
    # paths pass under any data dir k3bundle accepts (layout.data_dir_problem), nowhere else.
    return placeable_file(path, ANY_DATA_DIR)


def _texts(value: Any, refuse: Callable[[str], JournalError]) -> List[str]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise refuse("holds a list that is not a list of texts")
    return list(value)


def _pairs(value: Any, refuse: Callable[[str], JournalError]) -> List[Tuple[str, str]]:
    items = value if isinstance(value, (list, tuple)) else [None]
    if not all(isinstance(v, (list, tuple)) and len(v) == 2 for v in items):
        raise refuse("holds pairs of the wrong shape")
    return [(a, b) for a, b in (_texts(v, refuse) for v in items)]


def _link_path(path: str) -> bool:
    unit = f"{SYSTEMD_DIR}/{os.path.basename(path)}"
    return placeable_link(path, "k3s") or placeable_link(path, unit)


def _unstaged(path: str) -> str:
    """The target a staged name stands for (`/a/.b.k3bundle-tmp` -> `/a/b`)."""
    folder, name = os.path.split(path)
    if not (name.startswith(".") and name.endswith(STAGED_SUFFIX)):
        return ""
    return f"{folder}/{name[1 : -len(STAGED_SUFFIX)]}"


def repair(where: Path) -> str:
    """What to do about a journal k3bundle cannot trust."""
    return (
        f"k3bundle did not write {where} as it is now. Check the installation with 'k3bundle "
        f"status', then move the journal away (nothing has been changed)."
    )
