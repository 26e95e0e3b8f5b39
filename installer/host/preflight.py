"""Checks before anything is written: versions, foreign installs, read-only bin dir, free space."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, Iterable, Optional, Tuple

from k3bundle.installer.errors import InstallError, UsageError
from k3bundle.installer.host.layout import ALT_BIN_DIR, BIN_DIR, STAGED_SUFFIX, SYSTEMD_DIR
from k3bundle.installer.host.plan import Placement
from k3bundle.installer.host.record import Record
from k3bundle.installer.host.rootfs import RootFS, open_new, remove_file
from k3bundle.installer.progress import human_size

__all__ = ["ALT_BIN_DIR", "check_downgrade", "check_foreign", "check_space", "choose_bin_dir"]
_VERSION = re.compile(r"v([0-9]+)\.([0-9]+)\.([0-9]+)(?:-(?:alpha|beta|rc)([0-9]+))?\+k3s([0-9]+)")
_MARGIN = 16 * 1024 * 1024  # room left for k3s itself and the journal


def version_key(version: str) -> Tuple[int, ...]:
    """An ordering key for k3s tags: v1.31.4-rc1+k3s1 < v1.31.4+k3s1 < v1.31.4+k3s2."""
    match = _VERSION.fullmatch(version)
    if not match:
        return (0,)
    major, minor, patch, rc, k3s = match.groups()
    prerelease = (0, int(rc)) if rc else (1, 0)
    return (int(major), int(minor), int(patch), *prerelease, int(k3s))


def check_downgrade(previous: Optional[Record], version: str, allowed: bool) -> None:
    """Refuse to install an older k3s over a newer one unless --allow-downgrade."""
    installed = previous.k3s_version if previous is not None else ""
    if installed and version_key(version) < version_key(installed) and not allowed:
        raise UsageError(
            f"k3s {installed} is installed; this bundle carries the older {version}",
            "Pass --allow-downgrade to install it anyway (or 'k3bundle rollback' to return to "
            "the previous generation).",
        )


def check_foreign(fs: RootFS, previous: Optional[Record], adopt: bool) -> None:
    """Refuse to overwrite a k3s that k3bundle did not install, unless --adopt."""
    if previous is not None or adopt:
        return
    found = [p for p in _foreign_files(fs) if p.is_file() or p.is_symlink()]
    if found:
        shown = ", ".join(fs.shown(p) for p in found[:3])
        raise InstallError(
            f"k3s is already installed here by other means ({shown})",
            "Pass --adopt to take it over (its files are kept as the previous generation, so "
            "'k3bundle rollback' restores them), or remove it first with k3s-uninstall.sh.",
        )


def _foreign_files(fs: RootFS) -> Iterable[Path]:
    yield fs.host(f"{BIN_DIR}/k3s")
    yield fs.host(f"{ALT_BIN_DIR}/k3s")
    units = fs.folder(SYSTEMD_DIR)
    if units.is_dir():
        yield from sorted(units.glob("k3s*.service"))


def choose_bin_dir(fs: RootFS, previous: Optional[Record], dry_run: bool = False) -> str:
    """/usr/local/bin, or /opt/bin when /usr/local/bin is read-only and /opt/bin exists."""
    if previous is not None and previous.bin_dir:
        return previous.bin_dir  # the record's model admits only BIN_DIR and ALT_BIN_DIR
    folder = fs.folder(BIN_DIR)
    if not folder.is_dir() or _writable(folder, dry_run):
        return BIN_DIR
    if fs.folder(ALT_BIN_DIR).is_dir():
        return ALT_BIN_DIR
    raise InstallError(
        f"{BIN_DIR} is read-only and {ALT_BIN_DIR} does not exist",
        f"Create {ALT_BIN_DIR} (and put it on PATH), or make {BIN_DIR} writable.",
    )


def _writable(folder: Path, dry_run: bool) -> bool:
    # As upstream's install.sh does: try to create a file (root ignores permission bits, so
    # only a real attempt tells a read-only or immutable folder). A dry run changes nothing,
    # so it asks the kernel instead.
    if dry_run:
        return os.access(folder, os.W_OK)
    probe = folder / f".k3bundle-ro-test{STAGED_SUFFIX}"
    try:
        fd = open_new(probe, 0o600)
    except InstallError:
        return False
    os.close(fd)
    remove_file(probe)
    return True


def check_space(fs: RootFS, placements: Iterable[Placement]) -> None:
    """Refuse before writing when a filesystem lacks room for what goes on it."""
    needed: Dict[int, Tuple[Path, int]] = {}
    for placement in placements:
        folder = _existing_parent(fs.host(placement.target))
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
