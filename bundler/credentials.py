"""Registry credentials: --registry-auth flags and a docker config.json's "auths".

Hosts are compared as k3bundle normalises them (no scheme or path, lowercase, Docker Hub's
aliases as docker.io), so `--registry-auth index.docker.io=...` serves `nginx:1.27` too.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Dict, Sequence, Tuple

from k3bundle.installer.errors import UsageError
from k3bundle.installer.jsondoc import load_json

from .reference import DOCKER_HUB

Credentials = Tuple[str, str]


def registry_host(name: str) -> str:
    """A registry host as k3bundle compares them: no scheme or path, lowercase, Hub as docker.io."""
    host = name.strip().lower().split("://", 1)[-1].split("/", 1)[0]
    return DOCKER_HUB if host in ("index.docker.io", "registry-1.docker.io") else host


def parse_registry_auth(values: Sequence[str]) -> Dict[str, Credentials]:
    """`--registry-auth HOST=USER:PASSWORD` values as {host: (user, password)}."""
    found: Dict[str, Credentials] = {}
    for value in values:
        host, equals, userpass = value.partition("=")
        user, colon, password = userpass.partition(":")
        if not (equals and colon and host.strip() and user):
            raise UsageError(
                f"--registry-auth {host}=…: expected HOST=USER:PASSWORD",
                "For example --registry-auth ghcr.io=me:TOKEN (quote it for the shell).",
            )
        found[registry_host(host)] = (user, password)
    return found


def docker_config_auths(path: Path) -> Dict[str, Credentials]:
    """Credentials from a docker config.json "auths" (base64 "auth"); helpers are ignored."""
    hint = "Fix or move the file, or pass --registry-auth HOST=USER:PASSWORD instead."
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise UsageError(f"cannot read the docker config {path}: {exc.strerror}", hint) from None
    config = load_json(data, f"the docker config {path}", UsageError, hint)
    auths = config.get("auths") if isinstance(config, dict) else None
    found: Dict[str, Credentials] = {}
    for host, entry in (auths if isinstance(auths, dict) else {}).items():
        encoded = entry.get("auth") if isinstance(entry, dict) else None
        try:
            user, colon, password = base64.b64decode(str(encoded or "")).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            continue  # an entry we cannot read is one we do not use
        if colon and user:
            found[registry_host(host)] = (user, password)
    return found
