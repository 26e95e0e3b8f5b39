"""Registry mirrors: pull docker.io/library/nginx:1.27 from mirror.local:5000, record the original.

A mirror is HOST[:PORT][/PATH]: the repository is asked for under PATH on HOST, the way
registry mirrors and pull-through caches (distribution's proxy mode, Harbor's proxy projects)
serve it. Manifests and blobs are content-addressed, so what a mirror sends is checked against
the same digests; the bundle keeps the canonical name. A mirror that fails is an error naming
both hosts: an air-gapped build never falls back to the internet behind the user's back.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Dict, Iterable, Mapping

from k3bundle.bundler.oci.credentials import registry_host
from k3bundle.bundler.oci.reference import Reference, parse_reference
from k3bundle.installer.errors import K3BundleError, UsageError

_HINT = "Write SOURCE=MIRROR, e.g. docker.io=mirror.local:5000 or quay.io=harbor.local/quay-proxy."


def parse_mirror_flags(values: Iterable[str], origin: str = "--registry-mirror") -> Dict[str, str]:
    """`SOURCE=MIRROR` values as {source host: mirror}."""
    found: Dict[str, str] = {}
    for value in values:
        source, equals, target = value.partition("=")
        if not equals:
            raise UsageError(f"{origin} {value[:100]!r}: expected SOURCE=MIRROR", _HINT)
        found.update(check_mirrors({source: target}, origin))
    return found


def check_mirrors(mirrors: Mapping[str, object], origin: str) -> Dict[str, str]:
    """Normalised {source host: HOST[:PORT][/PATH]}; UsageError naming `origin` otherwise."""
    checked: Dict[str, str] = {}
    for source, target in mirrors.items():
        text = target.strip().rstrip("/") if isinstance(target, str) else ""
        host = text.split("/", 1)[0]
        try:
            probe = parse_reference(f"{text}/probe:1") if host else None
        except UsageError:
            probe = None
        if probe is None or probe.registry != host.lower() or not source.strip():
            raise UsageError(f"{origin}: bad mirror {source}={str(target)[:100]!r}", _HINT)
        checked[registry_host(source)] = text.lower()
    return checked


def wire_reference(ref: Reference, mirrors: Mapping[str, str]) -> Reference:
    """The reference to ask the network for: `ref` itself, or its place on the mirror."""
    mirror = mirrors.get(registry_host(ref.registry))
    if mirror is None:
        return ref
    host, _, prefix = mirror.partition("/")
    repository = f"{prefix}/{ref.repository}" if prefix else ref.repository
    return replace(ref, registry=host, repository=repository)


def mirror_error(exc: K3BundleError, ref: Reference, wire: Reference) -> K3BundleError:
    """The same error (same class and exit code), naming the mirror and the original."""
    message = f"{exc.message} (through the mirror {wire.registry} for {ref.name})"
    hint = (
        f"{exc.hint} The build does not fall back to {ref.registry}: fix the mirror, or drop "
        f"the mirror for {ref.registry} (--registry-mirror, the spec's or site config's mirrors)."
    )
    error = type(exc)(message, hint.strip())
    error.exit_code = exc.exit_code
    return error
