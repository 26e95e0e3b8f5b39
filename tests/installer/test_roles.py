"""Roles: a server (first, HA-initialising or joining) and an agent, with upstream's checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import pytest

from k3bundle.bundler import keys
from k3bundle.bundler.writer import entry_for_file, write_bundle
from k3bundle.installer.errors import UsageError
from k3bundle.installer.format.manifest import Manifest
from k3bundle.installer.host import install as install_module
from k3bundle.installer.host.plan import Options
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
    root = tmp_path / "root"
    (root / "root").mkdir(parents=True)
    (root / "root/node-token").write_text(TOKEN)  # where k3s will read it: inside the root
    args = ("--role", "agent", "--server", SERVER_URL, "--token-file", "/root/node-token")
    installed(bundle, root, signer, *args)
    env = (root / SYSTEMD / "k3s-agent.service.env").read_text()
    assert 'K3S_TOKEN_FILE="/root/node-token"' in env.splitlines()
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


# --- what k3s would refuse, refused up front ------------------------------------------------


@pytest.mark.parametrize(
    ("args", "environ", "message"),
    [
        (
            ["--role", "agent", "--cluster-init", "--server", SERVER_URL, "--token", TOKEN],
            {},
            "--cluster-init is for the first server, not an agent",
        ),
        (
            ["--cluster-init", "--server", SERVER_URL, "--token", TOKEN],
            {},
            f"--cluster-init starts a new cluster, but --server joins {SERVER_URL}",
        ),
        (
            ["--cluster-init"],
            {"K3S_URL": SERVER_URL, "K3S_TOKEN": TOKEN},
            "--cluster-init is for the first server",  # K3S_URL makes it an agent
        ),
        (["--node-label", "foo"], {}, "--node-label 'foo' is not a Kubernetes label"),
        (["--node-label", "rack=3 b"], {}, "--node-label 'rack=3 b' is not a Kubernetes label"),
        (["--node-label", "Bad_Prefix/x=1"], {}, "--node-label 'Bad_Prefix/x=1' is not a"),
        (["--node-label", "x-=1"], {}, "--node-label 'x-=1' is not a Kubernetes label"),
        (["--node-label", f"{'a' * 64}=1"], {}, "is not a Kubernetes label"),
        (["--node-name", "Bad_Name"], {}, "--node-name 'Bad_Name' is not a valid node name"),
        ([], {"K3S_NODE_NAME": "node 1"}, "K3S_NODE_NAME 'node 1' is not a valid node name"),
        (
            ["--role", "agent", "--server", SERVER_URL, "--token-file", "/root/missing"],
            {},
            "--token-file '/root/missing' does not exist under",
        ),
        (["--token-file", "token"], {}, "--token-file 'token' is not an absolute path"),
        ([], {"K3S_TOKEN_FILE": "/root/missing"}, "K3S_TOKEN_FILE '/root/missing' does not exist"),
    ],
    ids=[
        "agent-cluster-init",
        "cluster-init-join",
        "cluster-init-k3s-url",
        "label-no-value",
        "label-space",
        "label-prefix",
        "label-dash",
        "label-long",
        "node-name-case",
        "k3s-node-name",
        "token-file-missing",
        "token-file-relative",
        "k3s-token-file-missing",
    ],
)
def test_install_refuses_node_flags_k3s_would_refuse_and_writes_nothing(
    bundle: Path,
    tmp_path: Path,
    signer: KeyFiles,
    monkeypatch: pytest.MonkeyPatch,
    args: List[str],
    environ: Dict[str, str],
    message: str,
) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "etc").mkdir()
    before = snapshot(tmp_path)
    result = install(bundle, tmp_path, signer, *args)
    assert result.returncode == UsageError.exit_code
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert snapshot(tmp_path) == before


def test_kubernetes_label_syntax_is_accepted(
    bundle: Path, tmp_path: Path, signer: KeyFiles
) -> None:
    labels = ["example.com/role=db", "tier=", "k3s.io/x_y=a.b-c", f"{'a' * 63}={'b' * 63}"]
    installed(bundle, tmp_path, signer, *[w for label in labels for w in ("--node-label", label)])
    config = (tmp_path / "etc/rancher/k3s/config.yaml").read_text()
    assert all(label in config for label in labels)


# --- folders and the closing lines ----------------------------------------------------------


def test_server_folders_and_the_state_dir_are_created_0700(
    bundle: Path, tmp_path: Path, signer: KeyFiles
) -> None:
    installed(bundle, tmp_path, signer)
    data = tmp_path / "var/lib/rancher/k3s"
    modes = {
        str(path.relative_to(tmp_path)): path.stat().st_mode & 0o777
        for path in (
            data / "server",
            data / "server/static",
            data / "server/static/charts",
            data / "server/manifests",
            tmp_path / "var/lib/k3bundle",
            data,
            data / "agent/images",
            tmp_path / "usr/local/bin",
        )
    }
    assert modes == {
        "var/lib/rancher/k3s/server": 0o700,
        "var/lib/rancher/k3s/server/static": 0o700,
        "var/lib/rancher/k3s/server/static/charts": 0o700,
        "var/lib/rancher/k3s/server/manifests": 0o700,
        "var/lib/k3bundle": 0o700,
        "var/lib/rancher/k3s": 0o755,
        "var/lib/rancher/k3s/agent/images": 0o755,
        "usr/local/bin": 0o755,
    }


def test_an_existing_server_folder_keeps_its_mode(
    bundle: Path, tmp_path: Path, signer: KeyFiles
) -> None:
    server = tmp_path / "var/lib/rancher/k3s/server"
    server.mkdir(parents=True)
    server.chmod(0o755)  # made by someone else: k3bundle never chmods what it did not create
    installed(bundle, tmp_path, signer)
    assert server.stat().st_mode & 0o777 == 0o755
    assert (server / "static").stat().st_mode & 0o777 == 0o700


def test_server_install_ends_with_the_kubeconfig_and_a_first_command(
    bundle: Path, tmp_path: Path, signer: KeyFiles
) -> None:
    result = installed(bundle, tmp_path, signer)
    assert result.stdout.splitlines()[1:] == [
        "Kubeconfig: /etc/rancher/k3s/k3s.yaml (k3s writes it when it starts).",
        "Try: sudo k3s kubectl get nodes",
    ]


def test_kubeconfig_line_honours_write_kubeconfig_from_the_config(
    bundle: Path, tmp_path: Path, signer: KeyFiles
) -> None:
    config = tmp_path / "site.yaml"
    config.write_text("write-kubeconfig: /root/.kube/config\n")
    result = installed(bundle, tmp_path / "root", signer, "--config", str(config))
    assert result.stdout.splitlines()[1:] == [
        "Kubeconfig: /root/.kube/config (k3s writes it when it starts).",
        "Try: sudo k3s kubectl --kubeconfig /root/.kube/config get nodes",
    ]


def test_agent_install_prints_no_kubeconfig(bundle: Path, tmp_path: Path, signer: KeyFiles) -> None:
    args = ("--role", "agent", "--server", SERVER_URL, "--token", TOKEN)
    result = installed(bundle, tmp_path, signer, *args)
    assert len(result.stdout.splitlines()) == 1 and "Kubeconfig" not in result.stdout
