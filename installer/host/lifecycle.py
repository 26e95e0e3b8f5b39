"""After the install: status, recover, rollback to the previous generation, uninstall."""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from k3bundle.installer.errors import InstallError, K3BundleError
from k3bundle.installer.format.manifest import KIND_AIRGAP_IMAGES, KIND_IMAGES
from k3bundle.installer.host import units
from k3bundle.installer.host.destination import HostDestination
from k3bundle.installer.host.install import note_pending, recover
from k3bundle.installer.host.layout import (
    DATA_DIR,
    PREVIOUS_DIR,
    RECORD_PATH,
    STATE_DIR,
    kept_copy,
    placeable_file,
)
from k3bundle.installer.host.lock import HostLock, locked
from k3bundle.installer.host.record import Record, RecordError, RecordFile, RecordLink
from k3bundle.installer.host.service import (
    Report,
    Runner,
    forget_commands,
    is_host_root,
    restart_commands,
    run_all,
    stop_commands,
    xtables_tools,
)
from k3bundle.installer.host.transaction import Change, Journal

# What upstream's uninstall script deletes beyond the files it placed (k3s-facts.md §3.11);
# DATA_DIR stands for the record's data dir.
PURGE_PATHS = ("/etc/rancher/k3s", "/run/k3s", "/run/flannel", DATA_DIR, "/var/lib/kubelet")
FORCE_HINT = "changed since k3bundle placed it; kept (--force removes it)"


def status(root: str, report: Report) -> Dict[str, Any]:
    """What is installed and whether every file on disk still matches the record.

    Read-only: it never recovers or changes anything; it says when a change is running now or
    was cut off (the next install, rollback, uninstall or `recover` finishes it).
    """
    dest = HostDestination(root)
    busy = HostLock(dest.fs).shared()
    interrupted = _interrupted(dest)
    record = dest.read_record()
    summary: Dict[str, Any] = {"installed": record is not None, "root": root}
    summary.update({k: v for k, v in (("running", busy), ("interrupted", interrupted)) if v})
    if busy:
        report(f"note: another k3bundle ({busy}) is changing {root} right now")
    elif interrupted:
        report(f"note: {interrupted}; 'k3bundle recover' (or the next install) finishes it")
    if record is None:
        return summary
    files = [_file_state(dest, item) for item in record.files]
    previous = dest.read_record(kept_copy(RECORD_PATH))
    summary.update(
        {
            "k3s_version": record.k3s_version,
            "bundle_id": record.bundle_id,
            "role": record.role,
            "arch": record.arch,
            "service": f"{units.service_name(record.role)}.service",
            "files": files,
            "intact": all(f["state"] == "ok" for f in files) and not busy and not interrupted,
            "previous": {"k3s_version": previous.k3s_version} if previous else None,
        }
    )
    return summary


def _interrupted(dest: HostDestination) -> Optional[str]:
    try:
        doc = Journal(dest.fs).pending()
    except K3BundleError as exc:
        return f"a journal k3bundle cannot trust is left: {exc.message}"
    if doc is None:
        return None
    if doc.get("state") == "staging":
        return "an install was interrupted before it committed (the old installation is intact)"
    return "a change was interrupted while it committed"


def recover_root(root: str, report: Report, wait: bool = True) -> Optional[str]:
    """Finish or undo an interrupted change under the root's lock; say which (None: nothing)."""
    dest = HostDestination(root)
    with locked(dest.fs, wait, report) as lock:
        journal = Journal(dest.fs, durable=is_host_root(root))
        done = journal.recover()
        lock.created.extend(journal.leftover_dirs)
        return done


def _file_state(dest: HostDestination, item: RecordFile) -> Dict[str, Any]:
    path = dest.path(item.path)
    state = "ok"
    if not path.is_file() or path.is_symlink():
        state = "missing"
    elif not dest.matches(item.path, item.size, item.sha256):
        state = "modified"
    elif path.lstat().st_mode & 0o7777 != item.mode:
        state = "mode changed"
    return {"path": item.path, "state": state}


