"""The site config: what a workstation uses for every build (mirrors, registries, key, URLs),
and for `k3bundle images`, which reaches registries and the cache as a build does.

The spec (-f) describes a bundle; this file describes the machine that builds it. It lives at
`config.yaml` in the platform's config folder (`click.get_app_dir`): $XDG_CONFIG_HOME/k3bundle
or ~/.config/k3bundle on Linux, ~/Library/Application Support/k3bundle on macOS,
%APPDATA%\\k3bundle on Windows; --config-file (K3BUNDLE_CONFIG_FILE) names another. Precedence:
flag > K3BUNDLE_* environment variable > site config > spec. Relative paths are relative to
the file's folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import click
import yaml

from k3bundle.bundler.oci.credentials import Credentials, parse_registry_auth, registry_host
from k3bundle.bundler.oci.mirrors import check_mirrors
from k3bundle.installer.errors import UsageError

# Keys that are build options: they become the defaults of `k3bundle build`'s flags (and of
# `k3bundle images`' flags of the same names: cache_dir, ca_file).
OPTION_KEYS: Dict[str, Tuple[type, ...]] = {
    "release_url": (str,),
    "channel_url": (str,),
    "cache_dir": (str,),
    "sign_key": (str,),
    "ca_file": (str,),
    "jobs": (int,),
    "retries": (int,),
    "timeout": (int, float),
}
PATH_KEYS = ("cache_dir", "sign_key", "ca_file")
REGISTRY_KEYS: Dict[str, Tuple[type, ...]] = {
    "auth": (str,),
    "insecure": (bool,),
    "ca_file": (str,),
}
_HINT = "See 'k3bundle build --help' and the README's site config section for the keys."


@dataclass(frozen=True)
class SiteConfig:
    """A parsed site config: option defaults and per-registry settings."""

    path: Optional[Path] = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    auth: Mapping[str, Credentials] = field(default_factory=dict)
    insecure: Tuple[str, ...] = ()
    ca_files: Mapping[str, str] = field(default_factory=dict)
    mirrors: Mapping[str, str] = field(default_factory=dict)


def default_path() -> Path:
    """The platform's site config file (it need not exist)."""
    return Path(click.get_app_dir("k3bundle")) / "config.yaml"


def load_site_config(path: Optional[Path]) -> SiteConfig:
    """The site config at `path` (must exist), or at the default place (may be missing)."""
    target = path or default_path()
    try:
        text = target.read_text("utf-8")
    except FileNotFoundError:
        if path is None:
            return SiteConfig()
        raise UsageError(f"site config {target} does not exist", _HINT) from None
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise UsageError(f"cannot read site config {target}: {why}", _HINT) from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"{target} is not valid YAML: {' '.join(str(exc).split())}") from None
    return _parse(doc if doc is not None else {}, target)


def _parse(doc: Any, path: Path) -> SiteConfig:
    origin = f"site config {path}"
    if not isinstance(doc, dict):
        raise UsageError(f"{origin}: expected a mapping of keys", _HINT)
    known = {*OPTION_KEYS, "registries", "mirrors"}
    unknown = sorted(str(key) for key in doc if key not in known)
    if unknown:
        raise UsageError(f"{origin}: unknown key(s) {', '.join(unknown)}", _HINT)
    defaults = {
        key: _value(doc[key], OPTION_KEYS[key], path, key) for key in OPTION_KEYS if key in doc
    }
    mirrors = _mapping(doc.get("mirrors"), origin, "mirrors")
    registries = _registries(_mapping(doc.get("registries"), origin, "registries"), path)
    return SiteConfig(path, defaults, *registries, check_mirrors(mirrors, f"{origin}: mirrors"))


def _registries(
    entries: Mapping[str, Any], path: Path
) -> Tuple[Dict[str, Credentials], Tuple[str, ...], Dict[str, str]]:
    auth: Dict[str, Credentials] = {}
    insecure, ca_files = [], {}
    for host, entry in entries.items():
        where = f"registries.{host}"
        entry = _mapping(entry, f"site config {path}", where)
        for key, value in entry.items():
            if key not in REGISTRY_KEYS:
                raise UsageError(f"site config {path}: {where}: unknown key {key}", _HINT)
            checked = _value(value, REGISTRY_KEYS[key], path, f"{where}.{key}")
            if key == "auth":
                auth.update(parse_registry_auth([f"{host}={checked}"], f"{path}: {where}.auth"))
            elif key == "insecure" and checked:
                insecure.append(registry_host(host))
            elif key == "ca_file":
                ca_files[registry_host(host)] = checked
    return auth, tuple(insecure), ca_files


def _mapping(value: Any, origin: str, where: str) -> Dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise UsageError(f"{origin}: {where} must map names to values", _HINT)
    return value


def _value(value: Any, kinds: Tuple[type, ...], path: Path, key: str) -> Any:
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        wanted = " or ".join(kind.__name__ for kind in kinds)
        raise UsageError(f"site config {path}: {key} must be a {wanted}", _HINT)
    if key.rsplit(".", 1)[-1] not in PATH_KEYS:
        return value
    resolved = path.parent / Path(str(value)).expanduser()  # an absolute path stays itself
    if key.endswith(("sign_key", "ca_file")) and not resolved.exists():
        raise UsageError(f"site config {path}: {key}: {resolved} does not exist", _HINT)
    return str(resolved)
