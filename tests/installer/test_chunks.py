"""k3bundle/v2 chunk digests: parsed strictly, written by the builder, verified on every core."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pytest

from k3bundle.bundler import keys
from k3bundle.bundler.writer import BundleOutput, write_bundle
from k3bundle.installer.errors import FormatError, IntegrityError
from k3bundle.installer.format.chunkhash import slice_segments
from k3bundle.installer.format.manifest import FORMAT, FORMAT_V2, Entry, Manifest, parse
from k3bundle.installer.format.manifest_fields import Chunks
from k3bundle.installer.format.sources import BundleSource
from k3bundle.installer.format.verify import verify_bundle
from k3bundle.installer.progress import Progress
from tests.helpers import KeyFiles, install_amd64, installed, make_payload, snapshot

CHUNK = 1 << 16  # the smallest chunk the format allows: test data stays small
IMAGES = "amd64/k3s-airgap-images-amd64.tar.zst"
IMAGE_BYTES = os.urandom(4 * CHUNK + 1234)  # five chunks, the last one short
PLACED = "var/lib/rancher/k3s/agent/images/k3s-airgap-images-amd64.tar.zst"

Mutation = Callable[[Dict[str, Any]], None]


def _digests(data: bytes, size: int = CHUNK) -> List[str]:
    return [hashlib.sha256(data[i : i + size]).hexdigest() for i in range(0, len(data), size)]


def _chunked_entry(data: bytes = IMAGE_BYTES) -> Entry:
    sha = hashlib.sha256(data).hexdigest()
    chunks = Chunks(CHUNK, tuple(_digests(data)))
    return Entry(IMAGES, len(data), sha, "airgap-images", arch="amd64", chunks=chunks)


def _doc() -> Dict[str, Any]:
    binary = Entry("amd64/k3s", 10, "a" * 64, "k3s-binary", 0o755, "amd64")
    manifest = Manifest("v1.31.4+k3s1", ("amd64",), (binary, _chunked_entry()))
    doc: Dict[str, Any] = json.loads(manifest.to_bytes())
    return doc


def _parse_doc(doc: Dict[str, Any]) -> Manifest:
    return parse(json.dumps(doc).encode())


def test_a_manifest_with_chunks_declares_v2_and_round_trips() -> None:
    doc = _doc()
    assert doc["format"] == FORMAT_V2 == "k3bundle/v2"
    parsed = _parse_doc(doc)
    entry = parsed.entries[1]
    assert entry.chunks is not None and entry.chunks.size == CHUNK
    assert list(entry.chunks.sha256) == _digests(IMAGE_BYTES)
    assert parse(parsed.to_bytes()) == parsed


def test_a_manifest_without_chunks_still_declares_v1_without_a_chunks_field() -> None:
    doc = _doc()
    del doc["files"][1]["chunks"]
    manifest = _parse_doc({**doc, "format": FORMAT})
    assert manifest.to_json()["format"] == FORMAT
    assert b"chunks" not in manifest.to_bytes()


def _chunks(**changes: Any) -> Mutation:
    def mutate(doc: Dict[str, Any]) -> None:
        doc["files"][1]["chunks"].update(changes)

    return mutate


def _set(key: str, value: Any) -> Mutation:
    def mutate(doc: Dict[str, Any]) -> None:
        doc["files"][1][key] = value

    return mutate


def _declare_v1(doc: Dict[str, Any]) -> None:
    doc["format"] = FORMAT


def _extra_key(doc: Dict[str, Any]) -> None:
    doc["files"][1]["chunks"]["algorithm"] = "sha256"


DIGESTS = _digests(IMAGE_BYTES)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_chunks(sha256=DIGESTS[:-1]), "lists 4 chunk digests"),
        (_chunks(sha256=[*DIGESTS, DIGESTS[0]]), "make 5"),
        (_chunks(sha256=[d.upper() for d in DIGESTS]), "not 64 lowercase hex"),
        (_chunks(sha256=[*DIGESTS[:4], "ab"]), "chunk digest 4"),
        (_chunks(sha256=[*DIGESTS[:4], None]), "chunk digest 4"),
        (_chunks(sha256="".join(DIGESTS)), "'sha256' is missing or not a list"),
        (_chunks(size=3 * CHUNK), "not a power of two"),
        (_chunks(size=0), "not a power of two"),
        (_chunks(size=CHUNK // 2), "not a power of two"),
        (_chunks(size=1 << 31), "more than the maximum"),
        (_chunks(size=-CHUNK), "negative"),
        (_chunks(size=True), "not an integer"),
        (_chunks(size=8 * CHUNK, sha256=DIGESTS[:1]), "only 263378 bytes"),
        (_set("chunks", None), "not an object"),
        (_set("chunks", DIGESTS), "not an object"),
        (_extra_key, "not an object of 'size' and 'sha256'"),
        (_declare_v1, "has chunk digests but declares 'k3bundle/v1'"),
    ],
)
def test_malformed_chunks_are_refused_naming_the_file(mutate: Mutation, message: str) -> None:
    doc = _doc()
    mutate(doc)
    with pytest.raises(FormatError) as caught:
        _parse_doc(doc)
    assert message in caught.value.message
    if mutate is not _declare_v1:
        assert IMAGES in caught.value.message


def test_slice_segments_cut_a_range_across_parts() -> None:
    segments = [(Path("a"), 100, 10), (Path("b"), 0, 20)]
    assert slice_segments(segments, 5, 10) == [(Path("a"), 105, 5), (Path("b"), 0, 5)]
    assert slice_segments(segments, 12, 100) == [(Path("b"), 2, 18)]
    assert slice_segments(segments, 30, 5) == []


# The builder and the installer, end to end.


def _build(
    folder: Path, signer: Optional[KeyFiles], split: Optional[int] = None, chunk: int = CHUNK
) -> BundleOutput:
    payload = make_payload(folder / "payload", ("amd64",))
    images, _ = payload[IMAGES]
    images.write_bytes(IMAGE_BYTES)
    files = {path: local for path, (local, _) in payload.items()}
    entries = tuple(
        e if e.path != IMAGES else Entry(IMAGES, len(IMAGE_BYTES), _sha(), e.kind, arch="amd64")
        for _, e in payload.values()
    )
    manifest = Manifest("v1.31.4+k3s1", ("amd64",), entries)
    sign = keys.load_signer(signer.private) if signer else None
    return write_bundle(folder / "bundle.tar", manifest, files, sign, split, chunk=chunk)


def _sha() -> str:
    return hashlib.sha256(IMAGE_BYTES).hexdigest()


def _manifest_of(bundle: Path) -> Manifest:
    with BundleSource(str(bundle)) as source:
        return parse(source.read_header().manifest)


def _member_offset(bundle: Path, member: str) -> int:
    data = bundle.read_bytes()
    return data.index(IMAGE_BYTES[:64]) if member == IMAGES else -1


def test_the_builder_writes_chunk_digests_of_each_large_file(tmp_path: Path) -> None:
    out = _build(tmp_path, None)
    manifest = _manifest_of(out.files[0])
    images = next(e for e in manifest.entries if e.path == IMAGES)
    binary = next(e for e in manifest.entries if e.path != IMAGES)
    assert images.chunks == Chunks(CHUNK, tuple(_digests(IMAGE_BYTES)))
    assert images.sha256 == _sha()  # the whole file's sha256 stays
    assert binary.chunks is None  # smaller than one chunk
    assert b'"format":"k3bundle/v2"' in out.files[0].read_bytes()[:8192]


def test_a_bundle_with_no_file_larger_than_a_chunk_stays_v1(tmp_path: Path) -> None:
    out = _build(tmp_path, None, chunk=1 << 20)
    manifest = _manifest_of(out.files[0])
    assert all(e.chunks is None for e in manifest.entries)
    assert b'"format":"k3bundle/v1"' in out.files[0].read_bytes()[:8192]


def test_chunked_bundles_are_byte_for_byte_reproducible(tmp_path: Path) -> None:
    first = _build(tmp_path / "one", None).files[0].read_bytes()
    second = _build(tmp_path / "two", None).files[0].read_bytes()
    assert first == second


def test_a_chunked_bundle_installs_and_records_the_whole_file_sha256(
    tmp_path: Path, signer: KeyFiles
) -> None:
    bundle = _build(tmp_path, signer).files[0]
    root = tmp_path / "root"
    installed(bundle, root, signer)
    assert (root / PLACED).read_bytes() == IMAGE_BYTES
    record = json.loads((root / "var/lib/k3bundle/record.json").read_text())
    placed = next(f for f in record["files"] if f["path"] == "/" + PLACED)
    assert placed["sha256"] == _sha()


def test_sync_install_of_a_chunked_bundle(tmp_path: Path, signer: KeyFiles) -> None:
    bundle = _build(tmp_path, signer).files[0]
    installed(bundle, tmp_path / "root", signer, "--sync")
    assert (tmp_path / "root" / PLACED).read_bytes() == IMAGE_BYTES


def _tamper_chunk(bundle: Path, index: int) -> None:
    with open(bundle, "r+b") as handle:
        handle.seek(_member_offset(bundle, IMAGES) + index * CHUNK + 7)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))


def test_a_tampered_chunk_is_named_with_its_byte_range_and_nothing_is_placed(
    tmp_path: Path, signer: KeyFiles, outside: Path
) -> None:
    bundle = _build(tmp_path, signer).files[0]
    _tamper_chunk(bundle, 2)
    root = tmp_path / "root"
    root.mkdir()
    before, kept = snapshot(root), snapshot(outside)
    result = install_amd64(bundle, root, signer)
    assert result.returncode == 4, result.stderr
    line = f"{IMAGES} in bundle.tar is corrupted: bytes {2 * CHUNK}-{3 * CHUNK - 1} (chunk 3 of 5)"
    assert line in result.stderr
    assert f"the signed manifest says {_digests(IMAGE_BYTES)[2]}" in result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(root) == before
    assert snapshot(outside) == kept


def test_a_tampered_last_chunk_is_named_too(tmp_path: Path, signer: KeyFiles) -> None:
    bundle = _build(tmp_path, signer).files[0]
    _tamper_chunk(bundle, 4)
    result = install_amd64(bundle, tmp_path / "root", signer)
    assert result.returncode == 4
    assert f"bytes {4 * CHUNK}-{len(IMAGE_BYTES) - 1} (chunk 5 of 5)" in result.stderr
    assert not (tmp_path / "root" / PLACED).exists()


class _Counted(Progress):
    def __init__(self) -> None:
        self.seen: List[int] = []

    def advance(self, count: int) -> None:
        self.seen.append(count)


def test_verify_checks_every_chunk_and_names_the_bad_one(tmp_path: Path, signer: KeyFiles) -> None:
    bundle = _build(tmp_path, signer).files[0]
    progress = _Counted()
    summary = verify_bundle(str(bundle), [str(signer.public)], str(tmp_path), False, progress)
    assert summary["verified"] is True
    assert sum(progress.seen) == sum(f["size"] for f in summary["files"])
    _tamper_chunk(bundle, 1)
    with pytest.raises(IntegrityError) as caught:
        verify_bundle(str(bundle), [str(signer.public)], str(tmp_path), False, Progress())
    assert f"bytes {CHUNK}-{2 * CHUNK - 1} (chunk 2 of 5)" in caught.value.message


def test_a_split_bundle_with_a_chunked_member_installs_and_verifies(
    tmp_path: Path, signer: KeyFiles
) -> None:
    out = _build(tmp_path, signer, split=100_000)  # the image spans three parts
    assert len(out.files) > 3
    root = tmp_path / "root"
    installed(out.files[0], root, signer)
    assert (root / PLACED).read_bytes() == IMAGE_BYTES
    summary = verify_bundle(
        str(out.files[0]), [str(signer.public)], str(tmp_path), False, Progress()
    )
    assert summary["verified"] is True


def test_a_fresh_chunked_file_is_still_hashed_whole_while_it_is_copied(tmp_path: Path) -> None:
    """The installer records the whole-file sha256 after checking only chunks: the builder must
    prove that the bytes it copies are the bytes that sha256 was taken of, even for a file this
    very build just downloaded."""
    payload = make_payload(tmp_path / "payload", ("amd64",))
    images, _ = payload[IMAGES]
    images.write_bytes(IMAGE_BYTES[:-1] + b"\0")  # changed since it was hashed (same size)
    entries = tuple(
        e if e.path != IMAGES else Entry(IMAGES, len(IMAGE_BYTES), _sha(), e.kind, arch="amd64")
        for _, e in payload.values()
    )
    manifest = Manifest("v1.31.4+k3s1", ("amd64",), entries)
    files = {path: local for path, (local, _) in payload.items()}
    with pytest.raises(IntegrityError) as caught:
        write_bundle(tmp_path / "b.tar", manifest, files, fresh=set(files), chunk=CHUNK)
    assert f"{images} changed since it was verified" in caught.value.message
    assert not list(tmp_path.glob("*b.tar*"))


def test_a_reinstall_finds_a_chunked_file_current_by_its_chunks(
    tmp_path: Path, signer: KeyFiles
) -> None:
    bundle = _build(tmp_path, signer).files[0]
    root = tmp_path / "root"
    installed(bundle, root, signer)
    placed = root / PLACED
    inode = placed.stat().st_ino
    installed(bundle, root, signer)
    assert placed.stat().st_ino == inode  # current: left where it was, not placed again
    with open(placed, "r+b") as handle:  # one byte of chunk 4 changed on the host
        handle.seek(3 * CHUNK + 1)
        handle.write(b"\xff" if IMAGE_BYTES[3 * CHUNK + 1] != 0xFF else b"\0")
    installed(bundle, root, signer)
    assert placed.read_bytes() == IMAGE_BYTES
    assert placed.stat().st_ino != inode
