"""Where k3bundle puts things on a host, and which paths it could ever have placed.

The one definition of the host layout and of k3bundle's state paths. State files (the install
record, the journal, the kept previous generation) are data, not authority: before a path read
from one of them is removed, renamed or written, `placeable_file`, `placeable_link` and
`placeable_folder` check that an install could have put it there.
"""

from __future__ import annotations

import posixpath
import re
from typing import FrozenSet, Tuple

BIN_DIR = "/usr/local/bin"
ALT_BIN_DIR = "/opt/bin"  # when /usr/local/bin is read-only, as upstream's install.sh does
BIN_DIRS = (BIN_DIR, ALT_BIN_DIR)
SYSTEMD_DIR = "/etc/systemd/system"
WANTS_DIR = f"{SYSTEMD_DIR}/multi-user.target.wants"
DATA_DIR = "/var/lib/rancher/k3s"
CONFIG_DIR = "/etc/rancher/k3s"
IMAGES_DIR = f"{DATA_DIR}/agent/images"
CHARTS_DIR = f"{DATA_DIR}/server/static/charts"
MANIFESTS_DIR = f"{DATA_DIR}/server/manifests"
IMAGE_CACHE = f"{IMAGES_DIR}/.cache.json"

STATE_DIR = "/var/lib/k3bundle"
RECORD_PATH = f"{STATE_DIR}/record.json"
JOURNAL_PATH = f"{STATE_DIR}/journal.json"
LOCK_PATH = f"{STATE_DIR}/lock"
USER_CONFIG = f"{STATE_DIR}/config-override.json"
PREVIOUS_DIR = f"{STATE_DIR}/previous"
NEXT_PREVIOUS_DIR = f"{STATE_DIR}/previous.new"

SERVICES = ("k3s", "k3s-agent")
LINKED_COMMANDS = ("kubectl", "crictl", "ctr")
STAGED_SUFFIX = ".k3bundle-tmp"  # manifest paths may not contain it (manifest.py refuses them)

_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,254}")
_PAYLOAD_DIRS = (IMAGES_DIR, CHARTS_DIR, MANIFESTS_DIR)


def _fixed_files() -> FrozenSet[str]:
    files = {f"{CONFIG_DIR}/config.yaml", f"{CONFIG_DIR}/registries.yaml", IMAGE_CACHE}
    files |= {RECORD_PATH, USER_CONFIG}
    for service in SERVICES:
        files |= {f"{SYSTEMD_DIR}/{service}.service", f"{SYSTEMD_DIR}/{service}.service.env"}
    for folder in BIN_DIRS:
        scripts = ("k3s", "k3s-killall.sh", "k3s-uninstall.sh", "k3s-agent-uninstall.sh")
        files |= {f"{folder}/{name}" for name in scripts}
    return frozenset(files)


_FIXED_FILES = _fixed_files()


def is_normal_path(path: str) -> bool:
    """An absolute, normalised path without empty, '.', '..' or control-character parts."""
    return (
        path.startswith("/")
        and posixpath.normpath(path) == path
        and not path.startswith("//")
        and all(" " <= char != "\x7f" for char in path)
    )


def placeable_file(path: str) -> bool:
    """True when some install could have placed a file at `path`."""
    if not is_normal_path(path):
        return False
    if path in _FIXED_FILES:
        return True
    folder, name = posixpath.split(path)
    return folder in _PAYLOAD_DIRS and bool(_NAME.fullmatch(name)) and STAGED_SUFFIX not in name


def placeable_link(path: str, target: str) -> bool:
    """True when some install could have made the symlink `path` -> `target`."""
    folder, name = posixpath.split(path)
    if folder in BIN_DIRS and name in LINKED_COMMANDS:
        return target == "k3s"
    units = {f"{service}.service" for service in SERVICES}
    return folder == WANTS_DIR and name in units and target == f"{SYSTEMD_DIR}/{name}"


def placeable_folder(path: str) -> bool:
    """True for a folder an install may create: one on the way to a place files go."""
    if not is_normal_path(path) or path == "/":
        return False
    return any(path == place or place.startswith(path + "/") for place in _folders())


def _folders() -> Tuple[str, ...]:
    return (*BIN_DIRS, WANTS_DIR, CONFIG_DIR, *_PAYLOAD_DIRS, STATE_DIR)


def staged_name(path: str) -> str:
    """The temporary name a file is written under until the commit renames it to `path`."""
    folder, name = posixpath.split(path)
    return f"{folder}/.{name}{STAGED_SUFFIX}"


def kept_copy(path: str) -> str:
    """Where the previous generation keeps its copy of the file at `path`."""
    return f"{PREVIOUS_DIR}/files{path}"


def incoming_copy(path: str) -> str:
    """Where a commit keeps the copy of `path` it replaces, until it becomes the previous one."""
    return f"{NEXT_PREVIOUS_DIR}/files{path}"
