"""The host's own state: its arch, its data dir, the admin's config, what upgrades remove."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Tuple

import pytest

from k3bundle.bundler import keys
from k3bundle.bundler.writer import entry_for_file, write_bundle
from k3bundle.installer.format.manifest import Manifest
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


# admin-config.json too: with no config.yaml or registries.yaml left, no admin's keys to keep.
REMOVED = [f"/{CHART}", f"/{HELMCHART}", f"/{REGISTRIES}", "/var/lib/k3bundle/admin-config.json"]
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


# --- k3s's data dir -------------------------------------------------------------------------

SRV_IMAGES = "srv/k3s/agent/images"
SRV_CHARTS = "srv/k3s/server/static/charts"
SRV_MANIFESTS = "srv/k3s/server/manifests"


def write_config(folder: Path, text: str) -> Path:
    """A --config file holding `text`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "k3s-config.yaml"
    path.write_text(text)
    return path


def test_data_dir_from_config_places_images_charts_manifests_and_cache_there(
    dropping: Bundles, tmp_path: Path, signer: KeyFiles
) -> None:
    config = write_config(tmp_path / "in", "data-dir: /srv/k3s\n")
    root = tmp_path / "root"
    result = run(dropping[0], root, signer, "--config", str(config), "--image-cache")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (root / SRV_IMAGES).iterdir()) == [
        ".cache.json", "k3s-airgap-images-amd64.tar.zst",
    ]  # fmt: skip
    assert [p.name for p in (root / SRV_CHARTS).iterdir()] == ["podinfo-6.0.0.tgz"]
    assert [p.name for p in (root / SRV_MANIFESTS).iterdir()] == ["k3bundle-podinfo.yaml"]
    assert not (root / "var/lib/rancher").exists()
    for script in ("k3s-killall.sh", "k3s-uninstall.sh"):
        text = (root / "usr/local/bin" / script).read_text()
        assert '[ -n "${K3S_DATA_DIR:-}" ] || K3S_DATA_DIR=/srv/k3s\n' in text
    assert record_of(root)["options"]["data_dir"] == "/srv/k3s"
    assert record_of(root)["ensured"] == ["/srv/k3s/agent/images/.cache.json"]


def test_data_dir_from_the_environment_is_honoured_and_uninstall_removes_it_all(
    dropping: Bundles, tmp_path: Path, signer: KeyFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("K3S_DATA_DIR", "/srv/k3s")
    assert run(dropping[0], tmp_path, signer).returncode == 0
    assert (tmp_path / SRV_IMAGES / "k3s-airgap-images-amd64.tar.zst").is_file()
    status = run_installer("status", "--root", str(tmp_path), "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["intact"] is True
    result = run_installer("uninstall", "--root", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "srv").exists()


def test_data_dir_from_the_bundle_defaults_is_honoured(tmp_path: Path, signer: KeyFiles) -> None:
    install = {"config": {"data-dir": "/srv/k3s"}}
    bundle = make_bundle(tmp_path / "b", ("amd64",), signer, install=install, image_size=1024)
    assert run(bundle.files[0], tmp_path / "root", signer).returncode == 0
    assert (tmp_path / "root" / SRV_IMAGES / "k3s-airgap-images-amd64.tar.zst").is_file()


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("/", "it is the root folder"),
        ("srv/k3s", "it is not an absolute, normalised path"),
        ("/srv/../k3s", "it is not an absolute, normalised path"),
        ("/etc/k3s", "it is inside /etc"),
        ("/var/lib/k3bundle/data", "it is inside /var/lib/k3bundle"),
    ],
)
def test_data_dir_that_cannot_be_used_is_refused_with_nothing_changed(
    small_bundle: Path, tmp_path: Path, signer: KeyFiles, value: str, problem: str
) -> None:
    config = write_config(tmp_path / "in", f"data-dir: {json.dumps(value)}\n")
    root = tmp_path / "root"
    root.mkdir()
    result = run(small_bundle, root, signer, "--config", str(config), "--arch", "amd64")
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[0] == (
        f"Error: k3s's data dir {value!r} (from data-dir in config.yaml) cannot be used: {problem}"
    )
    assert snapshot(root) == {}


