"""Registry credentials: flags, files, stdin, and what `docker login` / `podman login` left.

Precedence, first found wins: --registry-auth (or K3BUNDLE_REGISTRY_AUTH) > --registry-auth-file
(a file or `-` for stdin) > the site config's registries.HOST.auth > each auth file in turn
(REGISTRY_AUTH_FILE, then $DOCKER_CONFIG/config.json or ~/.docker/config.json), where
credHelpers[host] > credsStore > "auths". Hosts are compared as k3bundle normalises them (no
scheme or path, lowercase, Docker Hub's aliases as docker.io). Secrets never enter a message.
"""

from __future__ import annotations

import base64
import binascii
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from k3bundle.bundler.oci.reference import DOCKER_HUB
from k3bundle.installer.errors import UsageError
from k3bundle.installer.format import load_json

Credentials = Tuple[str, str]
TOKEN_USER = "<token>"  # a helper's Username for an identity (OAuth2 refresh) token
HUB_SERVER = "https://index.docker.io/v1/"  # the key docker login uses for Docker Hub
HELPER_TIMEOUT = 20.0  # a keychain may ask the user to unlock it
MAX_HELPER_ANSWER = 64 << 10
_HELPER_HINT = (
    "Run 'docker-credential-{name} get' by hand to see what it says, fix or remove "
    "'{key}' in {path}, or pass --registry-auth HOST=USER:PASSWORD."
)


def registry_host(name: str) -> str:
    """A registry host as k3bundle compares them: no scheme or path, lowercase, Hub as docker.io."""
    host = name.strip().lower().split("://", 1)[-1].split("/", 1)[0]
    return DOCKER_HUB if host in ("index.docker.io", "registry-1.docker.io") else host


def parse_registry_auth(
    values: Sequence[str], origin: str = "--registry-auth"
) -> Dict[str, Credentials]:
    """`HOST=USER:PASSWORD` values as {host: (user, password)}."""
    found: Dict[str, Credentials] = {}
    for value in values:
        host, equals, userpass = value.partition("=")
        user, colon, password = userpass.partition(":")
        if not (equals and colon and host.strip() and user):
            raise UsageError(
                f"{origin} {host.strip()[:100]}=…: expected HOST=USER:PASSWORD",
                "For example ghcr.io=me:TOKEN (on the command line, quote it for the shell).",
            )
        found[registry_host(host)] = (user, password.rstrip("\r\n"))
    return found


def read_auth_file(name: str) -> Dict[str, Credentials]:
    """--registry-auth-file: HOST=USER:PASSWORD lines (# comments) from a file, `-` is stdin."""
    try:
        text = sys.stdin.read() if name == "-" else Path(name).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise UsageError(f"cannot read --registry-auth-file {name}: {why}") from None
    lines = [line.strip() for line in text.splitlines()]
    origin = "stdin" if name == "-" else name
    return parse_registry_auth([x for x in lines if x and not x.startswith("#")], origin)


def auth_files(environ: Mapping[str, str] = os.environ) -> List[Path]:
    """Where logins are kept, in the order they are asked: podman's, then docker's."""
    files = [Path(environ["REGISTRY_AUTH_FILE"])] if environ.get("REGISTRY_AUTH_FILE") else []
    folder = environ.get("DOCKER_CONFIG")
    docker = Path(folder) if folder else Path("~/.docker").expanduser()
    return [*files, docker / "config.json"]


def _read_config(path: Path) -> Dict[str, Any]:
    hint = "Fix or move the file, or pass --registry-auth HOST=USER:PASSWORD instead."
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except OSError as exc:
        raise UsageError(f"cannot read the auth file {path}: {exc.strerror}", hint) from None
    config = load_json(data, f"the auth file {path}", UsageError, hint)
    return config if isinstance(config, dict) else {}


