"""Ed25519 signing keys: generate, load (optionally passphrase-protected) and sign."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from k3bundle.installer.errors import TrustError, UsageError, build_error
from k3bundle.installer.format import Signature, key_id_of

PASSPHRASE_ENV = "K3BUNDLE_KEY_PASSPHRASE"
Prompt = Callable[[str, bool], str]


@dataclass(frozen=True)
class KeyPair:
    """Where keygen wrote a key pair, and its key id."""

    private: Path
    public: Path
    key_id: str


def _public_der(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def passphrase_from(prompt: Optional[Prompt], confirm: bool) -> Optional[str]:
    """The passphrase from the environment, else from a terminal prompt, else None."""
    value = os.environ.get(PASSPHRASE_ENV)
    if value:
        return value
    if prompt is not None and sys.stdin.isatty():
        return prompt("Passphrase (empty for none)", confirm) or None
    return None


def generate(name: str, passphrase: Optional[str], force: bool = False) -> KeyPair:
    """Write NAME.key (PKCS#8 PEM, 0600, encrypted when a passphrase is given) and NAME.pub."""
    private, public = Path(f"{name}.key"), Path(f"{name}.pub")
    _check_folder(private.parent)
    existing = [p for p in (private, public) if p.exists()]
    if existing and not force:
        raise _exists(existing[0])
    key = Ed25519PrivateKey.generate()
    encryption: serialization.KeySerializationEncryption = serialization.NoEncryption()
    if passphrase:
        encryption = serialization.BestAvailableEncryption(passphrase.encode())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new(private, pem, 0o600, force)
    _write_new(public, public_pem, 0o644, force)
    return KeyPair(private, public, key_id_of(_public_der(key)))


def _check_folder(folder: Path) -> None:
    # Said up front, before a key exists that would have nowhere to go.
    if not folder.exists():
        raise UsageError(
            f"folder {folder} does not exist; create it first",
            f"mkdir -p {folder}, or choose another -o NAME.",
        )
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder", "Choose another -o NAME.")


def _exists(path: Path) -> UsageError:
    return UsageError(
        f"{path} already exists; refusing to overwrite a key",
        "Choose another name with -o, or pass --force to replace it.",
    )


def _write_new(path: Path, data: bytes, mode: int, force: bool) -> None:
    """Write `data` under a temporary name created 0600-or-less (O_EXCL), then move it in whole.

    A crash never leaves half a key under the real name, and the private key is never
    readable by others, not even for a moment.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode & 0o600)
    except OSError as exc:
        raise build_error(exc, "write", path) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        _move_in(tmp, path, force)
    finally:
        tmp.unlink(missing_ok=True)


def _move_in(tmp: Path, path: Path, force: bool) -> None:
    if force:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # unlike rename, never replaces a key that appeared meanwhile
    except FileExistsError:
        raise _exists(path) from None
    except OSError:  # no hard links here (FAT, some network filesystems)
        if path.exists():
            raise _exists(path) from None
        os.replace(tmp, path)


class Signer:
    """Signs manifest bytes with one private key; knows that key's id."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.key_id = key_id_of(_public_der(key))

    def __call__(self, data: bytes) -> Signature:
        """The Ed25519 signature of `data`."""
        return Signature(self.key_id, self._key.sign(data))


def load_signer(path: Path, prompt: Optional[Prompt] = None) -> Signer:
    """A Signer for the private key at `path` (asking for its passphrase if needed)."""
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read signing key {path}: {exc.strerror}") from None
    return Signer(_load_private(path, pem, prompt))


def _load_private(path: Path, pem: bytes, prompt: Optional[Prompt]) -> Ed25519PrivateKey:
    password = None
    if b"ENCRYPTED" in pem:
        secret = passphrase_from(prompt, confirm=False)
        if secret is None:
            raise TrustError(
                f"signing key {path} is encrypted and no passphrase was given",
                f"Set {PASSPHRASE_ENV}, or run on a terminal to be asked for it.",
            )
        password = secret.encode()
    try:
        key = serialization.load_pem_private_key(pem, password=password)
    except (ValueError, TypeError):
        raise TrustError(
            f"cannot load signing key {path}: wrong passphrase or not a PEM private key"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise TrustError(
            f"signing key {path} is not an Ed25519 key", "Create one with 'k3bundle keygen'."
        )
    return key
