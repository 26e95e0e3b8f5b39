"""Options shared by the commands that reach registries and chart repositories (`build`,
`images`): credentials, plain-HTTP hosts, mirrors, a CA bundle, the site config that can hold all
of them, and the K3BUNDLE_<OPTION> variables. One definition, so `k3bundle images` reaches a
chart exactly as the build that bundles it will."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Optional, TypeVar

import click

from k3bundle.bundler.oci.credentials import parse_registry_auth, read_auth_file
from k3bundle.bundler.oci.mirrors import parse_mirror_flags
from k3bundle.bundler.payloads.extras import RegistryOptions
from k3bundle.bundler.site_config import SiteConfig, default_path, load_site_config

SITE_CONFIG = "k3bundle.site_config"
F = TypeVar("F", bound=Callable[..., Any])


def _load_site_config(ctx: click.Context, path: Optional[Path]) -> None:
    """Read the site config first (an eager option), so its values become flag defaults."""
    site = load_site_config(path)
    ctx.meta[SITE_CONFIG] = site
    ctx.default_map = {**site.defaults, **(ctx.default_map or {})}


_OPTIONS = (
    click.option(
        "--registry-auth",
        multiple=True,
        metavar="HOST=USER:PASSWORD",
        help="Registry credentials (repeatable; visible in ps: prefer --registry-auth-file). "
        "Default: docker/podman logins (credential helpers included).",
    ),
    click.option(
        "--registry-auth-file",
        metavar="FILE|-",
        help="HOST=USER:PASSWORD lines from FILE, or from stdin with '-'.",
    ),
    click.option(
        "--insecure-registry",
        multiple=True,
        metavar="HOST",
        help="Talk plain HTTP to this registry (repeatable), e.g. 127.0.0.1:5000.",
    ),
    click.option(
        "--registry-mirror",
        multiple=True,
        metavar="SOURCE=MIRROR",
        help="Reach registry SOURCE through MIRROR (HOST[:PORT][/PATH], repeatable), "
        "e.g. docker.io=mirror.local:5000; names and the bundle keep SOURCE.",
    ),
    click.option(
        "--ca-file",
        type=click.Path(exists=True, path_type=Path),
        envvar=["K3BUNDLE_CA_FILE", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"],
        help="CA bundle (PEM) for every https download [default: certifi's].",
    ),
    click.option(
        "--config-file",
        type=click.Path(dir_okay=False, path_type=Path),
        is_eager=True,
        expose_value=False,
        callback=lambda ctx, _param, value: _load_site_config(ctx, value),
        help=f"Site config [default: {default_path()}].",
    ),
)


def network_options(command: F) -> F:
    """Add the registry options above to a click command, in this order in its --help."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def site_config() -> SiteConfig:
    """The site config the running command read (--config-file, else the default file)."""
    site = click.get_current_context().meta.get(SITE_CONFIG)
    return site if isinstance(site, SiteConfig) else SiteConfig()


def registries_from(
    flags: Mapping[str, Any], site: SiteConfig, spec_mirrors: Mapping[str, str]
) -> RegistryOptions:
    """Registry settings: flags over the site config over the spec (its mirrors)."""
    from_file = read_auth_file(flags["registry_auth_file"]) if flags["registry_auth_file"] else {}
    auth = {**site.auth, **from_file, **parse_registry_auth(flags["registry_auth"])}
    mirrors = {**spec_mirrors, **site.mirrors, **parse_mirror_flags(flags["registry_mirror"])}
    return RegistryOptions(
        insecure=(*site.insecure, *flags["insecure_registry"]),
        auth=auth,
        mirrors=mirrors,
        ca_files=site.ca_files,
    )


def environment_variables(command: click.Command) -> None:
    """Every option of `command` also as K3BUNDLE_<LONG_NAME> (--sign-key: K3BUNDLE_SIGN_KEY)."""
    for param in command.params:
        if isinstance(param, click.Option):
            if param.envvar is None:
                long_name = max(param.opts, key=len).lstrip("-")
                param.envvar = f"K3BUNDLE_{long_name.upper().replace('-', '_')}"
            param.show_envvar = True
