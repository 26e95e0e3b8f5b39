"""What one install was asked for (Options, from the CLI) and what it resolved (HostSettings)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Tuple

from k3bundle.installer.host.layout import BIN_DIR, DATA_DIR


@dataclass(frozen=True)
class Options:
    """Everything the user chose for one install, built by the CLI."""

    bundle: str
    root: str = "/"
    pubkeys: Tuple[str, ...] = ()
    allow_unsigned: bool = False
    arch: Optional[str] = None
    dry_run: bool = False
    no_start: bool = False
    skip_enable: bool = False  # INSTALL_K3S_SKIP_ENABLE=true: no enable, no start
    force_restart: bool = False  # INSTALL_K3S_FORCE_RESTART=true: restart even if unchanged
    symlink: Optional[str] = None  # INSTALL_K3S_SYMLINK: skip, force, or None (when absent)
    token: Optional[str] = None
    token_file: Optional[str] = None
    exec_args: Optional[Tuple[str, ...]] = None  # None: as the installed generation had it
    role: Optional[str] = None  # None: as installed, else server
    server_url: Optional[str] = None
    cluster_init: bool = False
    config: Optional[Mapping[str, Any]] = None  # --config FILE, parsed
    node_labels: Tuple[str, ...] = ()
    tls_sans: Tuple[str, ...] = ()
    node_name: Optional[str] = None
    image_cache: bool = False
    allow_downgrade: bool = False
    adopt: bool = False
    sync: bool = False  # flush every written file to disk before the commit
    wait: bool = True  # another k3bundle holds the root's lock: wait for it (else refuse)
    environ: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HostSettings:
    """What this install will write, resolved from the options, the bundle and the host."""

    role: str = "server"
    bin_dir: str = BIN_DIR
    exec_args: Tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    image_cache: bool = False
    remembered: Mapping[str, Any] = field(default_factory=dict)  # non-secret, for the record
    user_config: Mapping[str, Any] = field(default_factory=dict)  # --config, kept for upgrades
    data_dir: str = DATA_DIR  # k3s's data dir, as k3s will see it (host_config.py)
    registries: Optional[Mapping[str, Any]] = None  # merged with the admin's; None: the bundle's
    admin_state: Optional[bytes] = None  # admin-config.json (admin_config.py)
