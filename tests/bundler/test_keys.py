"""`k3bundle keygen` and loading signing keys, passphrase-protected or not."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from k3bundle.bundler import keys
from k3bundle.installer.errors import TrustError, UsageError
from k3bundle.installer.format.signature import parse_signature, public_key_from_pem, verify
from tests.helpers import run_k3bundle

PASSPHRASE_ENV = "K3BUNDLE_KEY_PASSPHRASE"


@pytest.fixture(autouse=True)
def _no_passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests decide themselves whether a passphrase is set."""
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)


def _der_key_id(pub: Path) -> str:
    key = serialization.load_pem_public_key(pub.read_bytes())
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(der).hexdigest()


def test_keygen_writes_private_key_0600_pkcs8_and_public_key(tmp_path: Path) -> None:
    name = tmp_path / "release"
    done = run_k3bundle("keygen", "-o", str(name))
    assert done.returncode == 0, done.stderr
    private, public = tmp_path / "release.key", tmp_path / "release.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    loaded = serialization.load_pem_private_key(private.read_bytes(), password=None)
    assert type(loaded).__name__ == "Ed25519PrivateKey"


def test_keygen_prints_the_key_id_of_the_public_key(tmp_path: Path) -> None:
    done = run_k3bundle("keygen", "-o", str(tmp_path / "release"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"Key id: {_der_key_id(tmp_path / 'release.pub')}"


def test_keygen_with_passphrase_env_encrypts_the_key(tmp_path: Path) -> None:
    done = run_k3bundle("keygen", "-o", str(tmp_path / "locked"), env={PASSPHRASE_ENV: "s3cret"})
    assert done.returncode == 0, done.stderr
    private = tmp_path / "locked.key"
    assert private.read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(private.read_bytes(), password=None)


def test_keygen_without_a_terminal_never_prompts_and_writes_an_unencrypted_key(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if k != PASSPHRASE_ENV}
    done = subprocess.run(
        [sys.executable, "-m", "k3bundle.bundler", "keygen", "-o", str(tmp_path / "batch")],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Passphrase" not in done.stderr + done.stdout
    assert (tmp_path / "batch.key").read_text().startswith("-----BEGIN PRIVATE KEY-----")


def test_keygen_refuses_to_overwrite_an_existing_key_without_force(tmp_path: Path) -> None:
    name = str(tmp_path / "release")
    assert run_k3bundle("keygen", "-o", name).returncode == 0
    before = (tmp_path / "release.key").read_bytes()
    again = run_k3bundle("keygen", "-o", name)
    assert again.returncode == 2
    assert "already exists" in again.stderr and "--force" in again.stderr
    assert (tmp_path / "release.key").read_bytes() == before


def test_keygen_with_force_replaces_the_key(tmp_path: Path) -> None:
    name = str(tmp_path / "release")
    assert run_k3bundle("keygen", "-o", name).returncode == 0
    before = (tmp_path / "release.key").read_bytes()
    again = run_k3bundle("keygen", "-o", name, "--force")
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "release.key").read_bytes() != before
    assert stat.S_IMODE((tmp_path / "release.key").stat().st_mode) == 0o600


def test_generate_refuses_when_only_the_public_key_exists(tmp_path: Path) -> None:
    (tmp_path / "half.pub").write_text("placeholder")
    with pytest.raises(UsageError, match=r"half\.pub already exists"):
        keys.generate(str(tmp_path / "half"), None)
    assert not (tmp_path / "half.key").exists()


def test_generate_into_a_missing_folder_refuses_before_making_a_key(tmp_path: Path) -> None:
    missing = tmp_path / "missing" / "dir"
    with pytest.raises(UsageError) as raised:
        keys.generate(str(missing / "x"), None)
    assert raised.value.message == f"folder {missing} does not exist; create it first"
    assert raised.value.exit_code == 2
    assert list(tmp_path.iterdir()) == []


def test_generate_into_a_file_instead_of_a_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("not a folder")
    with pytest.raises(UsageError, match=r"plain is not a folder"):
        keys.generate(str(tmp_path / "plain" / "x"), None)


def test_generate_keeps_the_private_key_0600_and_leaves_no_temporary_file(
    tmp_path: Path,
) -> None:
    old = os.umask(0)  # a permissive umask must not widen the private key, even for a moment
    try:
        pair = keys.generate(str(tmp_path / "site"), None)
    finally:
        os.umask(old)
    assert stat.S_IMODE(pair.private.stat().st_mode) == 0o600
    assert stat.S_IMODE(pair.public.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site.key", "site.pub"]


def test_generate_with_force_replaces_both_files_whole(tmp_path: Path) -> None:
    first = keys.generate(str(tmp_path / "site"), None)
    second = keys.generate(str(tmp_path / "site"), None, force=True)
    assert second.key_id != first.key_id
    assert _der_key_id(second.public) == second.key_id
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site.key", "site.pub"]


def test_encrypted_key_signs_when_the_passphrase_env_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pair = keys.generate(str(tmp_path / "locked"), "s3cret")
    monkeypatch.setenv(PASSPHRASE_ENV, "s3cret")
    signature = keys.load_signer(pair.private)(b"manifest bytes")
    trusted = public_key_from_pem(pair.public.read_bytes(), str(pair.public))
    assert verify(b"manifest bytes", parse_signature(signature.to_bytes()), [trusted]) == trusted
    assert signature.key_id == pair.key_id


def test_encrypted_key_without_the_passphrase_env_fails_with_a_clear_error(
    tmp_path: Path,
) -> None:
    pair = keys.generate(str(tmp_path / "locked"), "s3cret")
    with pytest.raises(TrustError) as caught:
        keys.load_signer(pair.private)
    assert caught.value.exit_code == 5
    assert PASSPHRASE_ENV in caught.value.diagnostics()
    assert "locked.key" in caught.value.message


def test_encrypted_key_with_a_wrong_passphrase_fails_with_exit_code_5(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pair = keys.generate(str(tmp_path / "locked"), "s3cret")
    monkeypatch.setenv(PASSPHRASE_ENV, "wrong")
    with pytest.raises(TrustError, match="wrong passphrase") as caught:
        keys.load_signer(pair.private)
    assert caught.value.exit_code == 5


def test_encrypted_key_is_never_prompted_for_without_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pair = keys.generate(str(tmp_path / "locked"), "s3cret")
    asked: list[str] = []

    def prompt(text: str, confirm: bool) -> str:
        asked.append(text)
        return "s3cret"

    monkeypatch.setattr(sys.stdin, "isatty", lambda: False)
    with pytest.raises(TrustError):
        keys.load_signer(pair.private, prompt)
    assert asked == []