def docker_config_auths(path: Path) -> Dict[str, Credentials]:
    """Credentials in an auth file's "auths" (base64 "auth", or an "identitytoken")."""
    auths = _read_config(path).get("auths")
    found: Dict[str, Credentials] = {}
    for host, entry in (auths if isinstance(auths, dict) else {}).items():
        entry = entry if isinstance(entry, dict) else {}
        token = entry.get("identitytoken")
        if isinstance(token, str) and token:
            found[registry_host(host)] = (TOKEN_USER, token)
            continue
        try:
            user, colon, password = (
                base64.b64decode(str(entry.get("auth") or "")).decode().partition(":")
            )
        except (binascii.Error, UnicodeDecodeError, ValueError):
            continue  # an entry we cannot read is one we do not use
        if colon and user:
            found[registry_host(host)] = (user, password)
    return found


class LoginStore:
    """What logins left for a host, from the auth files in order (each read once)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self._paths = list(paths)
        self._configs: Dict[Path, Dict[str, Any]] = {}
        self._found: Dict[str, Optional[Credentials]] = {}

    def lookup(self, host: str) -> Optional[Credentials]:
        """Credentials for `host` (normalised), or None."""
        host = registry_host(host)
        if host not in self._found:
            self._found[host] = next(
                (c for c in (self._from(path, host) for path in self._paths) if c), None
            )
        return self._found[host]

    def _from(self, path: Path, host: str) -> Optional[Credentials]:
        if path not in self._configs:
            self._configs[path] = _read_config(path)
        config = self._configs[path]
        helpers = config.get("credHelpers")
        helpers = helpers if isinstance(helpers, dict) else {}
        named = {registry_host(key): value for key, value in helpers.items()}
        if isinstance(named.get(host), str):
            return run_helper(named[host], host, f"credHelpers[{host}]", path, required=True)
        store = config.get("credsStore")
        if isinstance(store, str) and store:
            found = run_helper(store, host, "credsStore", path, required=False)
            if found:
                return found
        return docker_config_auths(path).get(host)


def run_helper(name: str, host: str, key: str, path: Path, required: bool) -> Optional[Credentials]:
    """Ask `docker-credential-NAME get` for `host`; None when it has nothing for it.

    A missing credsStore helper is skipped (a config copied from a desktop); a missing helper
    named for this very host in credHelpers is an error."""
    hint = _HELPER_HINT.format(name=name, key=key, path=path)
    program = shutil.which(f"docker-credential-{name}")
    if program is None:
        if not required:
            return None
        raise UsageError(f"credential helper docker-credential-{name} is not on PATH", hint)
    code, answer = _run(program, HUB_SERVER if host == DOCKER_HUB else host, hint)
    if code != 0:
        if b"credentials not found" in answer.lower():
            return None
        raise UsageError(f"credential helper {program} failed for {host} (exit {code})", hint)
    doc = load_json(answer, f"the answer of credential helper {program}", UsageError, hint)
    user = doc.get("Username") if isinstance(doc, dict) else None
    secret = doc.get("Secret") if isinstance(doc, dict) else None
    if not (isinstance(user, str) and isinstance(secret, str) and user and secret):
        raise UsageError(f"credential helper {program} answered without Username and Secret", hint)
    return user, secret


def _run(program: str, server: str, hint: str) -> Tuple[int, bytes]:
    # Output goes to a file, not a pipe: bounded without a reader thread, on every platform.
    with tempfile.TemporaryFile() as out:
        try:
            done = subprocess.run(
                [program, "get"],
                input=server.encode(),
                stdout=out,
                stderr=subprocess.DEVNULL,  # may echo what it read; never shown
                timeout=HELPER_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise UsageError(
                f"credential helper {program} did not answer within {HELPER_TIMEOUT:.0f} s", hint
            ) from None
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
            raise UsageError(f"cannot run credential helper {program}: {why}", hint) from None
        if os.fstat(out.fileno()).st_size > MAX_HELPER_ANSWER:
            raise UsageError(f"credential helper {program} answered more than 64 KiB", hint)
        out.seek(0)
        return done.returncode, out.read()
