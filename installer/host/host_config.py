"""The host's own k3s settings: k3s's data dir as k3s will see it, and the admin's config files.

k3s takes its data dir from `--data-dir`/`-d` in its arguments, else from its config files,
else from K3S_DATA_DIR in the unit's environment, else /var/lib/rancher/k3s: every file
k3bundle places for k3s (images, charts, HelmChart manifests, the image cache) goes there.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from k3bundle.installer.errors import UsageError
from k3bundle.installer.format.manifest import Manifest
from k3bundle.installer.host import admin_config
from k3bundle.installer.host.admin_config import FILES
from k3bundle.installer.host.config import apply_layer
from k3bundle.installer.host.destination import HostDestination
from k3bundle.installer.host.layout import DATA_DIR, data_dir_problem
from k3bundle.installer.host.plan import HostSettings, merge_config
from k3bundle.installer.host.record import Record
from k3bundle.installer.host.rootfs import read_file
from k3bundle.installer.host.service import Report

_FLAG_KEYS = ("node-label", "tls-san", "node-name")
# Values never printed: tokens, passwords, keys, and endpoints that may carry a password.
_SECRET_WORDS = ("token", "password", "secret", "key", "datastore-endpoint")


def settle(
    host: HostSettings,
    manifest: Manifest,
    dest: HostDestination,
    previous: Optional[Record],
    report: Report,
) -> HostSettings:
    """`host` with the admin's own config keys merged in and k3s's data dir decided."""
    layers = admin_config.admin_layers(dest, previous)
    install = manifest.install
    config = merge_config(
        install.get("config") or {}, host.user_config, host.remembered, layers["config"]["admin"]
    )
    registries = admin_config.merge_registries(
        install.get("registries") or {}, layers["registries"]["admin"]
    )
    data_dir = k3s_data_dir(_as_k3s_reads(dest, config, host, report), host.env, host.exec_args)
    _say_changes(dest, config, report)
    written = {
        "config": config if _ours(host.config, FILES["config"], previous) else {},
        "registries": registries
        if _ours(install.get("registries"), FILES["registries"], previous)
        else {},
    }
    for name, doc in written.items():
        layers[name]["written"] = doc
    state = admin_config.state_bytes(layers) if any(written.values()) else None
    _say_data_dir(previous, data_dir, report)
    return dataclasses.replace(
        host,
        config=written["config"],
        registries=written["registries"],
        admin_state=state,
        data_dir=data_dir,
    )


def _ours(own: Any, target: str, previous: Optional[Record]) -> bool:
    """k3bundle writes the file when it has settings of its own, or wrote it before."""
    return bool(own) or (previous is not None and previous.file(target) is not None)


def _as_k3s_reads(
    dest: HostDestination, config: Mapping[str, Any], host: HostSettings, report: Report
) -> Dict[str, Any]:
    """config.yaml and then its drop-ins, as k3s merges them; say where a drop-in overrides
    a setting k3bundle was asked for."""
    asked = {*host.user_config, *(k for k in _FLAG_KEYS if host.config.get(k))}
    effective = dict(config)
    for target, layer in admin_config.drop_ins(dest):
        for key in sorted(k for k in layer if k in asked):
            report(f"note: {target} sets {key} after config.yaml; k3s uses its value")
        apply_layer(effective, layer)
    return effective


def _say_changes(dest: HostDestination, config: Mapping[str, Any], report: Report) -> None:
    """Key by key, how config.yaml changes (secret values hidden)."""
    target = FILES["config"]
    data = read_file(dest.path(target), admin_config.MAX_CONFIG_BYTES)
    old = admin_config.read_admin_file(dest, target, data) if data is not None else {}
    for key in sorted({*old, *config}):
        before, after = _shown(key, old.get(key)), _shown(key, config.get(key))
        if key not in config:
            report(f"{target}: - {key}: {before}")
        elif key not in old:
            report(f"{target}: + {key}: {after}")
        elif old[key] != config[key]:
            report(f"{target}: ~ {key}: {before} -> {after}")


def _shown(key: str, value: Any) -> str:
    if any(word in key for word in _SECRET_WORDS):
        return "(hidden)"
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _say_data_dir(previous: Optional[Record], data_dir: str, report: Report) -> None:
    if previous is not None and previous.data_dir != data_dir:
        report(
            f"note: k3s's data dir changes from {previous.data_dir} to {data_dir}; k3s keeps "
            f"its cluster state in {previous.data_dir} and starts anew in {data_dir}"
        )


def k3s_data_dir(
    config: Mapping[str, Any], env: Mapping[str, str], exec_args: Sequence[str]
) -> str:
    """The data dir k3s will use: its arguments, config.yaml, K3S_DATA_DIR, the default."""
    found = _from_args(exec_args)
    if found is None and config.get("data-dir") is not None:
        found = (config["data-dir"], "data-dir in config.yaml")
    if found is None and env.get("K3S_DATA_DIR"):
        found = (env["K3S_DATA_DIR"], "K3S_DATA_DIR")
    value, source = found or (DATA_DIR, "the default")
    problem = "it is not a text" if not isinstance(value, str) else data_dir_problem(value)
    if problem:
        raise UsageError(
            f"k3s's data dir {value!r} (from {source}) cannot be used: {problem}",
            "Give an absolute, normalised path outside /etc and /var/lib/k3bundle, "
            "such as /srv/k3s.",
        )
    return str(value)


def _from_args(args: Sequence[str]) -> Optional[Tuple[Any, str]]:
    """The last --data-dir / -d in k3s's arguments (urfave/cli: the last one wins)."""
    found = None
    for i, arg in enumerate(args):
        name, equals, value = arg.partition("=")
        if name.lstrip("-") not in ("data-dir", "d") or not name.startswith("-"):
            continue
        if not equals:
            value = args[i + 1] if i + 1 < len(args) else ""
        found = (value, f"{name} in the k3s arguments")
    return found
