"""Authenticate a bundle's manifest, verify its payload, and describe it (inspect)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Sequence

from k3bundle.installer.errors import TrustError
from k3bundle.installer.format.hashing import HashPool
from k3bundle.installer.format.manifest import Manifest, parse
from k3bundle.installer.format.requires import requirements
from k3bundle.installer.format.signature import (
    PublicKey,
    backend_name,
    load_trusted_keys,
    parse_signature,
    verify,
)
from k3bundle.installer.format.slices import Holding, full_holding
from k3bundle.installer.format.sources import BundleSource, Header
from k3bundle.installer.progress import Progress


@dataclass(frozen=True)
class Authenticated:
    """A manifest whose signature checked out (or that the user allowed unsigned)."""

    manifest: Manifest
    bundle_id: str
    key: Optional[PublicKey]


def authenticate(
    header: Header, keys: Sequence[PublicKey], allow_unsigned: bool, bundle: str
) -> Authenticated:
    """Check the signature before the manifest is trusted; refuse every doubtful case."""
    bundle_id = hashlib.sha256(header.manifest).hexdigest()
    if header.signature is None:
        if not allow_unsigned:
            raise TrustError(
                f"{bundle} is not signed",
                "Build it with 'k3bundle build --sign-key KEY', or pass --allow-unsigned if you "
                "trust where it came from.",
            )
        return Authenticated(parse(header.manifest), bundle_id, None)
    if not keys:
        raise TrustError(
            f"no trusted public key is configured to check {bundle}",
            "Pass --pubkey KEY.pub, or copy the key to /etc/k3bundle/trusted.d/ (under --root).",
        )
    try:
        key = verify(header.manifest, parse_signature(header.signature), keys)
    except TrustError as exc:
        raise TrustError(f"{bundle}: {exc.message}", exc.hint) from None
    return Authenticated(parse(header.manifest), bundle_id, key)


def open_authenticated(
    bundle: str, pubkeys: Sequence[str], root: str, allow_unsigned: bool
) -> tuple[BundleSource, Authenticated]:
    """Open a bundle and authenticate its manifest before any payload byte is read.

    The manifest returned knows which architectures the archive holds (`held`), so a slice
    refuses to plan an install of an architecture it leaves out.
    """
    keys = load_trusted_keys(pubkeys, root)
    source = BundleSource(bundle)
    try:
        auth = authenticate(source.read_header(), keys, allow_unsigned, source.name)
        held = source.holding(auth.manifest).holds
    except BaseException:
        source.close()
        raise
    return source, replace(auth, manifest=replace(auth.manifest, held=held))


def verify_bundle(
    bundle: str, pubkeys: Sequence[str], root: str, allow_unsigned: bool, progress: Progress
) -> Dict[str, Any]:
    """Verify signature, every member and every part in one pass; return a summary."""
    source, auth = open_authenticated(bundle, pubkeys, root, allow_unsigned)
    with source:
        holding = source.holding(auth.manifest)
        held = [e for e in auth.manifest.entries if holding.expects(e)]
        progress.start(f"Verifying {source.name}", sum(e.size for e in held))
        with HashPool(progress.advance) as pool:
            for _entry, stream in source.payload(auth.manifest, pool):
                stream.verify_in(pool, progress.advance)
            pool.finish()
        progress.finish()
    summary = describe(auth.manifest, auth.bundle_id, source.name, holding)
    summary.update(verified=True, signed_by=auth.key.key_id if auth.key else None)
    summary["verifier"] = backend_name() if auth.key else None
    return summary


def inspect_bundle(bundle: str) -> Dict[str, Any]:
    """Describe a bundle from its manifest alone (no payload hashing, no trust needed)."""
    with BundleSource(bundle) as source:
        header = source.read_header()
        manifest = parse(header.manifest)
        bundle_id = hashlib.sha256(header.manifest).hexdigest()
        summary = describe(manifest, bundle_id, source.name, source.holding(manifest))
        signature = parse_signature(header.signature) if header.signature else None
        summary["signed_by"] = signature.key_id if signature else None
        summary["parts"] = [{"name": p.path.name, "size": p.size} for p in source.parts or []]
    return summary


def read_manifest_bytes(bundle: str) -> bytes:
    """The manifest member's exact bytes (what `build --since` reads; its sha256 is the id)."""
    with BundleSource(bundle) as source:
        data = source.read_header().manifest
    parse(data)  # a malformed manifest is refused here too, not handed on
    return data


def describe(
    manifest: Manifest, bundle_id: str, name: str, holding: Optional[Holding] = None
) -> Dict[str, Any]:
    """The manifest as a JSON-ready summary; `slice` says what a slice holds (else null)."""
    files: List[Dict[str, Any]] = [e.to_json() for e in manifest.entries]
    holding = holding or full_holding(manifest)
    return {
        "bundle": name,
        "bundle_id": bundle_id,
        "k3s_version": manifest.k3s_version,
        "architectures": list(manifest.architectures),
        "files": files,
        "size": sum(e.size for e in manifest.entries),
        "install": dict(manifest.install),
        "images": list(manifest.extra.get("images") or []),
        "charts": list(manifest.extra.get("charts") or []),
        "slice": holding.to_json(),
        "requires": [r.to_json() for r in requirements(manifest.extra)],
        "since": manifest.extra.get("since"),
    }
