"""write_bundle: the k3bundle/v1 tar layout, member metadata, reproducibility and split parts."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path
from typing import List

import pytest

from k3bundle.bundler.writer import FAT32_MAX, BundleOutput, parse_size, write_bundle
from k3bundle.installer.errors import UsageError
from k3bundle.installer.format.manifest import MANIFEST_NAME, SIGNATURE_NAME, Manifest
from tests.helpers import VERSION, KeyFiles, make_bundle, make_keys, make_payload

SPLIT = 100_000


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _members(bundle: Path) -> List[tarfile.TarInfo]:
    with tarfile.open(bundle, mode="r:") as tar:
        return tar.getmembers()


def _manifest_bytes(bundle: Path) -> bytes:
    with tarfile.open(bundle, mode="r:") as tar:
        handle = tar.extractfile(MANIFEST_NAME)
        assert handle is not None
        return handle.read()


@pytest.fixture
def key(tmp_path: Path) -> KeyFiles:
    return make_keys(tmp_path / "keys")


def test_bundle_is_an_uncompressed_tar(tmp_path: Path) -> None:
    out = make_bundle(tmp_path)
    head = out.files[0].read_bytes()[:512]
    assert head[257:262] == b"ustar"  # a plain tar header, not gzip/zstd/xz magic
    assert tarfile.is_tarfile(out.files[0])


def test_signed_bundle_members_are_manifest_signature_then_payload_in_manifest_order(
    tmp_path: Path, key: KeyFiles
) -> None:
    out = make_bundle(tmp_path, signer=key)
    names = [m.name for m in _members(out.files[0])]
    manifest = json.loads(_manifest_bytes(out.files[0]))
    assert names == [MANIFEST_NAME, SIGNATURE_NAME, *[f["path"] for f in manifest["files"]]]
    assert len(names) == 6


def test_unsigned_bundle_has_no_signature_member(tmp_path: Path) -> None:
    out = make_bundle(tmp_path)
    names = [m.name for m in _members(out.files[0])]
    manifest = json.loads(_manifest_bytes(out.files[0]))
    assert names == [MANIFEST_NAME, *[f["path"] for f in manifest["files"]]]


def test_manifest_member_bytes_are_canonical_json(tmp_path: Path, key: KeyFiles) -> None:
    data = _manifest_bytes(make_bundle(tmp_path, signer=key).files[0])
    canonical = json.dumps(json.loads(data), sort_keys=True, separators=(",", ":")).encode()
    assert canonical == data
    assert json.loads(data)["format"] == "k3bundle/v1"


def test_members_are_owned_by_root_with_no_names_and_mtime_zero(
    tmp_path: Path, key: KeyFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    members = _members(make_bundle(tmp_path, signer=key).files[0])
    assert {(m.uid, m.gid, m.uname, m.gname, m.mtime) for m in members} == {(0, 0, "", "", 0)}
    assert all(m.isreg() for m in members)


def test_member_mtime_comes_from_source_date_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    members = _members(make_bundle(tmp_path).files[0])
    assert {m.mtime for m in members} == {1700000000}


def test_payload_member_modes_come_from_the_manifest(tmp_path: Path) -> None:
    modes = {m.name: m.mode for m in _members(make_bundle(tmp_path, arches=("amd64",)).files[0])}
    assert modes["amd64/k3s"] == 0o755
    assert modes["amd64/k3s-airgap-images-amd64.tar.zst"] == 0o644


def test_same_inputs_give_byte_identical_unsigned_bundle(tmp_path: Path) -> None:
    first = make_bundle(tmp_path / "a")
    second = make_bundle(tmp_path / "b")
    assert _sha256(first.files[0]) == _sha256(second.files[0])
    assert first.bundle_id == second.bundle_id


def test_same_inputs_give_byte_identical_signed_bundle(tmp_path: Path, key: KeyFiles) -> None:
    first = make_bundle(tmp_path / "a", signer=key)
    second = make_bundle(tmp_path / "b", signer=key)
    assert _sha256(first.files[0]) == _sha256(second.files[0])


def test_same_inputs_give_byte_identical_split_parts(tmp_path: Path, key: KeyFiles) -> None:
    first = make_bundle(tmp_path / "a", signer=key, split=SPLIT)
    second = make_bundle(tmp_path / "b", signer=key, split=SPLIT)
    assert [p.name for p in first.files] == [p.name for p in second.files]
    assert [_sha256(p) for p in first.files] == [_sha256(p) for p in second.files]


def test_different_signing_keys_give_different_bundles(tmp_path: Path, key: KeyFiles) -> None:
    other = make_keys(tmp_path / "keys", "other")
    first = make_bundle(tmp_path / "a", signer=key)
    second = make_bundle(tmp_path / "b", signer=other)
    assert _sha256(first.files[0]) != _sha256(second.files[0])
    assert first.bundle_id == second.bundle_id  # the id is the manifest's hash, not the signer's


def test_bundle_id_is_sha256_of_the_manifest_bytes(tmp_path: Path) -> None:
    out = make_bundle(tmp_path)
    assert out.bundle_id == hashlib.sha256(_manifest_bytes(out.files[0])).hexdigest()


def test_write_bundle_refuses_an_entry_without_a_local_file(tmp_path: Path) -> None:
    payload = make_payload(tmp_path / "payload", ("amd64",))
    manifest = Manifest(VERSION, ("amd64",), tuple(e for _, e in payload.values()))
    with pytest.raises(UsageError, match="amd64/k3s"):
        write_bundle(tmp_path / "out.tar", manifest, {})
    assert not list(tmp_path.glob("out.tar*")) and not list(tmp_path.glob(".out.tar*"))


def _split(tmp_path: Path, key: KeyFiles) -> BundleOutput:
    return make_bundle(tmp_path / "split", signer=key, split=SPLIT)


def test_split_writes_numbered_parts_of_at_most_the_limit(tmp_path: Path, key: KeyFiles) -> None:
    out = _split(tmp_path, key)
    parts = [p for p in out.files if p != out.parts_index]
    assert [p.name for p in parts] == [f"bundle.tar.{i:03d}" for i in range(len(parts))]
    assert len(parts) >= 4
    assert all(p.stat().st_size <= SPLIT for p in parts)
    assert all(p.stat().st_size == SPLIT for p in parts[:-1])
    assert not (tmp_path / "split" / "bundle.tar").exists()  # never the whole archive


def test_parts_index_lists_each_parts_name_size_and_sha256(tmp_path: Path, key: KeyFiles) -> None:
    out = _split(tmp_path, key)
    assert out.parts_index == tmp_path / "split" / "bundle.tar.parts.json"
    doc = json.loads(out.parts_index.read_text())
    parts = [p for p in out.files if p != out.parts_index]
    assert [(p["name"], p["size"], p["sha256"]) for p in doc["parts"]] == [
        (p.name, p.stat().st_size, _sha256(p)) for p in parts
    ]
    assert doc["size"] == sum(p.stat().st_size for p in parts) == out.size


def test_concatenated_parts_equal_the_unsplit_bundle(tmp_path: Path, key: KeyFiles) -> None:
    whole = make_bundle(tmp_path / "whole", signer=key)
    out = _split(tmp_path, key)
    joined = b"".join(p.read_bytes() for p in out.files if p != out.parts_index)
    assert joined == whole.files[0].read_bytes()


def test_split_larger_than_the_bundle_gives_a_single_part(tmp_path: Path) -> None:
    out = make_bundle(tmp_path, split=10 * 1024 * 1024)
    assert [p.name for p in out.files] == ["bundle.tar.000", "bundle.tar.parts.json"]


def test_no_temporary_files_are_left_after_a_write(tmp_path: Path, key: KeyFiles) -> None:
    _split(tmp_path, key)
    assert not [p.name for p in (tmp_path / "split").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("fat32", 4294967295),
        ("FAT32", FAT32_MAX),
        ("700M", 700 * 1024**2),
        ("2G", 2 * 1024**3),
        ("64k", 64 * 1024),
        ("123456", 123456),
    ],
)
def test_parse_size_understands_fat32_units_and_bytes(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "big", "2X", "-5", "1.5G", "G", "0", "1K"])
def test_parse_size_refuses_bad_values_with_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError, match="part size") as caught:
        parse_size(text)
    assert caught.value.exit_code == 2
