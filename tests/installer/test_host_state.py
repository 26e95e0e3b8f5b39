"""The host's own state: its arch, its data dir, the admin's config, what upgrades remove."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Tuple

import pytest

from tests.helpers import KeyFiles, make_bundle, run_installer, snapshot

NEW_VERSION = "v1.32.0+k3s1"
BIN = "usr/local/bin/k3s"
RECORD = "var/lib/k3bundle/record.json"
Bundles = Tuple[Path, Path]


@pytest.fixture(scope="module")
def two_arch(tmp_path_factory: pytest.TempPathFactory, signer: KeyFiles) -> Bundles:
    """amd64 + arm64 bundles of k3s VERSION and the newer NEW_VERSION."""
    folder = tmp_path_factory.mktemp("two-arch")
    old = make_bundle(folder / "old", signer=signer, image_size=1024)
    new = make_bundle(folder / "new", signer=signer, image_size=1024, version=NEW_VERSION)
    return old.files[0], new.files[0]


def run(bundle: Path, root: Path, signer: KeyFiles, *args: str) -> Any:
    """`install BUNDLE --root ROOT --pubkey PUB ARGS` (no --arch unless given)."""
    return run_installer(
        "install", str(bundle), "--root", str(root), "--pubkey", str(signer.public), *args
    )


def record_of(root: Path) -> Dict[str, Any]:
    """The install record as JSON."""
    doc: Dict[str, Any] = json.loads((root / RECORD).read_text())
    return doc


# --- the architecture -----------------------------------------------------------------------


def test_upgrade_without_arch_keeps_the_installed_architecture(
    two_arch: Bundles, tmp_path: Path, signer: KeyFiles
) -> None:
    old, new = two_arch
    assert run(old, tmp_path, signer, "--arch", "arm64").returncode == 0
    result = run(new, tmp_path, signer)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / BIN).read_text() == f"#!/bin/sh\necho 'stand-in k3s {NEW_VERSION} arm64'\n"
    assert record_of(tmp_path)["arch"] == "arm64"


def test_upgrade_with_another_arch_says_it_changes_the_architecture(
    two_arch: Bundles, tmp_path: Path, signer: KeyFiles
) -> None:
    old, new = two_arch
    assert run(old, tmp_path, signer, "--arch", "arm64").returncode == 0
    result = run(new, tmp_path, signer, "--arch", "amd64")
    assert result.returncode == 0, result.stderr
    assert "note: --arch amd64 changes the installed architecture from arm64" in result.stderr
    assert record_of(tmp_path)["arch"] == "amd64"


def test_upgrade_with_a_bundle_lacking_the_installed_arch_is_refused_without_arch(
    two_arch: Bundles, tmp_path: Path, signer: KeyFiles
) -> None:
    old, _ = two_arch
    amd64_only = make_bundle(
        tmp_path / "amd64", arches=("amd64",), signer=signer, image_size=1024,
        version=NEW_VERSION,
    ).files[0]  # fmt: skip
    root = tmp_path / "root"
    assert run(old, root, signer, "--arch", "arm64").returncode == 0
    before = snapshot(root)
    result = run(amd64_only, root, signer)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[0] == (
        "Error: k3s is installed for arm64 here and the bundle carries only amd64"
    )
    assert snapshot(root) == before