def rollback(
    root: str,
    report: Report,
    runner: Runner,
    no_start: bool = False,
    force: bool = False,
    wait: bool = True,
) -> Dict[str, Any]:
    """Restore the previous generation exactly; the current one becomes the previous."""
    dest = HostDestination(root)
    with locked(dest.fs, wait, report) as lock:
        journal = Journal(dest.fs, durable=is_host_root(root))
        recover(journal, lock, report)
        current = dest.read_record()
        previous = dest.read_record(kept_copy(RECORD_PATH)) or _adopted(dest)
        if previous is None or (current is None and _is_adopted(previous)):
            raise InstallError(
                "there is no previous generation to roll back to",
                "k3bundle keeps one: the installation before the last install, upgrade or "
                "rollback.",
            )
        change = _rollback_change(dest, current, previous, force, report)
        journal.commit(change)
        _touch_restored_images(dest, (current, previous), change)
    restored = len([target for _, target in change.moves if target != RECORD_PATH])
    was = current.k3s_version if current is not None else None
    report(
        f"rolled back from k3s {was} to {previous.k3s_version} "
        f"({restored} files restored, {len(change.removals)} removed)"
    )
    unit = f"{units.service_name(previous.role)}.service"
    if is_host_root(root):
        run_all(restart_commands(unit, no_start, xtables=xtables_tools()), report, runner)
    return {"from": was, "to": previous.k3s_version}


def _touch_restored_images(
    dest: HostDestination, records: Tuple[Optional[Record], Record], change: Change
) -> None:
    """With k3s's .cache.json an archive k3s has seen is re-imported only when its mtime is
    newer: the restored archives (renamed back with their old mtimes) get a new one."""
    if not any(r is not None and r.options.get("image_cache") for r in records):
        return
    kinds = {f.path: f.kind for f in records[1].files}
    for _, target in change.moves:
        if kinds.get(target) in (KIND_AIRGAP_IMAGES, KIND_IMAGES):
            os.utime(dest.path(target), follow_symlinks=False)


ADOPTED = "the k3s installed by other means"


def _is_adopted(record: Record) -> bool:
    return record.bundle_id == "adopted"


def _adopted(dest: HostDestination) -> Optional[Record]:
    """The previous generation of an install made with --adopt: the foreign files it kept."""
    folder = dest.path(f"{PREVIOUS_DIR}/files")
    kept: List[str] = []
    for here, _, names in os.walk(folder):  # never into a linked folder
        inside = "/" + os.path.relpath(here, folder) if here != str(folder) else ""
        kept += [posixpath.normpath(f"{inside}/{n}") for n in names if _regular(Path(here, n))]
    if not kept:
        return None
    for path in kept:
        if not placeable_file(path):
            raise RecordError(
                f"{folder} holds {path}, which no install keeps",
                f"Move it away from {folder} and run again (nothing has been changed).",
            )
    agent = any(path.endswith("/k3s-agent.service") for path in kept)
    files = tuple(RecordFile(p, "0" * 64, 0, 0o644, "generated") for p in sorted(kept))
    return Record("adopted", ADOPTED, "", "agent" if agent else "server", files=files)


