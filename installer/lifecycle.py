"""After the install: status, rollback to the previous generation, uninstall."""

from __future__ import annotations

import contextlib
import posixpath
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from . import units
from .destination import HostDestination
from .errors import InstallError
from .hashing import sha256_file
from .install import recover
from .plan import DATA_DIR, RECORD_PATH
from .service import Report, Runner, is_host_root, restart_commands, run_all, stop_commands
from .transaction import PREVIOUS_DIR, STATE_DIR, Change, Journal, previous_file

# What upstream's uninstall script deletes beyond the files it placed (k3s-facts.md §3.11).
PURGE_PATHS = ("/etc/rancher/k3s", "/run/k3s", "/run/flannel", DATA_DIR, "/var/lib/kubelet")


def status(root: str, report: Report) -> Dict[str, Any]:
    """What is installed and whether every file on disk still matches the record."""
    recover(Journal(root), report)
    dest = HostDestination(root)
    record = dest.read_json(RECORD_PATH)
    if record is None:
        return {"installed": False, "root": root}
    files = [_file_state(dest, item) for item in record.get("files", [])]
    previous = dest.read_json(f"{PREVIOUS_DIR}/files/{RECORD_PATH.lstrip('/')}")
    return {
        "installed": True,
        "root": root,
        "k3s_version": record.get("k3s_version"),
        "bundle_id": record.get("bundle_id"),
        "role": record.get("role"),
        "arch": record.get("arch"),
        "service": f"{units.service_name(str(record.get('role') or 'server'))}.service",
        "files": files,
        "intact": all(f["state"] == "ok" for f in files),
        "previous": {"k3s_version": previous.get("k3s_version")} if previous else None,
    }


def _file_state(dest: HostDestination, item: Mapping[str, Any]) -> Dict[str, Any]:
    path = dest.path(str(item["path"]))
    state = "ok"
    if not path.is_file() or path.is_symlink():
        state = "missing"
    elif path.stat().st_size != item.get("size") or sha256_file(path) != item.get("sha256"):
        state = "modified"
    elif f"{path.stat().st_mode & 0o7777:04o}" != item.get("mode"):
        state = "mode changed"
    return {"path": item["path"], "state": state}


def rollback(root: str, report: Report, runner: Runner, no_start: bool = False) -> Dict[str, Any]:
    """Restore the previous generation exactly; the current one becomes the previous."""
    journal = Journal(root, durable=is_host_root(root))
    recover(journal, report)
    dest = HostDestination(root)
    current = dest.read_json(RECORD_PATH)
    previous = dest.read_json(f"{PREVIOUS_DIR}/files/{RECORD_PATH.lstrip('/')}") or _adopted(dest)
    if previous is None or (current is None and previous.get("adopted")):
        raise InstallError(
            "there is no previous generation to roll back to",
            "k3bundle keeps one: the installation before the last install, upgrade or rollback.",
        )
    current = current or {}  # rolling forward again after returning to an adopted k3s
    change = _rollback_change(dest, current, previous)
    journal.commit(change)
    restored = len([target for _, target in change.moves if target != RECORD_PATH])
    report(
        f"rolled back from k3s {current.get('k3s_version')} to {previous.get('k3s_version')} "
        f"({restored} files restored, {len(change.removals)} removed)"
    )
    unit = f"{units.service_name(str(previous.get('role') or 'server'))}.service"
    if is_host_root(root):
        run_all(restart_commands(unit, no_start), report, runner)
    return {"from": current.get("k3s_version"), "to": previous.get("k3s_version")}


