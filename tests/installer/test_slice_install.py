"""Slices on the host side: verify, inspect and install accept a slice, say it is one, and refuse
an architecture it leaves out, a partial architecture and a member missing from it."""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path
from typing import Callable, Dict, Tuple

import pytest

from k3bundle.bundler.slicing import slice_bundle
from k3bundle.installer.errors import ArchError, FormatError, IntegrityError
from k3bundle.installer.format.manifest import MANIFEST_NAME, SIGNATURE_NAME, parse
from k3bundle.installer.format.slices import decide_holding
from tests.helpers import KeyFiles, make_bundle, run_installer, run_k3bundle, snapshot
from tests.test_zipapp import Interpreter, pyz, run, stdlib_python  # noqa: F401 - fixtures

ARCHES3 = ("amd64", "arm64", "arm")


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory, signer: KeyFiles) -> Path:
    """A signed three-architecture bundle."""
    folder = tmp_path_factory.mktemp("full")
    return make_bundle(folder, ARCHES3, signer, image_size=4096).files[0]


@pytest.fixture(scope="module")
def amd64_slice(tmp_path_factory: pytest.TempPathFactory, full: Path) -> Path:
    """`k3bundle slice FULL --arch amd64`."""
    output = tmp_path_factory.mktemp("slice")
    return slice_bundle(full, ["amd64"], output).output.files[0]


def install(bundle: Path, root: Path, signer: KeyFiles, arch: str) -> Tuple[int, str, str]:
    """`install BUNDLE --root ROOT --pubkey PUB --arch ARCH`, in process."""
    done = run_installer(
        "install", str(bundle), "--root", str(root), "--pubkey", str(signer.public),
        "--arch", arch,
    )  # fmt: skip
    return done.returncode, done.stdout, done.stderr


def hand_made(full: Path, target: Path, keep: Callable[[str], bool]) -> Path:
    """A copy of `full` holding only the members `keep` accepts (manifest and signature always)."""
    with tarfile.open(full) as source, tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as out:
        for info in source.getmembers():
            if info.name in (MANIFEST_NAME, SIGNATURE_NAME) or keep(info.name):
                out.addfile(info, source.extractfile(info))
    return target


def refused_unchanged(
    bundle: Path, root: Path, signer: KeyFiles, arch: str, code: int, *words: str
) -> str:
    """Install must exit `code` naming `words` and leave ROOT as it was; returns the error."""
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/hostname").write_text("host\n")
    before = snapshot(root)
    returncode, _, stderr = install(bundle, root, signer, arch)
    assert returncode == code, stderr
    assert "Traceback" not in stderr
    for word in words:
        assert word in stderr
    assert snapshot(root) == before
    return stderr


def test_verify_accepts_a_slice_and_says_what_it_installs(
    amd64_slice: Path, signer: KeyFiles
) -> None:
    done = run_k3bundle("verify", str(amd64_slice), "--pubkey", str(signer.public))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"OK: {amd64_slice.name}")
    assert "2 files" in done.stdout  # the amd64 binary and images, not the other arches' four
    assert "It is a slice: it holds amd64 of amd64, arm64, arm and installs only amd64." in (
        done.stdout
    )
    as_json = run_k3bundle("verify", "--json", str(amd64_slice), "--pubkey", str(signer.public))
    assert json.loads(as_json.stdout)["slice"] == {"holds": ["amd64"], "of": list(ARCHES3)}


def test_inspect_describes_a_slice_and_a_full_bundle_as_none(amd64_slice: Path, full: Path) -> None:
    text = run_k3bundle("inspect", str(amd64_slice))
    assert text.returncode == 0, text.stderr
    assert "slice:         holds amd64 of amd64, arm64, arm" in text.stdout
    assert "arm64/k3s-arm64  (not in this slice)" in text.stdout
    assert "amd64/k3s  (not" not in text.stdout
    doc = json.loads(run_k3bundle("inspect", "--json", str(amd64_slice)).stdout)
    assert doc["slice"] == {"holds": ["amd64"], "of": list(ARCHES3)}
    assert json.loads(run_k3bundle("inspect", "--json", str(full)).stdout)["slice"] is None


def test_slice_installs_the_same_tree_as_the_full_bundle(
    amd64_slice: Path, full: Path, signer: KeyFiles, tmp_path: Path
) -> None:
    trees: Dict[str, Dict[str, Tuple[int, str]]] = {}
    for name, bundle in (("slice", amd64_slice), ("full", full)):
        code, stdout, stderr = install(bundle, tmp_path / name, signer, "amd64")
        assert code == 0, stderr
        assert "Installed k3s" in stdout
        trees[name] = snapshot(tmp_path / name)
    assert "usr/local/bin/k3s" in trees["slice"]
    assert trees["slice"] == trees["full"]


def test_slice_refuses_an_architecture_it_leaves_out(
    amd64_slice: Path, signer: KeyFiles, tmp_path: Path
) -> None:
    stderr = refused_unchanged(
        amd64_slice, tmp_path / "root", signer, "arm64", ArchError.exit_code,
        "slice that holds only amd64", "Take the slice for arm64", "or the full bundle",
    )  # fmt: skip
    assert "k3bundle slice BUNDLE --arch arm64" in stderr