def _regular(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def _rollback_change(
    dest: HostDestination,
    current: Optional[Record],
    previous: Record,
    force: bool,
    report: Report,
) -> Change:
    wanted = {f.path: f for f in previous.files}
    moves = []
    for target, item in wanted.items():
        if not _is_adopted(previous) and _file_state(dest, item)["state"] == "ok":
            continue
        if not _regular(dest.path(kept_copy(target))):
            raise InstallError(
                f"the previous generation lacks its copy of {target}",
                "Reinstall the older bundle with 'k3bundle install --allow-downgrade' instead.",
            )
        moves.append((kept_copy(target), target))
    gone = [f for f in (current.files if current else ()) if f.path not in wanted]
    removals = _removable(dest, gone, force, report)
    # The record does not list itself; the previous generation kept its copy like any file. An
    # adopted k3s had no record: returning to it removes ours (kept, to roll forward again).
    if _is_adopted(previous):
        removals.append(RECORD_PATH)
    else:
        moves.append((kept_copy(RECORD_PATH), RECORD_PATH))
    old_links = {link.path: link.target for link in previous.links}
    unlinks = [
        x.path
        for x in (current.links if current else ())
        if x.path not in old_links and not _serves_adopted(x, wanted, previous)
    ]
    backups = [target for _, target in moves if os.path.lexists(dest.path(target))] + removals
    return Change(moves, removals, list(old_links.items()), unlinks, backups)


def _removable(dest: HostDestination, files: Any, force: bool, report: Report) -> List[str]:
    """The recorded files that may go: those still as placed (all of them with --force)."""
    removable = []
    for item in files:
        if not os.path.lexists(dest.path(item.path)):
            continue
        if force or dest.matches(item.path, item.size, item.sha256):
            removable.append(item.path)
        else:
            report(f"kept {item.path}: {FORCE_HINT}")
    return removable


def _serves_adopted(link: RecordLink, restored: Dict[str, Any], previous: Record) -> bool:
    """A link to a restored adopted file (kubectl -> k3s): the foreign install had it too."""
    target = posixpath.normpath(posixpath.join(posixpath.dirname(link.path), link.target))
    return _is_adopted(previous) and target in restored


def uninstall(
    root: str,
    report: Report,
    runner: Runner,
    purge: bool = False,
    dry_run: bool = False,
    force: bool = False,
    wait: bool = True,
) -> List[str]:
    """Stop the service and remove exactly what the record lists (and, with purge, k3s's data)."""
    dest = HostDestination(root)
    if dry_run:
        note_pending(dest, report)
        return _uninstall(dest, None, report, runner, purge, dry_run, force)
    with locked(dest.fs, wait, report) as lock:
        recover(Journal(dest.fs), lock, report)
        return _uninstall(dest, lock, report, runner, purge, dry_run, force)


def _uninstall(
    dest: HostDestination,
    lock: Optional[HostLock],
    report: Report,
    runner: Runner,
    purge: bool,
    dry_run: bool,
    force: bool,
) -> List[str]:
    root = str(dest.root)
    record = dest.read_record()
    if record is None:
        raise InstallError(
            f"nothing to uninstall: no k3bundle install record under {root}",
            "k3bundle removes only what it installed; use k3s-uninstall.sh for other installs.",
        )
    unit = f"{units.service_name(record.role)}.service"
    if is_host_root(root):
        run_all(stop_commands(unit), report, runner, dry_run)
    placed = [f for f in record.files if f.path != RECORD_PATH]
    files = _removable(dest, placed, force, report) + [
        p for p in record.ensured if os.path.lexists(dest.path(p))
    ]
    links = [x.path for x in record.links if force or dest.link_is_current(x)]
    removed = [*files, *links, RECORD_PATH]
    verb = "would remove " if dry_run else "removed "
    for path in removed:
        report(verb + path)
    if dry_run:
        for folder in sorted(record.folders, reverse=True):
            report(f"would remove {folder}/ if nothing else is left in it")
        return removed + (_purge(dest, report, dry_run, record.data_dir) if purge else [])
    Journal(dest.fs, durable=is_host_root(root)).commit(
        Change([], [*files, RECORD_PATH], [], links, [], keep_previous=False)
    )
    if is_host_root(root):
        run_all(forget_commands(unit), report, runner)
    if lock is not None:
        lock.release(remove=True)
    _remove_state_dir(dest)
    removed += _remove_empty_folders(dest, list(record.folders), report)
    if purge:
        removed += _purge(dest, report, dry_run, record.data_dir)
    return removed


def _remove_empty_folders(dest: HostDestination, folders: List[str], report: Report) -> List[str]:
    """The folders installs created, deepest first, each only when nothing else is in it."""
    removed = []
    for folder in sorted(folders, key=lambda f: f.count("/"), reverse=True):
        try:
            dest.path(folder).rmdir()
        except OSError:  # not empty (k3s's data, someone's files), a link, or already gone
            continue
        report(f"removed {folder}/")
        removed.append(folder)
    return removed


def _remove_state_dir(dest: HostDestination) -> None:
    folder = dest.path(STATE_DIR)
    shutil.rmtree(folder / "previous", ignore_errors=True)  # refuses a link: leaves it be
    with contextlib.suppress(OSError):  # not empty: something else lives there
        folder.rmdir()


def _purge(dest: HostDestination, report: Report, dry_run: bool, data_dir: str) -> List[str]:
    if is_host_root(str(dest.root)) and not dry_run:
        _run_killall(data_dir)
    removed = []
    for path in (data_dir if p == DATA_DIR else p for p in PURGE_PATHS):
        host = dest.path(path)
        if not os.path.lexists(host):
            continue
        if not dry_run:
            _remove_tree(host)
        report(("would purge " if dry_run else "purged ") + path)
        removed.append(path)
    return removed


def _remove_tree(path: Path) -> None:
    """rm -rf: a link is removed itself, never followed."""
    if path.is_symlink() or not path.is_dir():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def _run_killall(data_dir: str) -> None:
    # On a real host k3s's mounts and processes must go before its data; the killall script
    # (placed by the install, removed above) is regenerated to a temporary file for that.
    import subprocess  # here: every install imports this module, and start-up is its cost
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as script:
        script.write(units.render_killall(data_dir))
    try:
        subprocess.run(["sh", script.name], check=False, capture_output=True)
    finally:
        Path(script.name).unlink()


__all__: Tuple[str, ...] = ("recover_root", "rollback", "status", "uninstall")