def _adopted(dest: HostDestination) -> Optional[Dict[str, Any]]:
    """The previous generation of an install made with --adopt: the foreign files it kept."""
    folder = dest.path(f"{PREVIOUS_DIR}/files")
    kept = sorted("/" + str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    if not kept:
        return None
    agent = any(path.endswith("/k3s-agent.service") for path in kept)
    return {
        "adopted": True,
        "k3s_version": "the k3s installed by other means",
        "role": "agent" if agent else "server",
        "files": [{"path": path} for path in kept],  # no hash: always restored
        "links": [],
    }


def _rollback_change(
    dest: HostDestination, current: Mapping[str, Any], previous: Mapping[str, Any]
) -> Change:
    wanted = {str(f["path"]): f for f in previous.get("files", [])}
    moves = []
    for target, item in wanted.items():
        if _file_state(dest, item)["state"] == "ok":
            continue
        kept = previous_file(str(dest.root), target)
        if not kept.is_file():
            raise InstallError(
                f"the previous generation lacks its copy of {target}",
                "Reinstall the older bundle with 'k3bundle install --allow-downgrade' instead.",
            )
        moves.append((str(kept), target))
    removals = [str(f["path"]) for f in current.get("files", []) if str(f["path"]) not in wanted]
    # The record does not list itself; the previous generation kept its copy like any file. An
    # adopted k3s had no record: returning to it removes ours (kept, to roll forward again).
    if previous.get("adopted"):
        removals.append(RECORD_PATH)
    else:
        moves.append((str(previous_file(str(dest.root), RECORD_PATH)), RECORD_PATH))
    old_links = {str(link["path"]): str(link["target"]) for link in previous.get("links", [])}
    unlinks = [
        str(x["path"])
        for x in current.get("links", [])
        if str(x["path"]) not in old_links and not _serves_adopted(x, wanted, previous)
    ]
    backups = [target for _, target in moves if dest.path(target).exists()] + removals
    return Change(moves, removals, list(old_links.items()), unlinks, backups)


def _serves_adopted(
    link: Mapping[str, Any], restored: Mapping[str, Any], previous: Mapping[str, Any]
) -> bool:
    """A link to a restored adopted file (kubectl -> k3s): the foreign install had it too."""
    path = str(link["path"])
    target = posixpath.normpath(posixpath.join(posixpath.dirname(path), str(link["target"])))
    return bool(previous.get("adopted")) and target in restored


def uninstall(
    root: str, report: Report, runner: Runner, purge: bool = False, dry_run: bool = False
) -> List[str]:
    """Stop the service and remove exactly what the record lists (and, with purge, k3s's data)."""
    journal = Journal(root, durable=is_host_root(root))
    recover(journal, report, dry_run)
    dest = HostDestination(root)
    record = dest.read_json(RECORD_PATH)
    if record is None:
        raise InstallError(
            f"nothing to uninstall: no k3bundle install record under {root}",
            "k3bundle removes only what it installed; use k3s-uninstall.sh for other installs.",
        )
    unit = f"{units.service_name(str(record.get('role') or 'server'))}.service"
    if is_host_root(root):
        run_all(stop_commands(unit), report, runner, dry_run)
    files = [str(f["path"]) for f in record.get("files", []) if str(f["path"]) != RECORD_PATH]
    files += [str(p) for p in record.get("ensured", [])]
    links = [str(link["path"]) for link in record.get("links", [])]
    removed = [*files, *links, RECORD_PATH]
    for path in removed:
        report(("would remove " if dry_run else "removed ") + path)
    folders = [str(f) for f in record.get("folders", []) if isinstance(f, str)]
    if dry_run:
        for folder in sorted(folders, reverse=True):
            report(f"would remove {folder}/ if nothing else is left in it")
        return removed
    journal.commit(Change([], [*files, RECORD_PATH], [], links, [], keep_previous=False))
    _remove_state_dir(dest)
    removed += _remove_empty_folders(dest, folders, report)
    if purge:
        removed += _purge(dest, report)
    return removed


def _remove_empty_folders(dest: HostDestination, folders: List[str], report: Report) -> List[str]:
    """The folders installs created, deepest first, each only when nothing else is in it."""
    removed = []
    for folder in sorted(folders, key=lambda f: f.count("/"), reverse=True):
        try:
            dest.path(folder).rmdir()
        except OSError:  # not empty (k3s's data, someone's files) or already gone
            continue
        report(f"removed {folder}/")
        removed.append(folder)
    return removed


def _remove_state_dir(dest: HostDestination) -> None:
    folder = dest.path(STATE_DIR)
    shutil.rmtree(folder / "previous", ignore_errors=True)
    with contextlib.suppress(OSError):  # not empty: something else lives there
        folder.rmdir()


def _purge(dest: HostDestination, report: Report) -> List[str]:
    if is_host_root(str(dest.root)):
        _run_killall(dest)
    removed = []
    for path in PURGE_PATHS:
        host = dest.path(path)
        if host.exists():
            shutil.rmtree(host, ignore_errors=True)
            report(f"purged {path}")
            removed.append(path)
    return removed


def _run_killall(dest: HostDestination) -> None:
    # On a real host k3s's mounts and processes must go before its data; the killall script
    # (placed by the install, removed above) is regenerated to a temporary file for that.
    with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as script:
        script.write(units.render_killall(DATA_DIR))
    try:
        subprocess.run(["sh", script.name], check=False, capture_output=True)
    finally:
        Path(script.name).unlink()
