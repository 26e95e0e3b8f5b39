"""Ed25519 signatures over the manifest bytes: trusted keys, key ids, verification.

Verification uses `cryptography` when it is importable and the host's `openssl` otherwise, so the
standalone installer needs nothing but python3 and openssl (1.1.1 or newer) on the host.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from k3bundle.installer.errors import FormatError, TrustError
from k3bundle.installer.format.jsondoc import load_json
from k3bundle.installer.format.manifest import MAX_SIGNATURE_BYTES, SIGNATURE_NAME, canonical_json

ALGORITHM = "ed25519"
TRUST_DIR = "etc/k3bundle/trusted.d"
# DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the 32 raw key bytes follow it.
_ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
_BACKEND_ENV = "K3BUNDLE_VERIFY_WITH"
KEY_ID = re.compile(r"sha256:[0-9a-f]{64}", re.ASCII)
_ED25519_SIGNATURE_BYTES = 64


@dataclass(frozen=True)
class PublicKey:
    """A trusted Ed25519 public key and where it came from."""

    der: bytes
    origin: str

    @property
    def key_id(self) -> str:
        """sha256 of the SubjectPublicKeyInfo DER, as `sha256:<hex>`."""
        return key_id_of(self.der)

    def pem(self) -> bytes:
        """The key as SubjectPublicKeyInfo PEM."""
        body = base64.encodebytes(self.der).decode().replace("\n", "")
        lines = [body[i : i + 64] for i in range(0, len(body), 64)]
        return (
            "-----BEGIN PUBLIC KEY-----\n" + "\n".join(lines) + "\n-----END PUBLIC KEY-----\n"
        ).encode()


@dataclass(frozen=True)
class Signature:
    """The decoded `k3bundle.json.sig` member."""

    key_id: str
    value: bytes

    def to_bytes(self) -> bytes:
        """Canonical bytes of the signature member."""
        doc = {"algorithm": ALGORITHM, "key_id": self.key_id}
        doc["signature"] = base64.b64encode(self.value).decode()
        return canonical_json(doc)


def key_id_of(der: bytes) -> str:
    """The key id of a public key given as SubjectPublicKeyInfo DER."""
    return "sha256:" + hashlib.sha256(der).hexdigest()


def public_key_from_pem(data: bytes, origin: str) -> PublicKey:
    """Read an Ed25519 SubjectPublicKeyInfo PEM; raise TrustError naming `origin` otherwise."""
    text = data.decode("ascii", "replace")
    begin, end = "-----BEGIN PUBLIC KEY-----", "-----END PUBLIC KEY-----"
    if begin not in text or end not in text:
        raise TrustError(
            f"{origin} is not a PEM public key",
            "Pass the NAME.pub file written by 'k3bundle keygen', not the private key.",
        )
    body = text.split(begin, 1)[1].split(end, 1)[0]
    try:
        der = base64.b64decode("".join(body.split()), validate=True)
    except binascii.Error:
        raise TrustError(f"{origin} holds a damaged PEM public key") from None
    if len(der) != 44 or not der.startswith(_ED25519_SPKI_PREFIX):
        raise TrustError(
            f"{origin} is not an Ed25519 public key", "k3bundle signs with Ed25519 keys."
        )
    return PublicKey(der, origin)


def load_trusted_keys(paths: Sequence[str], root: str) -> List[PublicKey]:
    """Keys given with --pubkey, or else every *.pub / *.pem in ROOT/etc/k3bundle/trusted.d."""
    files = [Path(p) for p in paths]
    if not files:
        trust_dir = Path(root, TRUST_DIR)
        if trust_dir.is_dir():
            files = sorted(p for p in trust_dir.iterdir() if p.suffix in (".pub", ".pem"))
    keys = []
    for file in files:
        try:
            keys.append(public_key_from_pem(file.read_bytes(), str(file)))
        except OSError as exc:
            raise TrustError(f"cannot read public key {file}: {exc.strerror}") from None
    return keys


def parse_signature(data: bytes) -> Signature:
    """Decode the signature member; raise FormatError if it is malformed."""
    doc = load_json(data, SIGNATURE_NAME, max_bytes=MAX_SIGNATURE_BYTES)
    if not isinstance(doc, dict):
        raise FormatError(f"{SIGNATURE_NAME} is not a JSON object")
    algorithm, key_id, encoded = (doc.get(k) for k in ("algorithm", "key_id", "signature"))
    if algorithm != ALGORITHM:
        shown = algorithm if isinstance(algorithm, str) else type(algorithm).__name__
        raise FormatError(f"{SIGNATURE_NAME} uses algorithm {shown[:40]!r}, not ed25519")
    if not isinstance(key_id, str) or not KEY_ID.fullmatch(key_id):
        raise FormatError(f"{SIGNATURE_NAME} is malformed (its key_id is not sha256:<hex>)")
    try:
        value = base64.b64decode(encoded, validate=True) if isinstance(encoded, str) else b""
    except (binascii.Error, ValueError):
        value = b""
    if len(value) != _ED25519_SIGNATURE_BYTES:
        raise FormatError(f"{SIGNATURE_NAME} is malformed (its signature is not 64 base64 bytes)")
    return Signature(key_id, value)


def verify(message: bytes, signature: Signature, keys: Sequence[PublicKey]) -> PublicKey:
    """Return the trusted key that signed `message`, or raise TrustError saying why not."""
    by_id: Dict[str, PublicKey] = {k.key_id: k for k in keys}
    key = by_id.get(signature.key_id)
    if key is None:
        raise TrustError(
            f"the bundle is signed by key {signature.key_id}, which is not trusted here",
            "Pass the matching public key with --pubkey (or put it in /etc/k3bundle/trusted.d/).",
        )
    if not _verify_with_backend(key, message, signature.value):
        raise TrustError(
            f"the signature in {SIGNATURE_NAME} does not match the manifest (key {key.key_id})",
            "The bundle was altered after signing: do not install it; rebuild or copy it again.",
        )
    return key


def backend_name() -> str:
    """Which verifier runs: 'cryptography' when importable, else 'openssl' (env can force one)."""
    forced = os.environ.get(_BACKEND_ENV)
    if forced in ("openssl", "cryptography"):
        return forced
    try:
        import cryptography.hazmat.primitives.asymmetric.ed25519  # noqa: F401  # optional
    except ImportError:
        return "openssl"
    return "cryptography"


def _verify_with_backend(key: PublicKey, message: bytes, value: bytes) -> bool:
    if backend_name() == "cryptography":
        return _verify_cryptography(key, message, value)
    return verify_openssl(key, message, value)


def _verify_cryptography(key: PublicKey, message: bytes, value: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature  # optional
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # optional
        Ed25519PublicKey,
    )

    public = Ed25519PublicKey.from_public_bytes(key.der[len(_ED25519_SPKI_PREFIX) :])
    try:
        public.verify(value, message)
    except InvalidSignature:
        return False
    return True


def verify_openssl(
    key: PublicKey, message: bytes, value: bytes, openssl: Optional[str] = None
) -> bool:
    """Verify with `openssl pkeyutl -verify -rawin`, exactly as the README shows a person."""
    binary = openssl or shutil.which("openssl")
    if binary is None:
        raise TrustError(
            "cannot verify the signature: neither the python 'cryptography' package nor 'openssl' "
            "is available on this host",
            "Install openssl (1.1.1 or newer), or verify the bundle on another machine.",
        )
    import subprocess  # here: only a host without 'cryptography' pays for these imports
    import tempfile

    with tempfile.TemporaryDirectory(prefix="k3bundle-verify-") as tmp:
        files = {"key.pub": key.pem(), "k3bundle.json": message, "sig.bin": value}
        for name, data in files.items():
            Path(tmp, name).write_bytes(data)
        cmd = [binary, "pkeyutl", "-verify", "-pubin", "-inkey", "key.pub", "-rawin"]
        cmd += ["-in", "k3bundle.json", "-sigfile", "sig.bin"]
        done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, check=False)
    if done.returncode != 0 and "Signature Verification Failure" not in done.stdout + done.stderr:
        raise TrustError(
            f"openssl could not check the signature: {(done.stderr or done.stdout).strip()}",
            "k3bundle needs OpenSSL 1.1.1 or newer for Ed25519; install it or the 'cryptography' "
            "python package.",
        )
    return done.returncode == 0
