"""config.yaml and registries.yaml: bundle defaults < --config FILE < flags; secrets stay secret."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import pytest

from k3bundle.installer.yaml.subset import parse_yaml
from tests.helpers import CliResult, KeyFiles, make_bundle, make_keys, run_installer, snapshot

CONFIG = "etc/rancher/k3s/config.yaml"
REGISTRIES = "etc/rancher/k3s/registries.yaml"
RECORD = "var/lib/k3bundle/record.json"
TOKEN = "K10-flag-s3cret"
FILE_TOKEN = "K10-file-s3cret"
DEFAULTS = {
    "write-kubeconfig-mode": "0644",
    "disable": ["traefik"],
    "cluster-cidr": "10.42.0.0/16",
    "node-label": ["from=bundle"],
    "tls-san": ["bundle.example"],
}
REGISTRY = {"mirrors": {"docker.io": {"endpoint": ["https://registry.local:5000"]}}}
USER_YAML = """\
# the operator's own settings
disable:
  - servicelb
cluster-cidr: 10.52.0.0/16
node-label:
  - from=file
node-name: file-name
token: K10-file-s3cret
"""
USER_JSON = {
    "disable": ["servicelb"],
    "cluster-cidr": "10.52.0.0/16",
    "node-label": ["from=file"],
    "node-name": "file-name",
    "token": FILE_TOKEN,
}
FLAGS = ("--node-label", "from=flag", "--tls-san", "flag.example", "--node-name", "flag-name")
MERGED = {
    "write-kubeconfig-mode": "0644",  # bundle default, untouched
    "disable": ["servicelb"],  # --config replaces the bundle's value
    "cluster-cidr": "10.52.0.0/16",
    "node-label": ["from=file", "from=flag"],  # flags add to what the file says
    "tls-san": ["bundle.example", "flag.example"],
    "node-name": "flag-name",  # a flag wins over the file
    "token": FILE_TOKEN,
}


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> KeyFiles:
    """The key the bundle is signed with."""
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, signer: KeyFiles) -> Path:
    """An amd64 bundle whose install defaults carry config and registries."""
    folder = tmp_path_factory.mktemp("bundle")
    install = {"config": DEFAULTS, "registries": REGISTRY}
    return make_bundle(folder, ("amd64",), signer, install=install, image_size=1024).files[0]


def install(bundle: Path, root: Path, signer: KeyFiles, *args: str) -> CliResult:
    """An in-process install under ROOT that must succeed."""
    result = run_installer(
        "install", str(bundle), "--root", str(root), "--pubkey", str(signer.public),
        "--arch", "amd64", *args,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result


def config_of(root: Path) -> Dict[str, Any]:
    """config.yaml under ROOT, parsed."""
    return parse_yaml((root / CONFIG).read_text(), CONFIG)


@pytest.fixture(params=["yaml", "json"])
def user_config(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """The operator's --config file, as YAML or as JSON."""
    if request.param == "yaml":
        path = tmp_path / "k3s.yaml"
        path.write_text(USER_YAML)
    else:
        path = tmp_path / "k3s.json"
        path.write_text(json.dumps(USER_JSON))
    return path


def test_bundle_defaults_alone_become_config_yaml_and_registries_yaml(
    bundle: Path, tmp_path: Path, signer: KeyFiles
) -> None:
    install(bundle, tmp_path, signer)
    assert config_of(tmp_path) == DEFAULTS
    assert parse_yaml((tmp_path / REGISTRIES).read_text(), REGISTRIES) == REGISTRY
    for path in (CONFIG, REGISTRIES):
        assert (tmp_path / path).stat().st_mode & 0o777 == 0o600


def test_config_file_merges_over_bundle_defaults_and_flags_over_both(
    bundle: Path, tmp_path: Path, signer: KeyFiles, user_config: Path
) -> None:
    root = tmp_path / "root"
    install(bundle, root, signer, "--config", str(user_config), *FLAGS)
    assert config_of(root) == MERGED
    assert (root / CONFIG).stat().st_mode & 0o777 == 0o600


def test_config_is_kept_by_a_reinstall_that_does_not_repeat_it(
    bundle: Path, tmp_path: Path, signer: KeyFiles, user_config: Path
) -> None:
    root = tmp_path / "root"
    install(bundle, root, signer, "--config", str(user_config), *FLAGS, "--token", TOKEN)
    before = snapshot(root)
    result = install(bundle, root, signer)
    assert result.stdout.startswith("Nothing to do")
    assert snapshot(root) == before and config_of(root) == MERGED


def test_a_new_config_file_replaces_the_one_given_before(
    bundle: Path, tmp_path: Path, signer: KeyFiles, user_config: Path
) -> None:
    root = tmp_path / "root"
    install(bundle, root, signer, "--config", str(user_config))
    second = tmp_path / "second.yaml"
    second.write_text("cluster-cidr: 10.99.0.0/16\n")
    install(bundle, root, signer, "--config", str(second))
    assert config_of(root) == {**DEFAULTS, "cluster-cidr": "10.99.0.0/16"}


def test_unreadable_config_file_is_refused_with_exit_2(
    bundle: Path, tmp_path: Path, signer: KeyFiles
) -> None:
    result = run_installer(
        "install", str(bundle), "--root", str(tmp_path / "root"), "--pubkey",
        str(signer.public), "--config", str(tmp_path / "missing.yaml"),
    )  # fmt: skip
    assert result.returncode == 2 and "missing.yaml" in result.stderr
    assert not (tmp_path / "root").exists()


# --- secrets --------------------------------------------------------------------------------


def test_tokens_never_reach_the_record_or_the_output(
    bundle: Path, tmp_path: Path, signer: KeyFiles, user_config: Path
) -> None:
    root = tmp_path / "root"
    args = ("--config", str(user_config), "--token", TOKEN, "-v")
    dry = install(bundle, root, signer, *args, "--dry-run")
    real = install(bundle, root, signer, *args)
    again = install(bundle, root, signer, "-v")
    for result in (dry, real, again):
        for secret in (TOKEN, FILE_TOKEN):
            assert secret not in result.stdout + result.stderr
    record = (root / RECORD).read_text()
    assert TOKEN not in record and FILE_TOKEN not in record
    assert "K3S_TOKEN" not in record and '"token"' not in record
    # the secrets live only in 0600 files
    assert f'K3S_TOKEN="{TOKEN}"' in (root / "etc/systemd/system/k3s.service.env").read_text()
    holders = [p for p in root.rglob("*") if p.is_file() and FILE_TOKEN in p.read_text("latin-1")]
    assert holders and all(p.stat().st_mode & 0o777 == 0o600 for p in holders)


def test_status_output_holds_no_token(
    bundle: Path, tmp_path: Path, signer: KeyFiles, user_config: Path
) -> None:
    install(bundle, tmp_path, signer, "--config", str(user_config), "--token", TOKEN)
    for args in ((), ("--json",)):
        result = run_installer("status", "--root", str(tmp_path), *args)
        assert result.returncode == 0
        assert TOKEN not in result.stdout and FILE_TOKEN not in result.stdout
