"""Roles: a server (first, HA-initialising or joining) and an agent, with upstream's checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List

import pytest

from k3bundle.bundler import keys
from k3bundle.bundler.writer import entry_for_file, write_bundle
from k3bundle.installer import install as install_module
from k3bundle.installer.errors import UsageError
from k3bundle.installer.manifest import Manifest
from k3bundle.installer.plan import Options
from k3bundle.installer.progress import Progress
from tests.helpers import (
    VERSION,
    KeyFiles,
    Recorder,
    installed,
    make_keys,
    make_payload,
    snapshot,
)
from tests.helpers import (
    install_amd64 as install,
)

SYSTEMD = "etc/systemd/system"
BIN = "usr/local/bin"
CHART = "var/lib/rancher/k3s/server/static/charts/traefik-27.0.0.tgz"
HELMCHART = "var/lib/rancher/k3s/server/manifests/traefik.yaml"
SERVER_URL = "https://10.0.0.1:6443"
TOKEN = "K10-role-s3cret"


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> KeyFiles:
    """The key the bundle is signed with."""
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, signer: KeyFiles) -> Path:
    """An amd64 bundle that also carries a chart and its HelmChart manifest."""
    folder = tmp_path_factory.mktemp("bundle")
    payload = make_payload(folder / "payload", ("amd64",), image_size=1024)
    chart = folder / "traefik-27.0.0.tgz"
    chart.write_bytes(b"\x1f\x8b stand-in chart")
    helmchart = folder / "traefik.yaml"
    helmchart.write_text("apiVersion: helm.cattle.io/v1\nkind: HelmChart\n")
    files = {path: local for path, (local, _) in payload.items()}
    files["charts/traefik-27.0.0.tgz"] = chart
    files["manifests/traefik.yaml"] = helmchart
    entries = [entry for _, entry in payload.values()] + [
        entry_for_file(chart, "charts/traefik-27.0.0.tgz", "chart"),
        entry_for_file(helmchart, "manifests/traefik.yaml", "helmchart-manifest"),
    ]
    manifest = Manifest(VERSION, ("amd64",), tuple(entries))
    out = write_bundle(folder / "bundle.tar", manifest, files, keys.load_signer(signer.private))
    return out.files[0]


def exec_start(unit: str) -> List[str]:
    """The words of the unit's ExecStart (continuation lines joined, quotes dropped)."""
    lines = unit.split("ExecStart=", 1)[1].splitlines()
    return [line.strip().rstrip("\\").strip().strip("'") for line in lines if line.strip()]


# --- upstream's checks ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--role", "agent"], "an agent needs --server https://HOST:6443"),
        (["--role", "agent", "--server", "http://10.0.0.1:6443", "--token", TOKEN], "https://"),
        (["--server", "10.0.0.1:6443", "--token", TOKEN], "is not an https:// URL"),
        (["--role", "agent", "--server", SERVER_URL], f"joining {SERVER_URL} needs the cluster"),
        (["--server", SERVER_URL], f"joining {SERVER_URL} needs the cluster token"),
    ],
    ids=["agent-no-server", "agent-http", "join-no-scheme", "agent-no-token", "join-no-token"],
)
def test_install_refuses_a_role_upstream_refuses_and_writes_nothing(
    bundle: Path, tmp_path: Path, signer: KeyFiles, args: List[str], message: str
) -> None:
    (tmp_path / "etc").mkdir()
    before = snapshot(tmp_path)
    result = install(bundle, tmp_path, signer, *args)
    assert result.returncode == UsageError.exit_code
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert TOKEN not in result.stderr + result.stdout
    assert snapshot(tmp_path) == before


def test_agent_needs_no_token_check_when_the_environment_gives_one(
    bundle: Path, tmp_path: Path, signer: KeyFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("K3S_TOKEN", TOKEN)  # install.sh reads K3S_TOKEN from the environment
    installed(bundle, tmp_path, signer, "--role", "agent", "--server", SERVER_URL)
    env = (tmp_path / SYSTEMD / "k3s-agent.service.env").read_text().splitlines()
    assert f'K3S_TOKEN="{TOKEN}"' in env


# --- agent ----------------------------------------------------------------------------------


def test_agent_gets_its_unit_env_and_uninstall_script_and_no_server_files(
    bundle: Path, tmp_path: Path, signer: KeyFiles
) -> None:
    result = installed(
        bundle, tmp_path, signer, "--role", "agent", "--server", SERVER_URL, "--token", TOKEN
    )
    unit = (tmp_path / SYSTEMD / "k3s-agent.service").read_text()
    assert exec_start(unit)[:2] == ["/usr/local/bin/k3s", "agent"]
    env = (tmp_path / SYSTEMD / "k3s-agent.service.env").read_text().splitlines()
    assert f'K3S_URL="{SERVER_URL}"' in env and f'K3S_TOKEN="{TOKEN}"' in env
    assert (tmp_path / SYSTEMD / "k3s-agent.service.env").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "usr/local/bin/k3s-agent-uninstall.sh").stat().st_mode & 0o777 == 0o755
    wants = tmp_path / SYSTEMD / "multi-user.target.wants/k3s-agent.service"
    assert wants.is_symlink()
    for server_only in (CHART, HELMCHART, f"{SYSTEMD}/k3s.service", f"{BIN}/k3s-uninstall.sh"):
        assert not (tmp_path / server_only).exists()
    assert not (tmp_path / "var/lib/rancher/k3s/server").exists()
    assert "skipped charts/traefik-27.0.0.tgz" in result.stderr
    record = json.loads((tmp_path / "var/lib/k3bundle/record.json").read_text())
    assert record["role"] == "agent" and record["options"]["server_url"] == SERVER_URL
    assert TOKEN not in json.dumps(record)