def test_record_naming_a_payload_outside_its_data_dir_is_refused(
    dropping: Bundles, tmp_path: Path, signer: KeyFiles
) -> None:
    config = write_config(tmp_path / "in", "data-dir: /srv/k3s\n")
    root = tmp_path / "root"
    assert run(dropping[0], root, signer, "--config", str(config)).returncode == 0
    record = record_of(root)
    record["options"]["data_dir"] = "/var/lib/rancher/k3s"
    (root / RECORD).write_text(json.dumps(record))
    result = run_installer("status", "--root", str(root))
    assert result.returncode != 0
    assert "a file k3bundle never places" in result.stderr.splitlines()[0]


# --- the admin's own config.yaml and registries.yaml ----------------------------------------

CONFIG = "etc/rancher/k3s/config.yaml"
ADMIN = 'node-name: admin-node\ntoken-file: /root/token\nwrite-kubeconfig-mode: "0600"\n'


def admin_root(tmp_path: Path, text: str = ADMIN, name: str = CONFIG) -> Path:
    """A root whose admin wrote `text` to `name` by hand."""
    root = tmp_path / "root"
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(text)
    return root


def layered_bundle(folder: Path, signer: KeyFiles, config: Dict[str, Any]) -> Path:
    """An amd64 bundle whose install.config is `config`."""
    out = make_bundle(folder, ("amd64",), signer, install={"config": config}, image_size=1024)
    return out.files[0]


def test_first_install_keeps_the_admins_keys_over_the_bundles_defaults(
    small_bundle: Path, tmp_path: Path, signer: KeyFiles
) -> None:
    root = admin_root(tmp_path)
    result = run(small_bundle, root, signer, "--arch", "amd64", "--tls-san", "k3s.example")
    assert result.returncode == 0, result.stderr
    assert (root / CONFIG).read_text() == (
        '"node-name": "admin-node"\n'
        '"tls-san":\n  - "k3s.example"\n'
        '"token-file": "/root/token"\n'
        '"write-kubeconfig-mode": "0600"\n'
    )


def test_config_and_flags_win_over_the_admins_keys(
    small_bundle: Path, tmp_path: Path, signer: KeyFiles
) -> None:
    root = admin_root(tmp_path)
    config = write_config(tmp_path / "in", "token-file: /etc/k3s-token\nnode-name: from-config\n")
    result = run(
        small_bundle, root, signer, "--arch", "amd64", "--config", str(config),
        "--node-name", "from-flag",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (root / CONFIG).read_text() == (
        '"node-name": "from-flag"\n'
        '"token-file": "/etc/k3s-token"\n'
        '"write-kubeconfig-mode": "0600"\n'
    )


BOTH = ["bundle.example", "user.example"]


@pytest.mark.parametrize(
    ("bundle", "user", "expected"),
    [
        ({"tls-san+": ["bundle.example"]}, "tls-san: [user.example]\n", ["user.example"]),
        ({"tls-san": ["bundle.example"]}, "tls-san+: [user.example]\n", BOTH),
        ({"tls-san+": ["bundle.example"]}, "tls-san+: [user.example]\n", BOTH),
    ],
    ids=["plain-replaces-append", "append-extends-plain", "append-extends-append"],
)
def test_key_plus_is_resolved_so_a_higher_layer_replaces_or_appends(
    tmp_path: Path, signer: KeyFiles, bundle: Dict[str, Any], user: str, expected: Any
) -> None:
    config = write_config(tmp_path / "in", user)
    source = layered_bundle(tmp_path / "b", signer, bundle)
    result = run(source, tmp_path / "root", signer, "--config", str(config), "--arch", "amd64")
    assert result.returncode == 0, result.stderr
    lines = "".join(f'  - "{name}"\n' for name in expected)
    assert (tmp_path / "root" / CONFIG).read_text() == f'"tls-san":\n{lines}'


def test_upgrade_keeps_what_the_admin_added_to_the_merged_file(
    tmp_path: Path, signer: KeyFiles
) -> None:
    old = layered_bundle(tmp_path / "old", signer, {"selinux": False, "node-label": ["a=1"]})
    root = tmp_path / "root"
    assert run(old, root, signer, "--arch", "amd64").returncode == 0
    with (root / CONFIG).open("a") as stream:
        stream.write("node-ip: 10.0.0.5\n")
    new = make_bundle(
        tmp_path / "new", ("amd64",), signer, install={"config": {"selinux": True}},
        image_size=1024, version=NEW_VERSION,
    ).files[0]  # fmt: skip
    result = run(new, root, signer)
    assert result.returncode == 0, result.stderr
    assert (root / CONFIG).read_text() == '"node-ip": "10.0.0.5"\n"selinux": true\n'
    assert f'/{CONFIG}: - node-label: ["a=1"]' in result.stderr.splitlines()


def test_dry_run_lists_each_config_key_that_changes_and_changes_nothing(
    small_bundle: Path, tmp_path: Path, signer: KeyFiles
) -> None:
    root = admin_root(tmp_path, "node-name: admin-node\ntoken: s3cret\n")
    before = snapshot(root)
    args = ("--arch", "amd64", "--dry-run", "--node-name", "n1")
    result = run(small_bundle, root, signer, *args)
    assert result.returncode == 0, result.stderr
    changes = [line for line in result.stderr.splitlines() if line.startswith(f"/{CONFIG}:")]
    assert changes == [
        f'/{CONFIG}: ~ node-name: "admin-node" -> "n1"',
        f'/{CONFIG}: + write-kubeconfig-mode: "0644"',
    ]
    assert "s3cret" not in result.stderr
    assert snapshot(root) == before


def test_an_admin_file_the_reader_cannot_read_is_refused_not_overwritten(
    small_bundle: Path, tmp_path: Path, signer: KeyFiles
) -> None:
    root = admin_root(tmp_path, "base: &anchor {a: 1}\nother: *anchor\n")
    before = snapshot(root)
    result = run(small_bundle, root, signer, "--arch", "amd64")
    assert result.returncode == 2, result.stderr
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"Error: cannot merge k3bundle's settings into /{CONFIG}: ")
    assert snapshot(root) == before


