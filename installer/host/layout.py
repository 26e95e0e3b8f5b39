"""Where k3bundle puts things on a host, and which paths it could ever have placed.

The one definition of the host layout and of k3bundle's state paths. State files (the install
record, the journal, the kept previous generation) are data, not authority: before a path read
from one of them is removed, renamed or written, `placeable_file`, `placeable_link` and
`placeable_folder` check that an install could have put it there.
"""

from __future__ import annotations

import posixpath
import re
from typing import FrozenSet, Optional

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
ADMIN_CONFIG = f"{STATE_DIR}/admin-config.json"  # the admin's own config keys, merged under ours
PREVIOUS_DIR = f"{STATE_DIR}/previous"
NEXT_PREVIOUS_DIR = f"{STATE_DIR}/previous.new"

SERVICES = ("k3s", "k3s-agent")
LINKED_COMMANDS = ("kubectl", "crictl", "ctr")
STAGED_SUFFIX = ".k3bundle-tmp"  # manifest paths may not contain it (manifest.py refuses them)

_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,254}")
# Where k3s looks inside its data dir (--data-dir / K3S_DATA_DIR): images, charts, manifests.
_PAYLOAD_SUBDIRS = ("/agent/images", "/server/static/charts", "/server/manifests")
_CACHE_NAME = ".cache.json"
# Never a data dir: k3bundle's own state and the config folders (files there are not payload).
_NOT_DATA_DIRS = ("/etc", STATE_DIR)
# For journals, which do not name the data dir: payload paths under any allowed data dir.
ANY_DATA_DIR = ""


def images_dir(data_dir: str = DATA_DIR) -> str:
    """The folder k3s imports image archives from."""
    return data_dir + _PAYLOAD_SUBDIRS[0]


def charts_dir(data_dir: str = DATA_DIR) -> str:
    """The folder k3s serves chart archives from (/static/charts)."""
    return data_dir + _PAYLOAD_SUBDIRS[1]


def manifests_dir(data_dir: str = DATA_DIR) -> str:
    """The folder k3s auto-deploys manifests from."""
    return data_dir + _PAYLOAD_SUBDIRS[2]


def image_cache(data_dir: str = DATA_DIR) -> str:
    """k3s's record of imported archives (it reads and rewrites it only when it exists)."""
    return f"{images_dir(data_dir)}/{_CACHE_NAME}"


def data_dir_problem(path: str) -> Optional[str]:
    """Why `path` cannot be k3s's data dir for k3bundle, or None when it can."""
    if not is_normal_path(path):
        return "it is not an absolute, normalised path"
    if path == "/":
        return "it is the root folder"
    inside = [f for f in _NOT_DATA_DIRS if path == f or path.startswith(f + "/")]
    if inside:
        return f"it is inside {inside[0]}"
    return None


def _fixed_files() -> FrozenSet[str]:
    files = {f"{CONFIG_DIR}/config.yaml", f"{CONFIG_DIR}/registries.yaml"}
    files |= {RECORD_PATH, USER_CONFIG, ADMIN_CONFIG}
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


def placeable_file(path: str, data_dir: str = DATA_DIR) -> bool:
    """True when some install with k3s's data in `data_dir` could have placed a file at `path`
    (ANY_DATA_DIR: with any data dir k3bundle accepts)."""
    if not is_normal_path(path):
        return False
    if path in _FIXED_FILES:
        return True
    folder, name = posixpath.split(path)
    home = _data_dir_of(folder, data_dir)
    if home is None:
        return False
    if name == _CACHE_NAME:
        return folder == images_dir(home)
    return bool(_NAME.fullmatch(name)) and STAGED_SUFFIX not in name


def _data_dir_of(folder: str, data_dir: str) -> Optional[str]:
    """The data dir whose payload folder `folder` is, if it is one (and allowed)."""
    for sub in _PAYLOAD_SUBDIRS:
        if folder.endswith(sub):
            home = folder[: -len(sub)]
            if home == data_dir or (data_dir == ANY_DATA_DIR and data_dir_problem(home) is None):
                return home
    return None


def placeable_link(path: str, target: str) -> bool:
    """True when some install could have made the symlink `path` -> `target`."""
    folder, name = posixpath.split(path)
    if folder in BIN_DIRS and name in LINKED_COMMANDS:
        return target == "k3s"
    units = {f"{service}.service" for service in SERVICES}
    return folder == WANTS_DIR and name in units and target == f"{SYSTEMD_DIR}/{name}"


def placeable_folder(path: str, data_dir: str = DATA_DIR) -> bool:
    """True for a folder an install with k3s's data in `data_dir` may create: one on the way
    to a place files go."""
    if not is_normal_path(path) or path == "/":
        return False
    places = [*BIN_DIRS, WANTS_DIR, CONFIG_DIR, STATE_DIR]
    places += [data_dir + sub for sub in _PAYLOAD_SUBDIRS] if data_dir else []
    return any(path == place or place.startswith(path + "/") for place in places)


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


# k3s makes its server folders 0700 (os.MkdirAll(..., 0700)) and never tightens existing ones.
_PRIVATE_FOLDER = re.compile(r".*/server(/static(/charts)?|/manifests)?\Z")


def folder_mode(path: str) -> int:
    """The mode of a folder k3bundle creates: 0700 for k3s's server folders (in any data dir)
    and k3bundle's state dir, which hold manifests and records; 0755 otherwise."""
    private = path == STATE_DIR or path.startswith(STATE_DIR + "/")
    return 0o700 if private or _PRIVATE_FOLDER.match(path) else 0o755