def test_agent_with_token_file_gets_k3s_token_file_in_its_env(
    bundle: Path, tmp_path: Path, signer: KeyFiles
) -> None:
    token_file = tmp_path / "node-token"
    token_file.write_text(TOKEN)
    root = tmp_path / "root"
    args = ("--role", "agent", "--server", SERVER_URL, "--token-file", str(token_file))
    installed(bundle, root, signer, *args)
    env = (root / SYSTEMD / "k3s-agent.service.env").read_text()
    assert f'K3S_TOKEN_FILE="{token_file}"' in env.splitlines()
    assert "K3S_TOKEN=" not in env and TOKEN not in env


def test_agent_on_host_root_reloads_enables_and_restarts_the_agent_unit(
    bundle: Path, tmp_path: Path, signer: KeyFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(install_module, "is_host_root", lambda root: True)
    recorder = Recorder()
    options = Options(
        bundle=str(bundle), root=str(tmp_path), pubkeys=(str(signer.public),), arch="amd64",
        role="agent", server_url=SERVER_URL, token=TOKEN,
    )  # fmt: skip
    outcome = install_module.install(options, lambda line: None, Progress(), runner=recorder)
    assert outcome.service == "k3s-agent"
    assert recorder.commands == [
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "k3s-agent.service"],
        ["systemctl", "restart", "--no-block", "k3s-agent.service"],
    ]


def test_agent_reinstall_without_role_flags_stays_an_agent(
    bundle: Path, tmp_path: Path, signer: KeyFiles
) -> None:
    installed(bundle, tmp_path, signer, "--role", "agent", "--server", SERVER_URL, "--token", TOKEN)
    before = snapshot(tmp_path)
    result = installed(bundle, tmp_path, signer)
    assert result.stdout.startswith("Nothing to do")
    assert snapshot(tmp_path) == before


# --- servers --------------------------------------------------------------------------------


def test_server_places_charts_and_helmchart_manifests(
    bundle: Path, tmp_path: Path, signer: KeyFiles
) -> None:
    installed(bundle, tmp_path, signer)
    assert (tmp_path / CHART).read_bytes() == b"\x1f\x8b stand-in chart"
    assert (tmp_path / CHART).stat().st_mode & 0o777 == 0o644
    assert (tmp_path / HELMCHART).stat().st_mode & 0o777 == 0o600
    assert exec_start((tmp_path / SYSTEMD / "k3s.service").read_text()) == [
        "/usr/local/bin/k3s",
        "server",
    ]
    assert not (tmp_path / SYSTEMD / "k3s-agent.service").exists()


def test_first_ha_server_runs_with_cluster_init(
    bundle: Path, tmp_path: Path, signer: KeyFiles
) -> None:
    installed(bundle, tmp_path, signer, "--cluster-init", "--token", TOKEN)
    words = exec_start((tmp_path / SYSTEMD / "k3s.service").read_text())
    assert words[:3] == ["/usr/local/bin/k3s", "server", "--cluster-init"]
    record = json.loads((tmp_path / "var/lib/k3bundle/record.json").read_text())
    assert record["options"]["cluster_init"] is True


def test_server_joining_a_cluster_gets_its_url_and_token_in_the_env_file(
    bundle: Path, tmp_path: Path, signer: KeyFiles
) -> None:
    installed(bundle, tmp_path, signer, "--server", SERVER_URL, "--token", TOKEN)
    env = (tmp_path / SYSTEMD / "k3s.service.env").read_text().splitlines()
    assert f'K3S_URL="{SERVER_URL}"' in env and f'K3S_TOKEN="{TOKEN}"' in env
    unit = (tmp_path / SYSTEMD / "k3s.service").read_text()
    assert exec_start(unit) == ["/usr/local/bin/k3s", "server"]
    assert TOKEN not in unit and (tmp_path / CHART).is_file()
