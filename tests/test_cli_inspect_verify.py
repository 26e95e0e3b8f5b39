"""`k3bundle inspect` and `k3bundle verify` end to end, as a user runs them."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any, Dict, Optional

import pytest

from k3bundle.bundler import keys
from k3bundle.bundler.writer import BundleOutput, write_bundle
from k3bundle.installer.format.manifest import Manifest
from tests.helpers import VERSION, KeyFiles, make_bundle, make_keys, make_payload, run_k3bundle

SPLIT = 100_000
URL = "https://github.com/k3s-io/k3s/releases/download/v1.31.4%2Bk3s1/"


@pytest.fixture
def key(tmp_path: Path) -> KeyFiles:
    return make_keys(tmp_path / "keys")


def _bundle_with_sources(
    folder: Path, signer: KeyFiles, split: Optional[int] = None
) -> BundleOutput:
    """A two-arch bundle whose entries record where each file came from."""
    payload = make_payload(folder / "payload", ("amd64", "arm64"))
    entries = tuple(
        dataclasses.replace(entry, source={"url": URL + entry.name, "sha256": entry.sha256})
        for _, entry in payload.values()
    )
    manifest = Manifest(VERSION, ("amd64", "arm64"), entries)
    files = {path: local for path, (local, _) in payload.items()}
    return write_bundle(
        folder / "bundle.tar", manifest, files, keys.load_signer(signer.private), split
    )


def _inspect_json(bundle: Path) -> Dict[str, Any]:
    done = run_k3bundle("inspect", "--json", str(bundle))
    assert done.returncode == 0, done.stderr
    doc: Dict[str, Any] = json.loads(done.stdout)
    return doc


def _verify(bundle: Path, key: KeyFiles, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_k3bundle("verify", str(bundle), "--pubkey", str(key.public), *extra)


def _corrupt_payload_byte(bundle: Path, member: str) -> None:
    with tarfile.open(bundle) as tar:
        at = tar.getmember(member).offset_data + 1000
    data = bytearray(bundle.read_bytes())
    data[at] ^= 0xFF
    bundle.write_bytes(bytes(data))


def test_inspect_json_describes_version_arches_files_and_signer(
    tmp_path: Path, key: KeyFiles
) -> None:
    out = _bundle_with_sources(tmp_path, key)
    doc = _inspect_json(out.files[0])
    assert doc["k3s_version"] == VERSION
    assert doc["architectures"] == ["amd64", "arm64"]
    assert doc["signed_by"] == key.key_id
    assert doc["bundle_id"] == out.bundle_id
    assert doc["parts"] == []
    by_path = {f["path"]: f for f in doc["files"]}
    binary = by_path["amd64/k3s"]
    assert binary["kind"] == "k3s-binary" and binary["arch"] == "amd64"
    assert binary["source"]["url"] == URL + "k3s"
    images = by_path["arm64/k3s-airgap-images-arm64.tar.zst"]
    assert (images["kind"], images["arch"], images["size"]) == ("airgap-images", "arm64", 200_000)
    local = tmp_path / "payload" / "k3s-airgap-images-arm64.tar.zst"
    assert images["sha256"] == images["source"]["sha256"]
    assert images["size"] == local.stat().st_size


def test_inspect_text_lists_version_arches_signer_and_each_file(
    tmp_path: Path, key: KeyFiles
) -> None:
    out = _bundle_with_sources(tmp_path, key)
    done = run_k3bundle("inspect", str(out.files[0]))
    assert done.returncode == 0, done.stderr
    assert VERSION in done.stdout
    assert "amd64, arm64" in done.stdout
    assert key.key_id in done.stdout
    for entry in _inspect_json(out.files[0])["files"]:
        assert entry["path"] in done.stdout
        assert entry["sha256"] in done.stdout
        assert entry["kind"] in done.stdout
    assert URL + "k3s-arm64" in done.stdout


def test_inspect_lists_the_parts_of_a_split_bundle(tmp_path: Path, key: KeyFiles) -> None:
    out = _bundle_with_sources(tmp_path, key, split=SPLIT)
    parts = [p for p in out.files if p != out.parts_index]
    doc = _inspect_json(tmp_path / "bundle.tar.000")
    assert [(p["name"], p["size"]) for p in doc["parts"]] == [
        (p.name, p.stat().st_size) for p in parts
    ]
    text = run_k3bundle("inspect", str(out.parts_index)).stdout
    assert all(p.name in text for p in parts)


def test_inspect_works_on_an_unsigned_bundle_without_any_key(tmp_path: Path) -> None:
    out = make_bundle(tmp_path)
    doc = _inspect_json(out.files[0])
    assert doc["signed_by"] is None
    assert doc["k3s_version"] == VERSION
    text = run_k3bundle("inspect", str(out.files[0]))
    assert text.returncode == 0 and "NOT SIGNED" in text.stdout


def test_inspect_does_not_hash_the_payload_but_verify_does(tmp_path: Path, key: KeyFiles) -> None:
    bundle = make_bundle(tmp_path, signer=key).files[0]
    _corrupt_payload_byte(bundle, "amd64/k3s-airgap-images-amd64.tar.zst")
    assert run_k3bundle("inspect", str(bundle)).returncode == 0
    done = _verify(bundle, key)
    assert done.returncode == 4
    assert "is corrupted" in done.stderr and "amd64/k3s-airgap-images-amd64.tar.zst" in done.stderr


def test_verify_accepts_a_good_bundle(tmp_path: Path, key: KeyFiles) -> None:
    bundle = make_bundle(tmp_path, signer=key).files[0]
    done = _verify(bundle, key)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OK: bundle.tar")
    assert key.key_id in done.stdout


@pytest.mark.parametrize("given", ["bundle.tar.000", "bundle.tar.parts.json"])
def test_verify_accepts_a_split_bundle_by_first_part_or_index(
    tmp_path: Path, key: KeyFiles, given: str
) -> None:
    make_bundle(tmp_path, signer=key, split=SPLIT)
    done = _verify(tmp_path / given, key)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"OK: {given}")


def test_verify_json_reports_verified_true_and_the_signer(tmp_path: Path, key: KeyFiles) -> None:
    out = make_bundle(tmp_path, signer=key)
    done = _verify(out.files[0], key, "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["verified"] is True
    assert doc["signed_by"] == key.key_id
    assert doc["bundle_id"] == out.bundle_id
    assert doc["k3s_version"] == VERSION


def test_verify_refuses_an_unsigned_bundle_unless_allowed(tmp_path: Path, key: KeyFiles) -> None:
    bundle = make_bundle(tmp_path).files[0]
    refused = _verify(bundle, key)
    assert refused.returncode == 5 and "not signed" in refused.stderr
    allowed = _verify(bundle, key, "--allow-unsigned", "--json")
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)["signed_by"] is None


def test_verify_without_a_trusted_key_is_refused(tmp_path: Path, key: KeyFiles) -> None:
    bundle = make_bundle(tmp_path, signer=key).files[0]
    done = run_k3bundle("verify", str(bundle), "--root", str(tmp_path / "empty-root"))
    assert done.returncode == 5
    assert "--pubkey" in done.stderr


def _bundle_with(folder: Path, signer: KeyFiles, **fields: Any) -> Path:
    """A signed amd64 bundle whose manifest carries `fields` (install=..., extra=...)."""
    payload = make_payload(folder / "payload", ("amd64",), image_size=1024)
    entries = tuple(entry for _, entry in payload.values())
    manifest = Manifest(VERSION, ("amd64",), entries, **fields)
    files = {path: local for path, (local, _) in payload.items()}
    out = write_bundle(folder / "bundle.tar", manifest, files, keys.load_signer(signer.private))
    return out.files[0]


def test_inspect_text_lists_images_and_charts_of_the_manifest(
    tmp_path: Path, key: KeyFiles
) -> None:
    images = [{"name": "docker.io/library/nginx:1.27", "digest": "sha256:" + "a" * 64,
               "arches": ["amd64"], "size": 2048}]  # fmt: skip
    charts = [{"name": "podinfo", "version": "6.7.0", "namespace": "apps"}]
    bundle = _bundle_with(tmp_path, key, extra={"images": images, "charts": charts})
    done = run_k3bundle("inspect", str(bundle))
    assert done.returncode == 0, done.stderr
    assert "image:         docker.io/library/nginx:1.27 (amd64, 2.0 KiB)" in done.stdout
    assert "chart:         podinfo 6.7.0 -> namespace apps" in done.stdout


WRONG_SHAPES = {
    "images-int": {"extra": {"images": 5}},
    "charts-of-ints": {"extra": {"charts": [1]}},
    "image-without-name": {"extra": {"images": [{"digest": "d", "arches": [], "size": 1}]}},
    "config-list": {"install": {"config": []}},
    "registries-string": {"install": {"registries": "mirror"}},
}


@pytest.mark.parametrize("fields", WRONG_SHAPES.values(), ids=WRONG_SHAPES.keys())
def test_inspect_and_verify_refuse_wrong_manifest_shapes_with_exit_3(
    tmp_path: Path, key: KeyFiles, fields: Dict[str, Any]
) -> None:
    bundle = _bundle_with(tmp_path, key, **fields)
    for done in (run_k3bundle("inspect", str(bundle)), _verify(bundle, key)):
        assert done.returncode == 3, done.stderr
        assert done.stderr.startswith("Error: k3bundle.json") and "Traceback" not in done.stderr
