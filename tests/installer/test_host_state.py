"""The host's own state: its arch, its data dir, the admin's config, what upgrades remove."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Tuple

import pytest

from k3bundle.bundler import keys
from k3bundle.bundler.writer import entry_for_file, write_bundle
from k3bundle.installer.manifest import Manifest
from tests.helpers import VERSION, KeyFiles, make_bundle, make_payload, run_installer, snapshot

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


# --- what an upgrade removes ----------------------------------------------------------------

CHART = "var/lib/rancher/k3s/server/static/charts/podinfo-6.0.0.tgz"
HELMCHART = "var/lib/rancher/k3s/server/manifests/k3bundle-podinfo.yaml"
REGISTRIES = "etc/rancher/k3s/registries.yaml"
MIRRORS = {"registries": {"mirrors": {"docker.io": {"endpoint": ["https://r.example:5000"]}}}}


def chart_bundle(folder: Path, signer: KeyFiles, version: str = VERSION) -> Path:
    """An amd64 bundle with registries.yaml, the chart podinfo and its HelmChart manifest."""
    payload = make_payload(folder / "payload", ("amd64",), image_size=1024, version=version)
    chart, helmchart = folder / "podinfo-6.0.0.tgz", folder / "k3bundle-podinfo.yaml"
    chart.write_bytes(b"\x1f\x8b stand-in chart")
    helmchart.write_text("apiVersion: helm.cattle.io/v1\nkind: HelmChart\n")
    files = {path: local for path, (local, _) in payload.items()}
    files.update({"charts/podinfo-6.0.0.tgz": chart, "manifests/k3bundle-podinfo.yaml": helmchart})
    entries = [entry for _, entry in payload.values()] + [
        entry_for_file(chart, "charts/podinfo-6.0.0.tgz", "chart"),
        entry_for_file(helmchart, "manifests/k3bundle-podinfo.yaml", "helmchart-manifest"),
    ]
    manifest = Manifest(version, ("amd64",), tuple(entries), install=MIRRORS)
    sign = keys.load_signer(signer.private)
    return write_bundle(folder / "bundle.tar", manifest, files, sign).files[0]


@pytest.fixture(scope="module")
def dropping(tmp_path_factory: pytest.TempPathFactory, signer: KeyFiles) -> Bundles:
    """A bundle with a chart and registries.yaml, and a newer one without either."""
    folder = tmp_path_factory.mktemp("dropping")
    old = chart_bundle(folder / "old", signer)
    new = make_bundle(folder / "new", ("amd64",), signer, image_size=1024, version=NEW_VERSION)
    return old, new.files[0]


REMOVED = [f"/{CHART}", f"/{HELMCHART}", f"/{REGISTRIES}"]
RELEASE_NOTE = (
    "note: the chart podinfo is no longer in the bundle; k3s keeps the deployed release until "
    "'kubectl delete helmchart podinfo -n kube-system' (helm then uninstalls it)"
)


def test_upgrade_dry_run_lists_every_removal_and_changes_nothing(
    dropping: Bundles, tmp_path: Path, signer: KeyFiles
) -> None:
    old, new = dropping
    assert run(old, tmp_path, signer).returncode == 0
    before = snapshot(tmp_path)
    result = run(new, tmp_path, signer, "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert sorted(line for line in lines if line.startswith("would remove")) == [
        f"would remove {path}" for path in sorted(REMOVED)
    ]
    assert RELEASE_NOTE in lines
    assert snapshot(tmp_path) == before


def test_upgrade_removes_what_the_new_bundle_lacks_and_says_so(
    dropping: Bundles, tmp_path: Path, signer: KeyFiles
) -> None:
    old, new = dropping
    assert run(old, tmp_path, signer).returncode == 0
    result = run(new, tmp_path, signer)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert sorted(x for x in lines if x.startswith("removed ")) == [
        f"removed {path}" for path in sorted(REMOVED)
    ]
    assert RELEASE_NOTE in lines
    assert not any((tmp_path / path).exists() for path in (CHART, HELMCHART, REGISTRIES))
