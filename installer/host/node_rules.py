"""What k3s and Kubernetes refuse about a node's role, server, labels and name, refused up front.

k3s would start and then fail (or the kubelet would never register the node); refusing before any
file is placed gives the one-line error at install time instead. Pure rules, no I/O.
"""

from __future__ import annotations

import re
from typing import Mapping, Optional, Sequence

from k3bundle.installer.errors import UsageError

# Kubernetes' label syntax (apimachinery validation): an optional DNS-subdomain prefix and "/",
# then a name of at most 63 characters; the value is empty or the same shape as the name.
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?\Z")
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*\Z")
_TOKEN_HINT = (
    "Pass --token TOKEN or --token-file FILE, or set K3S_TOKEN or K3S_TOKEN_FILE (the server's "
    "/var/lib/rancher/k3s/server/node-token)."
)


def check_join(role: str, server_url: Optional[str], source: str, env: Mapping[str, str]) -> None:
    """An agent needs an https server and a token; a joining server needs the token too."""
    if role not in ("server", "agent"):
        raise UsageError(f"unknown role {role!r}", "Use --role server or --role agent.")
    if server_url is not None and not server_url.startswith("https://"):
        raise UsageError(
            f"{source} {server_url!r} is not an https:// URL",
            "k3s servers listen on https://HOST:6443; give that (only https is supported).",
        )
    if role == "agent" and not server_url:
        raise UsageError(
            "an agent needs --server https://HOST:6443",
            "Give the URL of a server (--server, or K3S_URL as for install.sh).",
        )
    if server_url and "K3S_TOKEN" not in env and "K3S_TOKEN_FILE" not in env:
        raise UsageError(f"joining {server_url} needs the cluster token", _TOKEN_HINT)


def check_cluster_init(role: str, server_url: Optional[str], source: str) -> None:
    """--cluster-init starts a new etcd cluster: a server's, and not while joining another."""
    if role == "agent":
        raise UsageError(
            "--cluster-init is for the first server, not an agent",
            "Drop --cluster-init, or install a server (--role server).",
        )
    if server_url:
        raise UsageError(
            f"--cluster-init starts a new cluster, but {source} joins {server_url}",
            "Give --cluster-init on the first server only; the others join it with --server.",
        )


def check_labels(labels: Sequence[str]) -> None:
    """Each --node-label is KEY=VALUE with Kubernetes' label syntax."""
    for label in labels:
        key, equals, value = label.partition("=")
        prefix, slash, name = key.rpartition("/")
        fine = bool(equals) and bool(_LABEL_NAME.match(name))
        fine = fine and (not slash or _is_subdomain(prefix))
        if not fine or (value and not _LABEL_NAME.match(value)):
            raise UsageError(
                f"--node-label {label!r} is not a Kubernetes label",
                "Give KEY=VALUE: KEY is [PREFIX/]NAME, NAME and VALUE up to 63 letters, digits, "
                "'-', '_' or '.' (beginning and ending alphanumeric), PREFIX a DNS name.",
            )


def check_node_name(name: Optional[str], source: str) -> None:
    """A node name is a DNS-1123 subdomain: lowercase, as Kubernetes requires of node objects."""
    if name is not None and not _is_subdomain(name):
        raise UsageError(
            f"{source} {name!r} is not a valid node name",
            "Use lowercase letters, digits, '-' and '.', beginning and ending alphanumeric "
            "(at most 253 characters).",
        )


def _is_subdomain(text: str) -> bool:
    return len(text) <= 253 and bool(_DNS_SUBDOMAIN.match(text))