def test_slice_missing_a_member_of_its_own_arch_is_refused(
    full: Path, signer: KeyFiles, tmp_path: Path
) -> None:
    # The amd64 slice without its airgap images: it holds only part of amd64.
    bad = hand_made(full, tmp_path / "bad.tar", lambda name: name == "amd64/k3s")
    refused_unchanged(
        bad, tmp_path / "root", signer, "amd64", FormatError.exit_code,
        "amd64/k3s-airgap-images-amd64.tar.zst", "1 of the 2 files of architecture amd64",
    )  # fmt: skip
    done = run_k3bundle("verify", str(bad), "--pubkey", str(signer.public))
    assert done.returncode == FormatError.exit_code, done.stderr


def test_slice_with_half_of_another_arch_is_refused_as_malformed(
    full: Path, signer: KeyFiles, tmp_path: Path
) -> None:
    # amd64 whole, arm64's images without its binary, arm left out: installing amd64 is refused.
    def keep(name: str) -> bool:
        return name.startswith("amd64/") or name == "arm64/k3s-airgap-images-arm64.tar.zst"

    bad = hand_made(full, tmp_path / "half.tar", keep)
    refused_unchanged(
        bad, tmp_path / "root", signer, "amd64", FormatError.exit_code,
        "architecture arm64", "arm64/k3s-arm64",
    )  # fmt: skip
    inspected = run_k3bundle("inspect", str(bad))
    assert inspected.returncode == FormatError.exit_code, inspected.stderr


def test_hand_made_slice_of_whole_arches_installs(
    full: Path, signer: KeyFiles, tmp_path: Path
) -> None:
    # Not made by `k3bundle slice` (another tar writer): whole architectures are all that count.
    made = hand_made(full, tmp_path / "arm.tar", lambda name: name.startswith("arm/"))
    code, _, stderr = install(made, tmp_path / "root", signer, "arm")
    assert code == 0, stderr
    assert (tmp_path / "root/usr/local/bin/k3s").read_bytes().startswith(b"#!/bin/sh")


def test_truncated_slice_is_refused_as_any_truncated_bundle(
    amd64_slice: Path, signer: KeyFiles, tmp_path: Path
) -> None:
    cut = tmp_path / "cut.tar"
    cut.write_bytes(amd64_slice.read_bytes()[: amd64_slice.stat().st_size // 2])
    refused_unchanged(
        cut, tmp_path / "root", signer, "amd64", IntegrityError.exit_code, "truncated"
    )


def test_damaged_member_of_a_slice_is_refused_by_name(
    amd64_slice: Path, signer: KeyFiles, tmp_path: Path
) -> None:
    with tarfile.open(amd64_slice) as archive:
        info = archive.getmember("amd64/k3s-airgap-images-amd64.tar.zst")
    raw = bytearray(amd64_slice.read_bytes())
    raw[info.offset_data + 10] ^= 0xFF
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(raw))
    refused_unchanged(
        bad, tmp_path / "root", signer, "amd64", IntegrityError.exit_code,
        "amd64/k3s-airgap-images-amd64.tar.zst",
    )  # fmt: skip


def test_holding_of_a_partly_read_archive_is_the_full_bundle(full: Path) -> None:
    with tarfile.open(full) as archive:
        manifest = parse(archive.extractfile(MANIFEST_NAME).read())  # type: ignore[union-attr]
    assert decide_holding(manifest, ["amd64/k3s"], False, "b.tar").holds == ARCHES3
    assert not decide_holding(manifest, ["amd64/k3s"], False, "b.tar").is_slice
    with pytest.raises(FormatError, match="none of its architectures"):
        decide_holding(manifest, [MANIFEST_NAME], True, "b.tar")


def test_zipapp_verifies_and_installs_a_slice(
    stdlib_python: Interpreter,  # noqa: F811 - the fixture imported above
    pyz: Path,  # noqa: F811
    amd64_slice: Path,
    full: Path,
    signer: KeyFiles,
    tmp_path: Path,
) -> None:
    verified = run(
        stdlib_python.command(str(pyz), "verify", str(amd64_slice), "--pubkey", str(signer.public))
    )
    assert verified.returncode == 0, verified.stderr
    assert "(openssl)" in verified.stdout and "It is a slice" in verified.stdout
    args = ["install", str(amd64_slice), "--pubkey", str(signer.public), "--arch", "amd64"]
    done = run(stdlib_python.command(str(pyz), *args, "--root", str(tmp_path / "zipapp")))
    assert done.returncode == 0, done.stderr
    reference = [sys.executable, "-m", "k3bundle.bundler", "install", str(full)]
    ref = run([*reference, *args[2:], "--root", str(tmp_path / "full")])
    assert ref.returncode == 0, ref.stderr
    assert snapshot(tmp_path / "zipapp") == snapshot(tmp_path / "full")
    other = run(stdlib_python.command(str(pyz), *args[:-1], "arm", "--root", str(tmp_path / "x")))
    assert other.returncode == ArchError.exit_code, other.stderr