def test_the_admins_registries_entries_stay_beside_the_bundles(
    dropping: Bundles, tmp_path: Path, signer: KeyFiles
) -> None:
    mine = "configs:\n  r.example:5000:\n    auth: {username: me, password: pw}\n"
    root = admin_root(tmp_path, mine, REGISTRIES)
    assert run(dropping[0], root, signer).returncode == 0
    assert (root / REGISTRIES).read_text() == (
        '"configs":\n  "r.example:5000":\n    "auth":\n      "password": "pw"\n'
        '      "username": "me"\n'
        '"mirrors":\n  "docker.io":\n    "endpoint":\n      - "https://r.example:5000"\n'
    )


def test_a_drop_in_data_dir_moves_the_payload_and_a_drop_in_override_is_named(
    small_bundle: Path, tmp_path: Path, signer: KeyFiles
) -> None:
    drop_in = "etc/rancher/k3s/config.yaml.d/50-site.yaml"
    root = admin_root(tmp_path, "data-dir: /srv/k3s\nnode-name: site\n", drop_in)
    result = run(small_bundle, root, signer, "--arch", "amd64", "--node-name", "n1")
    assert result.returncode == 0, result.stderr
    assert (root / SRV_IMAGES / "k3s-airgap-images-amd64.tar.zst").is_file()
    assert f"note: /{drop_in} sets node-name after config.yaml; k3s uses its value" in (
        result.stderr.splitlines()
    )


# --- values mean to k3s what they meant -----------------------------------------------------


def test_config_values_are_read_as_k3s_reads_them_yaml_1_1(
    small_bundle: Path, tmp_path: Path, signer: KeyFiles
) -> None:
    config = write_config(tmp_path / "in", "selinux: yes\nprotect-kernel-defaults: off\n")
    root = tmp_path / "root"
    assert (
        run(small_bundle, root, signer, "--arch", "amd64", "--config", str(config)).returncode == 0
    )
    assert (root / CONFIG).read_text() == (
        '"protect-kernel-defaults": false\n"selinux": true\n"write-kubeconfig-mode": "0644"\n'
    )
