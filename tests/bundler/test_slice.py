"""`k3bundle slice`: the same signed manifest with one architecture's payload, written like a build
(deterministic tar, split parts, SHA256SUMS), refused for a damaged bundle or a missing arch."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path
from typing import Dict, List

import pytest

from k3bundle.bundler.slicing import slice_name
from k3bundle.installer.errors import ArchError, IntegrityError, UsageError
from k3bundle.installer.format.manifest import MANIFEST_NAME, SIGNATURE_NAME
from k3bundle.installer.format.verify import verify_bundle
from k3bundle.installer.progress import Progress
from tests.helpers import KeyFiles, make_bundle, make_keys, run_k3bundle

NAME = "k3s-v1.31.4-k3s1-amd64-arm64.tar"
EPOCH = 1_700_000_000


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> KeyFiles:
    """The key the bundles are signed with."""
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, signer: KeyFiles) -> Path:
    """A signed amd64 + arm64 bundle named as build names it, with an installer beside it."""
    folder = tmp_path_factory.mktemp("dist")
    with pytest.MonkeyPatch.context() as patch:  # members carry a real mtime the slice keeps
        patch.setenv("SOURCE_DATE_EPOCH", str(EPOCH))
        path = make_bundle(folder, signer=signer, name=NAME, image_size=300_000).files[0]
    (folder / "k3bundle-install.pyz").write_bytes(b"#!/usr/bin/env python3\nstand-in\n")
    return path


def sliced(bundle: Path, output: Path, *args: str) -> Dict[str, object]:
    """Run `k3bundle slice BUNDLE -o OUTPUT --json ARGS`; the JSON it prints."""
    output.mkdir(parents=True, exist_ok=True)
    done = run_k3bundle("slice", str(bundle), "-o", str(output), "--json", *args)
    assert done.returncode == 0, done.stderr
    result: Dict[str, object] = json.loads(done.stdout)
    return result


def members(bundle: Path) -> Dict[str, bytes]:
    """Every member of a tar, in order, with its data."""
    with tarfile.open(bundle) as archive:
        return {i.name: archive.extractfile(i).read() for i in archive}  # type: ignore[union-attr]


def test_slice_names_replace_the_bundle_arches() -> None:
    arches = ("amd64", "arm64")
    assert slice_name(NAME, arches, ["arm64"]) == "k3s-v1.31.4-k3s1-arm64.tar"
    assert slice_name("bundle.tar", arches, ["arm64"]) == "bundle-arm64.tar"
    assert slice_name("site-amd64-arm64.tar", arches, ["amd64", "arm64"]) == (
        "site-amd64-arm64.tar"
    )


def test_slice_keeps_manifest_and_signature_bytes_and_only_its_arch(
    bundle: Path, tmp_path: Path
) -> None:
    result = sliced(bundle, tmp_path / "arm64", "--arch", "arm64")
    path = tmp_path / "arm64" / "k3s-v1.31.4-k3s1-arm64.tar"
    assert result["files"] == [
        str(path), str(tmp_path / "arm64/k3bundle-install.pyz"), str(tmp_path / "arm64/SHA256SUMS")
    ]  # fmt: skip
    full, part = members(bundle), members(path)
    assert list(part) == [MANIFEST_NAME, SIGNATURE_NAME, *(n for n in full if "arm64/" in n)]
    assert part[MANIFEST_NAME] == full[MANIFEST_NAME]
    assert part[SIGNATURE_NAME] == full[SIGNATURE_NAME]
    assert all(part[name] == full[name] for name in part)
    with tarfile.open(path) as archive:
        assert {(i.uid, i.gid, i.uname, i.gname, i.mtime) for i in archive} == {
            (0, 0, "", "", EPOCH)
        }
    # The header members' tar headers are the writer's too: the first block is byte-identical.
    assert path.read_bytes()[:1536] == bundle.read_bytes()[:1536]


def test_slice_reports_size_and_bytes_saved_and_writes_sha256sums(
    bundle: Path, tmp_path: Path
) -> None:
    result = sliced(bundle, tmp_path / "out", "--arch", "amd64")
    path = tmp_path / "out" / "k3s-v1.31.4-k3s1-amd64.tar"
    assert result["size"] == path.stat().st_size
    assert result["bundle_size"] == bundle.stat().st_size
    assert result["saved"] == bundle.stat().st_size - path.stat().st_size > 290_000
    assert result["slice"] == {"holds": ["amd64"], "of": ["amd64", "arm64"]}
    sums = (tmp_path / "out/SHA256SUMS").read_text().splitlines()
    installer = tmp_path / "out/k3bundle-install.pyz"
    assert sums == [  # sorted by name, as build writes it
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}" for p in (installer, path)
    ]
    text = run_k3bundle("slice", str(bundle), "--arch", "amd64", "-o", str(tmp_path / "out"))
    assert text.returncode == 0, text.stderr
    assert str(path) in text.stdout and "Saved " in text.stdout
    assert f"({result['saved']} bytes" in text.stdout


def test_slicing_twice_gives_identical_bytes(bundle: Path, tmp_path: Path) -> None:
    digests: List[str] = []
    for run in ("one", "two"):
        sliced(bundle, tmp_path / run, "--arch", "arm64")
        digests.append((tmp_path / run / "SHA256SUMS").read_text())
    assert digests[0] == digests[1]
    assert (tmp_path / "one/k3s-v1.31.4-k3s1-arm64.tar").read_bytes() == (
        tmp_path / "two/k3s-v1.31.4-k3s1-arm64.tar"
    ).read_bytes()


def test_slice_of_a_split_bundle_written_split_verifies(
    signer: KeyFiles, tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH))  # as the single-file `bundle`
    split = make_bundle(
        tmp_path / "in", signer=signer, name=NAME, split=64 * 1024, image_size=300_000
    )
    assert len(split.files) > 3
    result = sliced(split.files[1], tmp_path / "out", "--arch", "arm64", "--split", "100K")
    files = [Path(str(p)) for p in result["files"]]  # type: ignore[attr-defined]
    index = tmp_path / "out/k3s-v1.31.4-k3s1-arm64.tar.parts.json"
    assert index in files and (tmp_path / "out/k3s-v1.31.4-k3s1-arm64.tar.000") in files
    assert max(p.stat().st_size for p in files if p.suffix[1:].isdigit()) <= 100 * 1024
    summary = verify_bundle(str(index), [str(signer.public)], "/", False, Progress())
    assert summary["slice"] == {"holds": ["arm64"], "of": ["amd64", "arm64"]}
    # The parts joined are the slice of the single-file bundle with the same content.
    whole = sliced(bundle, tmp_path / "whole", "--arch", "arm64")
    joined = b"".join(p.read_bytes() for p in sorted(files) if p.suffix[1:].isdigit())
    assert joined == Path(str(whole["files"][0])).read_bytes()  # type: ignore[index]


def test_slice_refuses_an_arch_the_bundle_lacks(bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    done = run_k3bundle("slice", str(bundle), "--arch", "arm", "-o", str(tmp_path / "out"))
    assert done.returncode == ArchError.exit_code, done.stderr
    assert done.stderr.startswith("Error: the bundle has no k3s binary for architecture arm")
    assert list((tmp_path / "out").iterdir()) == []


def test_slice_of_a_slice_refuses_an_arch_it_left_out(bundle: Path, tmp_path: Path) -> None:
    sliced(bundle, tmp_path / "amd64", "--arch", "amd64")
    (tmp_path / "again").mkdir()
    first = tmp_path / "amd64/k3s-v1.31.4-k3s1-amd64.tar"
    done = run_k3bundle("slice", str(first), "--arch", "arm64", "-o", str(tmp_path / "again"))
    assert done.returncode == ArchError.exit_code, done.stderr
    assert "slice that holds only amd64" in done.stderr


def test_slice_refuses_a_damaged_bundle_and_writes_nothing(bundle: Path, tmp_path: Path) -> None:
    with tarfile.open(bundle) as archive:
        info = archive.getmember("arm64/k3s-airgap-images-arm64.tar.zst")
    raw = bytearray(bundle.read_bytes())
    raw[info.offset_data + 100] ^= 0x01
    (tmp_path / "in").mkdir()
    damaged = tmp_path / "in" / NAME
    damaged.write_bytes(bytes(raw))
    (tmp_path / "out").mkdir()
    done = run_k3bundle("slice", str(damaged), "--arch", "arm64", "-o", str(tmp_path / "out"))
    assert done.returncode == IntegrityError.exit_code, done.stderr
    assert "arm64/k3s-airgap-images-arm64.tar.zst" in done.stderr
    assert "Traceback" not in done.stderr
    assert list((tmp_path / "out").iterdir()) == []
    # The damage lies outside what an amd64 slice copies: that slice is written.
    sliced(damaged, tmp_path / "amd64", "--arch", "amd64")


def test_slice_refuses_a_missing_output_folder_and_the_bundle_folder(
    bundle: Path, tmp_path: Path
) -> None:
    missing = run_k3bundle("slice", str(bundle), "--arch", "arm64", "-o", str(tmp_path / "no"))
    assert missing.returncode == UsageError.exit_code, missing.stderr
    assert "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    own = run_k3bundle("slice", str(bundle), "--arch", "arm64", "-o", str(bundle.parent))
    assert own.returncode == UsageError.exit_code, own.stderr
    assert "folder of its own" in own.stderr
