"""Resolving an install's settings: role, join target, k3s arguments, env file and config.yaml.

The options the user gave are merged over what the installed generation used (its record and env
file), then checked against what k3s and upstream's install.sh would accept. Pure: no I/O.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from k3bundle.installer.format.manifest import Manifest
from k3bundle.installer.host import node_rules, units, upstream_env
from k3bundle.installer.host.config import apply_layer, as_list
from k3bundle.installer.host.layout import BIN_DIR
from k3bundle.installer.host.options import HostSettings, Options
from k3bundle.installer.host.record import Record


def resolve_host(
    options: Options,
    manifest: Manifest,
    previous: Optional[Record] = None,
    previous_env: Optional[Mapping[str, str]] = None,
    bin_dir: str = BIN_DIR,
    previous_config: Optional[Mapping[str, Any]] = None,
) -> HostSettings:
    """Merge options over what the installed generation used, then check upstream's rules."""
    old = dict(previous.options) if previous is not None else {}
    role, server_url, exec_args = _role(options, old)
    env = _env(options, previous_env or {}, server_url)
    _check_role(role, server_url, env, options)
    service = units.service_name(role)
    upstream_env.check_context(options.environ, manifest.k3s_version, bin_dir, service)
    image_cache = options.image_cache or bool(old.get("image_cache"))
    remembered: Dict[str, Any] = {
        "role": role,
        "server_url": server_url,
        "cluster_init": options.cluster_init or bool(old.get("cluster_init")),
        "exec_args": list(exec_args),
        "node_labels": list(options.node_labels or old.get("node_labels") or []),
        "tls_sans": list(options.tls_sans or old.get("tls_sans") or []),
        "node_name": options.node_name or old.get("node_name"),
        "image_cache": image_cache,
        "bin_dir": bin_dir,
    }
    extra = ("--cluster-init",) if remembered["cluster_init"] and role == "server" else ()
    user = dict(options.config if options.config is not None else previous_config or {})
    config = merge_config(manifest.install.get("config") or {}, user, remembered)
    return HostSettings(
        role, bin_dir, (*extra, *exec_args), env, config, image_cache, remembered, user
    )


def _role(options: Options, old: Mapping[str, Any]) -> Tuple[str, Optional[str], Sequence[str]]:
    """Role, server to join and k3s arguments: flags, the environment, the installed ones."""
    role, server_url, args = upstream_env.choose_role(
        options.role, options.server_url, options.exec_args, options.environ, old.get("role")
    )
    role = role or old.get("role") or "server"
    remembered_url = old.get("server_url") if role == old.get("role") else None
    return (
        role,
        server_url or remembered_url,
        args if args is not None else old.get("exec_args", []),
    )


def _env(
    options: Options, previous_env: Mapping[str, str], server_url: Optional[str]
) -> Dict[str, str]:
    """The unit's env file: the installed generation's, the environment's over it, the flags'."""
    flags = {"K3S_TOKEN": options.token, "K3S_TOKEN_FILE": options.token_file}
    env = upstream_env.unit_env(previous_env, options.environ, flags, server_url)
    if options.node_name:  # --node-name goes to config.yaml; no other name may linger
        env.pop("K3S_NODE_NAME", None)
    return env


def _check_role(
    role: str, server_url: Optional[str], env: Mapping[str, str], options: Options
) -> None:
    """Refuse what k3s would refuse about this node, before anything is placed."""
    source = "--server" if options.server_url or not options.environ.get("K3S_URL") else "K3S_URL"
    node_rules.check_join(role, server_url, source, env)
    if options.cluster_init:
        node_rules.check_cluster_init(role, server_url, source)
    node_rules.check_labels(options.node_labels)
    node_rules.check_node_name(options.node_name, "--node-name")
    node_rules.check_node_name(options.environ.get("K3S_NODE_NAME") or None, "K3S_NODE_NAME")


def merge_config(
    bundle: Mapping[str, Any],
    user: Mapping[str, Any],
    remembered: Mapping[str, Any],
    admin: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """config.yaml, lowest first: the bundle's defaults, the admin's own keys, --config, then
    --node-label/--tls-san/--node-name. As k3s does across its files, a higher layer's `key`
    replaces and its `key+` appends, so only plain keys are written."""
    config: Dict[str, Any] = {}
    for layer in (bundle, admin or {}, user):
        apply_layer(config, layer)
    flags = {"node-label": remembered["node_labels"], "tls-san": remembered["tls_sans"]}
    for key, values in flags.items():
        if values:
            present = as_list(config.get(key))
            config[key] = [*present, *[v for v in values if v not in present]]
    if remembered.get("node_name"):
        config["node-name"] = remembered["node_name"]
    return config
