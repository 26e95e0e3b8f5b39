"""The admin's own config.yaml and registries.yaml keys, which k3bundle merges under its own.

Precedence, lowest first: the bundle's defaults, the admin's own file, --config, the flags
(--node-label, --tls-san, --node-name). Which keys are the admin's: on the first install, the
whole file that is already there (the record lists no such file); later, the admin's keys kept in
admin-config.json, plus every key the admin changed or added in the merged file since k3bundle
wrote it (its sha256 differs from the record's). A key the admin deleted from the admin's part
goes; a bundle key the admin deleted comes back (say it in --config to drop or change it).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, List, Mapping, Optional, Tuple

from k3bundle.installer.errors import InstallError, UsageError
from k3bundle.installer.host.destination import HostDestination
from k3bundle.installer.host.layout import ADMIN_CONFIG, CONFIG_DIR
from k3bundle.installer.host.record import Record
from k3bundle.installer.host.rootfs import read_file

__all__ = ["FILES", "admin_layers", "drop_ins", "merge_registries", "state_bytes"]

FILES = {"config": f"{CONFIG_DIR}/config.yaml", "registries": f"{CONFIG_DIR}/registries.yaml"}
DROP_INS = f"{CONFIG_DIR}/config.yaml.d"
MAX_CONFIG_BYTES = 4 * 1024 * 1024
Layers = Dict[str, Dict[str, Any]]  # "config"/"registries" -> {"admin": ..., "written": ...}


def admin_layers(dest: HostDestination, previous: Optional[Record]) -> Layers:
    """The admin's part of each file, and what k3bundle wrote there last."""
    stored = _stored(dest, previous)
    layers: Layers = {}
    for name, target in FILES.items():
        kept = stored.get(name) or {"admin": {}, "written": {}}
        data = read_file(dest.path(target), MAX_CONFIG_BYTES)
        placed = previous.file(target) if previous is not None else None
        if data is None:
            admin = dict(kept["admin"]) if placed is not None else {}
        elif placed is None:  # not k3bundle's: all of it is the admin's
            admin = read_admin_file(dest, target, data)
        elif hashlib.sha256(data).hexdigest() == placed.sha256:
            admin = dict(kept["admin"])
        else:
            admin = _edited(kept["admin"], kept["written"], read_admin_file(dest, target, data))
        layers[name] = {"admin": admin, "written": dict(kept["written"])}
    return layers


def _edited(
    admin: Mapping[str, Any], written: Mapping[str, Any], now: Mapping[str, Any]
) -> Dict[str, Any]:
    """The admin's keys after the admin edited the merged file: kept ones, changed, added."""
    missing = object()
    return {k: v for k, v in now.items() if k in admin or written.get(k, missing) != v}


def read_admin_file(dest: HostDestination, target: str, data: bytes) -> Dict[str, Any]:
    """An admin's k3s YAML file, refused (never overwritten) when the reader cannot read it."""
    from k3bundle.installer.yaml.subset import parse_yaml  # here: most hosts have no such file

    where = str(dest.path(target))
    try:
        return parse_yaml(data.decode("utf-8"), where)
    except UnicodeDecodeError:
        problem = f"{where} is not UTF-8 text"
    except UsageError as exc:
        problem = exc.message
    raise UsageError(
        f"cannot merge k3bundle's settings into {target}: {problem}",
        "k3bundle keeps an admin's keys and so must read the file; write it in plain YAML "
        "(or move it away) and run again. Nothing has been changed.",
    )


def drop_ins(dest: HostDestination) -> List[Tuple[str, Dict[str, Any]]]:
    """config.yaml.d/*.yaml and *.yml in the lexical order k3s reads them after config.yaml."""
    folder = dest.path(DROP_INS)
    try:
        names = sorted(n for n in folder.iterdir() if n.name.endswith((".yaml", ".yml")))
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for path in names:
        target = f"{DROP_INS}/{path.name}"
        data = read_file(path, MAX_CONFIG_BYTES)
        if data is not None:  # a link or not a regular file: k3bundle does not follow it
            found.append((target, read_admin_file(dest, target, data)))
    return found


def merge_registries(bundle: Mapping[str, Any], admin: Mapping[str, Any]) -> Dict[str, Any]:
    """registries.yaml: the admin's entry for a registry replaces the bundle's for it."""
    merged: Dict[str, Any] = {**bundle, **admin}
    for section in ("mirrors", "configs"):
        ours, theirs = bundle.get(section), admin.get(section)
        if isinstance(ours, Mapping) and isinstance(theirs, Mapping):
            merged[section] = {**ours, **theirs}
    return merged


def state_bytes(layers: Layers) -> bytes:
    """admin-config.json: may hold the admin's secrets (0600; the record keeps only its hash)."""
    return (json.dumps(layers, sort_keys=True, separators=(",", ":")) + "\n").encode()


def _stored(dest: HostDestination, previous: Optional[Record]) -> Layers:
    """admin-config.json, trusted only while it is what the record says k3bundle wrote."""
    placed = previous.file(ADMIN_CONFIG) if previous is not None else None
    if placed is None:
        return {}
    doc = dest.read_json(ADMIN_CONFIG)
    if doc is None or not dest.matches(ADMIN_CONFIG, placed.size, placed.sha256):
        raise InstallError(
            f"{dest.path(ADMIN_CONFIG)} is missing or changed since k3bundle wrote it",
            "It keeps which config keys are the admin's; restore it from a backup or from "
            "previous/, or move the record away and reinstall. Nothing has been changed.",
        )
    layers: Layers = {}
    for name in FILES:
        item = doc.get(name) or {"admin": {}, "written": {}}
        if not isinstance(item, dict) or not all(
            isinstance(item.get(k), dict) for k in ("admin", "written")
        ):
            raise InstallError(f"{dest.path(ADMIN_CONFIG)} has a malformed {name!r} entry")
        layers[name] = item
    return layers
