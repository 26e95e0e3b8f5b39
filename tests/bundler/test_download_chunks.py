"""A downloaded release file is hashed once: its chunk digests (k3bundle/v2) are taken in the
download's own streaming pass, beside the sha256 checked against upstream's sum, so the bundle
writer copies it without a chunk pass and without hashing it whole again. A resumed download
still gets exact digests, and the same inputs make the same build whether the cache was cold or
warm (the up-to-date check, its bundle id included)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List

import pytest

from k3bundle.bundler import uptodate, writer
from k3bundle.bundler.cache import Cache
from k3bundle.bundler.stream_digest import StreamDigest, digest_prefix
from k3bundle.installer.format import DEFAULT_CHUNK, Chunks
from tests.bundler.conftest import BuildRun
from tests.helpers import KeyFiles
from tests.release_server import ReleaseServer, generate_release

SIZE = 2 * DEFAULT_CHUNK + 12_345  # three chunks, the last one short
AIRGAP = "k3s-airgap-images-amd64.tar.zst"


@pytest.fixture
def big_version(release_root: Path, scratch_version: str) -> str:
    """A fresh amd64 release whose airgap tarball spans three chunks."""
    generate_release(release_root, scratch_version, ("amd64",), SIZE, ("tar.zst",))
    return scratch_version


def _slices(path: Path) -> List[str]:
    data = path.read_bytes()
    step = DEFAULT_CHUNK
    return [hashlib.sha256(data[i : i + step]).hexdigest() for i in range(0, len(data), step)]


def _airgap_entry(manifest: Dict[str, Any]) -> Dict[str, Any]:
    return next(e for e in manifest["files"] if e["path"].endswith(AIRGAP))


def _count_rereads(monkeypatch: pytest.MonkeyPatch) -> Dict[str, int]:
    """Count every chunk pass and every whole re-hash the bundle writer starts."""
    calls = {"chunk_pass": 0, "rehash": 0}
    chunk_pass, rehash = writer.hash_chunks, writer._InputChecks.add  # type: ignore[attr-defined]

    def counted_chunks(*args: Any, **kwargs: Any) -> Any:
        calls["chunk_pass"] += 1
        return chunk_pass(*args, **kwargs)

    def counted_add(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls["rehash"] += 1
        return rehash(self, *args, **kwargs)

    monkeypatch.setattr(writer, "hash_chunks", counted_chunks)
    monkeypatch.setattr(writer._InputChecks, "add", counted_add)
    return calls


def test_a_downloaded_file_gets_its_chunk_digests_from_the_download_and_is_not_read_again(
    run_build: BuildRun,
    big_version: str,
    release_root: Path,
    manifest_of: Any,
    find_bundle: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = _count_rereads(monkeypatch)
    code, output = run_build("--version", big_version, "--arch", "amd64")
    assert code == 0, output
    entry = _airgap_entry(manifest_of(tmp_path / "dist"))
    source = release_root / big_version / AIRGAP
    assert entry["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert entry["chunks"] == {"size": DEFAULT_CHUNK, "sha256": _slices(source)}
    assert calls == {"chunk_pass": 0, "rehash": 0}  # nothing was read again


def test_a_warm_build_checks_a_cached_file_again_and_gives_the_same_bytes(
    run_build: BuildRun,
    big_version: str,
    find_bundle: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    args = ("--version", big_version, "--arch", "amd64")
    assert run_build(*args, "-o", str(tmp_path / "cold"))[0] == 0
    calls = _count_rereads(monkeypatch)
    code, output = run_build(*args, "-o", str(tmp_path / "warm"))
    assert code == 0, output
    # from the cache, which may have rotted: chunk digests taken anew and the file re-hashed
    assert calls["chunk_pass"] == 1 and calls["rehash"] >= 1
    cold, warm = find_bundle(tmp_path / "cold"), find_bundle(tmp_path / "warm")
    assert cold.read_bytes() == warm.read_bytes()


def test_a_resumed_download_still_gets_exact_chunk_digests(
    run_build: BuildRun,
    big_version: str,
    release_root: Path,
    server: ReleaseServer,
    manifest_of: Any,
    find_bundle: Any,
    tmp_path: Path,
) -> None:
    # cut inside the second chunk: the resumed transfer re-reads the partial's first bytes
    server.fault(AIRGAP, "drop", after=DEFAULT_CHUNK + 4_321)
    code, output = run_build("--version", big_version, "--arch", "amd64")
    assert code == 0, output
    ranges = [r for _method, r in server.hits_for(AIRGAP) if r]
    assert ranges, "the download was not resumed"
    entry = _airgap_entry(manifest_of(tmp_path / "dist"))
    assert entry["chunks"]["sha256"] == _slices(release_root / big_version / AIRGAP)


def test_a_cold_and_a_warm_build_of_the_same_inputs_are_the_same_build(
    run_build: BuildRun, big_version: str, signer: KeyFiles, tmp_path: Path
) -> None:
    args = ("--version", big_version, "--arch", "amd64", "--sign-key", str(signer.private))
    code, first = run_build(*args, "--json")
    assert code == 0, first
    # cold again: an empty cache, the same output folder
    code, again = run_build(*args, "--json", "--cache-dir", str(tmp_path / "cache2"))
    assert code == 0, again
    assert json.loads(again)["up_to_date"] is False  # another cache: another build record
    code, warm = run_build(*args, "--json", "--cache-dir", str(tmp_path / "cache2"))
    assert code == 0, warm
    assert json.loads(warm)["up_to_date"] is True
    assert json.loads(warm)["bundle_id"] == json.loads(first)["bundle_id"]


def test_a_build_record_without_a_valid_bundle_id_means_the_build_is_written_again(
    run_build: BuildRun, big_version: str, signer: KeyFiles, tmp_path: Path
) -> None:
    args = (
        "--version",
        big_version,
        "--arch",
        "amd64",
        "--json",
        "--sign-key",
        str(signer.private),
    )
    code, first = run_build(*args)
    assert code == 0, first
    cache = Cache(tmp_path / "cache")
    key = uptodate._key(tmp_path / "dist")
    stamp = json.loads(cache.recall(key) or "{}")
    for bad in ("../../etc", 7, None):
        stamp["bundle"]["id"] = bad
        cache.remember(key, json.dumps(stamp))
        code, output = run_build(*args)
        assert code == 0, output
        result = json.loads(output)
        assert result["up_to_date"] is False
        assert result["bundle_id"] == json.loads(first)["bundle_id"]
        stamp = json.loads(cache.recall(key) or "{}")
        assert stamp["bundle"]["id"] == result["bundle_id"]


def test_the_stream_digest_matches_hashlib_for_any_piece_sizes(tmp_path: Path) -> None:
    chunk = 1 << 16
    data = bytes(range(256)) * 1000  # 256,000 bytes: four chunks and a short one
    digest, view, step = StreamDigest(chunk), memoryview(data), 1
    while view:
        digest.update(view[:step])
        view, step = view[step:], step * 2 + 3
    slices = [hashlib.sha256(data[i : i + chunk]).hexdigest() for i in range(0, len(data), chunk)]
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert digest.chunks() == Chunks(chunk, tuple(slices))
    (tmp_path / "f").write_bytes(data)
    resumed = digest_prefix(tmp_path / "f", 100_000, chunk)  # a partial download's prefix
    resumed.update(data[100_000:])
    assert resumed.chunks() == digest.chunks() and resumed.hexdigest() == digest.hexdigest()
    assert StreamDigest(None).chunks() is None  # a registry blob: sha256 only
    exact = StreamDigest(chunk)
    exact.update(data[:chunk])
    assert exact.chunks() is None  # one chunk or less: no chunk digests
