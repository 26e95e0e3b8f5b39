"""The install command's words and environment turned into Options, and its closing lines.

install.sh's habits arrive here: `--exec "--disable=traefik"` (a value argparse would take for an
option), INSTALL_K3S_* switches and a K3S_TOKEN_FILE. Flags beat the environment.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, List, Mapping, Optional

from k3bundle.installer.errors import UsageError
from k3bundle.installer.host.plan import Options
from k3bundle.installer.host.service import is_host_root
from k3bundle.installer.host.upstream_env import settings, split_words

DEFAULT_KUBECONFIG = "/etc/rancher/k3s/k3s.yaml"


def install_options(args: argparse.Namespace, environ: Mapping[str, str]) -> Options:
    """The Options of one install: the flags, then install.sh's variables where none was given."""
    upstream = settings(environ)
    exec_args = upstream.exec_args
    if args.exec_args is not None:
        exec_args = split_words(args.exec_args, "--exec")
    _check_token_file(args.root, args.token_file, "--token-file")
    if not (args.token or args.token_file):
        _check_token_file(args.root, environ.get("K3S_TOKEN_FILE") or None, "K3S_TOKEN_FILE")
    return Options(
        bundle=args.bundle,
        root=args.root,
        pubkeys=tuple(args.pubkey),
        allow_unsigned=args.allow_unsigned,
        arch=args.arch,
        dry_run=args.dry_run,
        no_start=args.no_start or upstream.skip_start,
        skip_enable=upstream.skip_enable,
        force_restart=upstream.force_restart,
        symlink=upstream.symlink,
        token=args.token,
        token_file=args.token_file,
        exec_args=exec_args,
        role=args.role,
        server_url=args.server_url,
        cluster_init=args.cluster_init,
        config=_config_file(args.config),
        node_labels=tuple(args.node_label),
        tls_sans=tuple(args.tls_san),
        node_name=args.node_name,
        image_cache=args.image_cache,
        allow_downgrade=args.allow_downgrade,
        adopt=args.adopt,
        sync=is_host_root(args.root) if args.sync is None else args.sync,
        wait=args.wait,
        environ=dict(environ),
    )


def _config_file(path: Optional[str]) -> Optional[Mapping[str, Any]]:
    """--config FILE, parsed; the YAML reader is imported only when one is given (start-up)."""
    if not path:
        return None
    from k3bundle.installer.yaml.subset import load_config_file

    return load_config_file(path)


def _check_token_file(root: str, path: Optional[str], name: str) -> None:
    """k3s reads the token file when it starts: it must be there, by its full path."""
    if path is None:
        return
    if not path.startswith("/"):
        raise UsageError(
            f"{name} {path!r} is not an absolute path",
            "k3s runs from /, so give the token file's full path.",
        )
    where = os.path.join(root, path.lstrip("/"))
    if not os.path.isfile(where):
        under = "" if is_host_root(root) else f" under {root}"
        raise UsageError(
            f"{name} {path!r} does not exist{under}",
            "Copy the server's node-token there first, or pass the token with --token.",
        )


def kubeconfig_lines(kubeconfig: Optional[str]) -> List[str]:
    """Where a server's kubeconfig appears and a first command to try (None: not a server)."""
    if kubeconfig is None:
        return []
    flag = "" if kubeconfig == DEFAULT_KUBECONFIG else f" --kubeconfig {kubeconfig}"
    return [
        f"Kubeconfig: {kubeconfig} (k3s writes it when it starts).",
        f"Try: sudo k3s kubectl{flag} get nodes",
    ]
