"""Checks before anything is written: versions, foreign installs, read-only bin dir, free space."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

from .errors import InstallError, UsageError
from .plan import BIN_DIR, SYSTEMD_DIR, Placement
from .progress import human_size

ALT_BIN_DIR = "/opt/bin"
_VERSION = re.compile(r"^v(\d+)\.(\d+)\.(\d+)(?:-(?:alpha|beta|rc)(\d+))?\+k3s(\d+)$")
_MARGIN = 16 * 1024 * 1024  # room left for k3s itself and the journal


def version_key(version: str) -> Tuple[int, ...]:
    """An ordering key for k3s tags: v1.31.4-rc1+k3s1 < v1.31.4+k3s1 < v1.31.4+k3s2."""
    match = _VERSION.match(version)
    if not match:
        return (0,)
    major, minor, patch, rc, k3s = match.groups()
    prerelease = (0, int(rc)) if rc else (1, 0)
    return (int(major), int(minor), int(patch), *prerelease, int(k3s))


def check_downgrade(previous: Optional[Mapping[str, Any]], version: str, allowed: bool) -> None:
    """Refuse to install an older k3s over a newer one unless --allow-downgrade."""
    installed = str((previous or {}).get("k3s_version") or "")
    if installed and version_key(version) < version_key(installed) and not allowed:
        raise UsageError(
            f"k3s {installed} is installed; this bundle carries the older {version}",
            "Pass --allow-downgrade to install it anyway (or 'k3bundle rollback' to return to "
            "the previous generation).",
        )


def check_foreign(root: Path, previous: Optional[Mapping[str, Any]], adopt: bool) -> None:
    """Refuse to overwrite a k3s that k3bundle did not install, unless --adopt."""
    if previous is not None or adopt:
        return
    found = [p for p in _foreign_files(root) if p.exists() or p.is_symlink()]
    if found:
        shown = ", ".join("/" + str(p.relative_to(root)) for p in found[:3])
        raise InstallError(
            f"k3s is already installed here by other means ({shown})",
            "Pass --adopt to take it over (its files are kept as the previous generation, so "
            "'k3bundle rollback' restores them), or remove it first with k3s-uninstall.sh.",
        )


def _foreign_files(root: Path) -> Iterable[Path]:
    yield root / BIN_DIR.lstrip("/") / "k3s"
    yield root / ALT_BIN_DIR.lstrip("/") / "k3s"
    units = root / SYSTEMD_DIR.lstrip("/")
    if units.is_dir():
        yield from sorted(units.glob("k3s*.service"))


def choose_bin_dir(root: Path, previous: Optional[Mapping[str, Any]]) -> str:
    """/usr/local/bin, or /opt/bin when /usr/local/bin is read-only and /opt/bin exists."""
    kept = ((previous or {}).get("options") or {}).get("bin_dir")
    if kept:
        return str(kept)
    folder = root / BIN_DIR.lstrip("/")
    if not folder.is_dir() or _writable(folder):
        return BIN_DIR
    if (root / ALT_BIN_DIR.lstrip("/")).is_dir():
        return ALT_BIN_DIR
    raise InstallError(
        f"{BIN_DIR} is read-only and {ALT_BIN_DIR} does not exist",
        f"Create {ALT_BIN_DIR} (and put it on PATH), or make {BIN_DIR} writable.",
    )


def _writable(folder: Path) -> bool:
    # As upstream's install.sh does: try to create a file (root ignores permission bits, so
    # only a real attempt tells a read-only or immutable folder).
    probe = folder / ".k3bundle-ro-test"
    try:
        probe.touch()
    except OSError:
        return False
    probe.unlink()
    return True


def check_space(root: Path, placements: Iterable[Placement]) -> None:
    """Refuse before writing when a filesystem lacks room for what goes on it."""
    needed: Dict[int, Tuple[Path, int]] = {}
    for placement in placements:
        folder = _existing_parent(root / placement.target.lstrip("/"))
        device = folder.stat().st_dev
        _, total = needed.get(device, (folder, 0))
        needed[device] = (folder, total + placement.size)
    for folder, total in needed.values():
        stats = os.statvfs(folder)
        free = stats.f_bavail * stats.f_frsize
        if total + _MARGIN > free:
            raise InstallError(
                f"not enough free space under {folder}: the install writes "
                f"{human_size(total)} there and {human_size(free)} is free",
                "Free some space (or grow the filesystem) and run the install again.",
            )


def _existing_parent(path: Path) -> Path:
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    return folder
