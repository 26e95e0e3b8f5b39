"""Ed25519 signatures: key ids, rotation, both verifier backends, and openssl by hand."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Callable, Dict

import pytest

from k3bundle.bundler import keys
from k3bundle.bundler.writer import write_bundle
from k3bundle.installer.errors import FormatError, TrustError
from k3bundle.installer.format.manifest import MANIFEST_NAME, SIGNATURE_NAME, parse
from k3bundle.installer.format.signature import (
    Signature,
    key_id_of,
    parse_signature,
    public_key_from_pem,
    verify_openssl,
)
from tests.helpers import KeyFiles, make_bundle, make_keys, run_k3bundle

# The README's "check a bundle by hand" commands, verbatim: run in a folder holding bundle.tar and
# the trusted public key saved as KEY.pub. Needs only tar, sed, base64 and OpenSSL 1.1.1+.
OPENSSL_CHECK_COMMANDS = """\
tar -xf bundle.tar k3bundle.json k3bundle.json.sig
sed 's/.*"signature":"\\([^"]*\\)".*/\\1/' k3bundle.json.sig | base64 -d > sig.bin
openssl pkeyutl -verify -pubin -inkey KEY.pub -rawin -in k3bundle.json -sigfile sig.bin
"""

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")


@pytest.fixture
def key(tmp_path: Path) -> KeyFiles:
    return make_keys(tmp_path / "keys")


def _member(bundle: Path, name: str) -> bytes:
    with tarfile.open(bundle) as tar:
        handle = tar.extractfile(name)
        assert handle is not None
        return handle.read()


def _pub_der(pub: Path) -> bytes:
    text = pub.read_text()
    body = text.split("-----BEGIN PUBLIC KEY-----")[1].split("-----END PUBLIC KEY-----")[0]
    return base64.b64decode("".join(body.split()))


def _run_by_hand(folder: Path, bundle: Path, pub: Path) -> subprocess.CompletedProcess[str]:
    folder.mkdir()
    shutil.copy(bundle, folder / "bundle.tar")
    shutil.copy(pub, folder / "KEY.pub")
    return subprocess.run(
        ["sh", "-ec", OPENSSL_CHECK_COMMANDS],
        cwd=folder,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


def test_signature_member_records_sha256_of_the_public_key_der(
    tmp_path: Path, key: KeyFiles
) -> None:
    bundle = make_bundle(tmp_path, signer=key).files[0]
    doc = json.loads(_member(bundle, SIGNATURE_NAME))
    expected = "sha256:" + hashlib.sha256(_pub_der(key.public)).hexdigest()
    assert doc["key_id"] == expected == key.key_id
    assert doc["algorithm"] == "ed25519"
    assert len(base64.b64decode(doc["signature"])) == 64


def test_public_key_from_pem_key_id_matches_keygen(key: KeyFiles) -> None:
    public = public_key_from_pem(key.public.read_bytes(), str(key.public))
    assert public.key_id == key_id_of(_pub_der(key.public)) == key.key_id
    assert public.pem() == key.public.read_bytes()


@pytest.mark.parametrize("signer_name", ["old", "new"])
def test_bundle_signed_by_either_of_two_trusted_keys_verifies(
    tmp_path: Path, signer_name: str
) -> None:
    pairs = {name: make_keys(tmp_path / "keys", name) for name in ("old", "new")}
    bundle = make_bundle(tmp_path / "b", signer=pairs[signer_name]).files[0]
    done = run_k3bundle(
        "verify",
        str(bundle),
        "--pubkey",
        str(pairs["old"].public),
        "--pubkey",
        str(pairs["new"].public),
    )
    assert done.returncode == 0, done.stderr
    assert pairs[signer_name].key_id in done.stdout


def test_bundle_signed_by_an_untrusted_key_is_refused_naming_its_key_id(
    tmp_path: Path, key: KeyFiles
) -> None:
    stranger = make_keys(tmp_path / "keys", "stranger")
    bundle = make_bundle(tmp_path / "b", signer=stranger).files[0]
    done = run_k3bundle("verify", str(bundle), "--pubkey", str(key.public))
    assert done.returncode == 5
    assert stranger.key_id in done.stderr and "not trusted" in done.stderr


@needs_openssl
def test_openssl_alone_verifies_the_manifest_signature(tmp_path: Path, key: KeyFiles) -> None:
    bundle = make_bundle(tmp_path / "b", signer=key).files[0]
    done = _run_by_hand(tmp_path / "by-hand", bundle, key.public)
    assert done.returncode == 0, done.stderr
    assert "Signature Verified Successfully" in done.stdout
    assert (tmp_path / "by-hand" / MANIFEST_NAME).read_bytes() == _member(bundle, MANIFEST_NAME)


@needs_openssl
def test_openssl_alone_refuses_a_manifest_with_one_byte_changed(
    tmp_path: Path, key: KeyFiles
) -> None:
    bundle = make_bundle(tmp_path / "b", signer=key).files[0]
    data = bytearray(bundle.read_bytes())
    at = data.find(b"v1.31.4+k3s1")
    assert at > 0
    data[at + 6] = ord("5")  # v1.31.5+k3s1: same length, so the tar stays readable
    bundle.write_bytes(bytes(data))
    done = _run_by_hand(tmp_path / "by-hand", bundle, key.public)
    assert done.returncode != 0
    assert "Signature Verified Successfully" not in done.stdout
    assert b"v1.31.5" in (tmp_path / "by-hand" / MANIFEST_NAME).read_bytes()


def _bad_signer(key: KeyFiles) -> Callable[[bytes], Signature]:
    good = keys.load_signer(key.private)

    def sign(data: bytes) -> Signature:
        real = good(data)
        return Signature(real.key_id, bytes([real.value[0] ^ 1]) + real.value[1:])

    return sign


def _env(backend: str) -> Dict[str, str]:
    return {"K3BUNDLE_VERIFY_WITH": backend}


@pytest.mark.parametrize("backend", ["openssl", "cryptography"])
def test_each_backend_accepts_a_good_bundle(tmp_path: Path, key: KeyFiles, backend: str) -> None:
    if backend == "openssl" and shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    bundle = make_bundle(tmp_path, signer=key).files[0]
    done = run_k3bundle("verify", str(bundle), "--pubkey", str(key.public), env=_env(backend))
    assert done.returncode == 0, done.stderr
    assert f"good ({backend})" in done.stdout


@pytest.mark.parametrize("backend", ["openssl", "cryptography"])
def test_each_backend_refuses_a_tampered_signature_with_exit_code_5(
    tmp_path: Path, key: KeyFiles, backend: str
) -> None:
    if backend == "openssl" and shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    good = make_bundle(tmp_path / "good").files[0]
    manifest = parse(_member(good, MANIFEST_NAME))
    payload = tmp_path / "good" / "payload"
    files = {e.path: payload / e.name for e in manifest.entries}
    bundle = write_bundle(tmp_path / "bad.tar", manifest, files, _bad_signer(key)).files[0]
    done = run_k3bundle("verify", str(bundle), "--pubkey", str(key.public), env=_env(backend))
    assert done.returncode == 5
    assert "does not match the manifest" in done.stderr


@needs_openssl
def test_verify_openssl_accepts_the_right_signature_and_refuses_others(key: KeyFiles) -> None:
    public = public_key_from_pem(key.public.read_bytes(), "key")
    signature = keys.load_signer(key.private)(b"exact manifest bytes")
    assert verify_openssl(public, b"exact manifest bytes", signature.value) is True
    assert verify_openssl(public, b"exact manifest bytez", signature.value) is False
    flipped = bytes([signature.value[-1] ^ 0x80])
    assert verify_openssl(public, b"exact manifest bytes", signature.value[:-1] + flipped) is False


def test_verify_openssl_without_openssl_says_what_to_install(
    key: KeyFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("k3bundle.installer.format.signature.shutil.which", lambda name: None)
    public = public_key_from_pem(key.public.read_bytes(), "key")
    with pytest.raises(TrustError, match="openssl") as caught:
        verify_openssl(public, b"m", b"\0" * 64)
    assert caught.value.exit_code == 5
    assert "1.1.1" in caught.value.diagnostics()


def test_parse_signature_round_trips_the_member(key: KeyFiles) -> None:
    signature = keys.load_signer(key.private)(b"m")
    assert parse_signature(signature.to_bytes()) == signature


GOOD_ID = "sha256:" + "ab" * 32
GOOD_VALUE = base64.b64encode(bytes(64)).decode()
HOSTILE_SIGNATURES = {
    "a-list": (b"[]", "not a JSON object"),
    "nested": (b"[" * 100_000 + b"]" * 100_000, "larger than 65536"),
    "nested-small": (b"[" * 1000 + b"]" * 1000, "nests deeper"),
    "not-utf8": (b'{"algorithm":"\xff"}', "not UTF-8"),
    "algorithm-int": (b'{"algorithm":1}', "algorithm 'int'"),
    "algorithm-rsa": (b'{"algorithm":"rsa"}', "algorithm 'rsa'"),
    "key-id-int": (b'{"algorithm":"ed25519","key_id":1,"signature":""}', "key_id"),
    "key-id-newline": (
        json.dumps({"algorithm": "ed25519", "key_id": GOOD_ID + "\n", "signature": GOOD_VALUE}),
        "key_id",
    ),
    "signature-list": (
        json.dumps({"algorithm": "ed25519", "key_id": GOOD_ID, "signature": []}),
        "64 base64 bytes",
    ),
    "signature-short": (
        json.dumps({"algorithm": "ed25519", "key_id": GOOD_ID, "signature": "AAAA"}),
        "64 base64 bytes",
    ),
    "signature-non-ascii": (
        json.dumps({"algorithm": "ed25519", "key_id": GOOD_ID, "signature": "é" * 88}),
        "64 base64 bytes",
    ),
}


@pytest.mark.parametrize(
    ("data", "expected"), HOSTILE_SIGNATURES.values(), ids=HOSTILE_SIGNATURES.keys()
)
def test_hostile_signature_member_is_a_format_error(data: object, expected: str) -> None:
    raw = data.encode() if isinstance(data, str) else data
    assert isinstance(raw, bytes)
    with pytest.raises(FormatError) as caught:
        parse_signature(raw)
    assert expected in caught.value.message and caught.value.exit_code == 3
