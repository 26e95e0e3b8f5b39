"""install.sh's habits: K3S_URL/K3S_TOKEN, INSTALL_K3S_*, --exec words, env memory, iptables."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Dict, List

import pytest

from k3bundle.installer.cli_parser import build_parser, join_exec
from k3bundle.installer.errors import UsageError
from k3bundle.installer.host import install as install_module
from k3bundle.installer.host.install_args import install_options
from k3bundle.installer.host.plan import Options
from k3bundle.installer.host.service import XTABLES_CLEANUP
from k3bundle.installer.progress import Progress
from tests.helpers import (
    CliResult,
    KeyFiles,
    Recorder,
    install_amd64,
    installed,
    make_bundle,
    snapshot,
)

SYSTEMD = "etc/systemd/system"
SERVER_URL = "https://10.0.0.1:6443"
TOKEN = "K10-upstream-s3cret"
NEW_VERSION = "v1.31.5+k3s1"
IPTABLES = ["sh", "-c", XTABLES_CLEANUP.format(tool="iptables")]
IP6TABLES = ["sh", "-c", XTABLES_CLEANUP.format(tool="ip6tables")]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No install.sh variable of the machine running the tests leaks into an install."""
    for name in list(os.environ):
        upper = name.upper()
        if upper.startswith(("K3S_", "CONTAINERD_", "INSTALL_K3S_")) or upper.endswith("_PROXY"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def newer(tmp_path_factory: pytest.TempPathFactory, signer: KeyFiles) -> Path:
    """A bundle of a later k3s, for upgrades."""
    folder = tmp_path_factory.mktemp("newer")
    return make_bundle(folder, ("amd64",), signer, image_size=1024, version=NEW_VERSION).files[0]


def error_line(result: CliResult) -> str:
    """The one `Error:` line of a refused command."""
    [line] = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    return line


def exec_start(unit: str) -> List[str]:
    """The words of the unit's ExecStart (continuation lines joined, quotes dropped)."""
    lines = unit.split("ExecStart=", 1)[1].splitlines()
    return [line.strip().rstrip("\\").strip().strip("'") for line in lines if line.strip()]


def env_file(root: Path, service: str = "k3s") -> Dict[str, str]:
    """The unit's env file as a mapping (values unquoted)."""
    lines = (root / SYSTEMD / f"{service}.service.env").read_text().splitlines()
    return dict((key, value.strip('"')) for key, _, value in (x.partition("=") for x in lines))


def refused(bundle: Path, root: Path, signer: KeyFiles, *args: str) -> str:
    """Run an install that must be refused with exit 2 and change nothing; its Error line."""
    root.mkdir(exist_ok=True)
    before = snapshot(root)
    result = install_amd64(bundle, root, signer, *args)
    assert result.returncode == UsageError.exit_code, result.stderr
    assert snapshot(root) == before
    assert TOKEN not in result.stdout + result.stderr
    return error_line(result)


def host_install(
    bundle: Path, root: Path, signer: KeyFiles, monkeypatch: pytest.MonkeyPatch, *args: str
) -> Recorder:
    """Parse a real install command line (and the environment), then install on `root` as if it
    were the host's /, with a recording runner."""
    argv = ["install", str(bundle), "--root", str(root), "--pubkey", str(signer.public)]
    parsed = build_parser("k3bundle").parse_args(join_exec([*argv, "--arch", "amd64", *args]))
    options = install_options(parsed, os.environ)
    monkeypatch.setattr(install_module, "is_host_root", lambda root: True)
    recorder = Recorder()
    install_module.install(options, lambda line: None, Progress(), runner=recorder)
    return recorder


# --- K3S_URL, K3S_TOKEN and the command word --------------------------------------------------


def test_k3s_url_and_token_from_the_environment_install_an_agent(
    small_bundle: Path, tmp_path: Path, signer: KeyFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("K3S_URL", SERVER_URL)
    monkeypatch.setenv("K3S_TOKEN", TOKEN)
    result = installed(small_bundle, tmp_path, signer)
    assert "k3s-agent" in result.stdout
    unit = (tmp_path / SYSTEMD / "k3s-agent.service").read_text()
    assert exec_start(unit) == ["/usr/local/bin/k3s", "agent"]
    assert env_file(tmp_path, "k3s-agent") == {"K3S_TOKEN": TOKEN, "K3S_URL": SERVER_URL}
    assert not (tmp_path / SYSTEMD / "k3s.service").exists()
    record = (tmp_path / "var/lib/k3bundle/record.json").read_text()
    assert json.loads(record)["role"] == "agent" and TOKEN not in record


def test_k3s_url_without_a_token_is_refused_before_anything_is_written(
    small_bundle: Path, tmp_path: Path, signer: KeyFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("K3S_URL", SERVER_URL)
    line = refused(small_bundle, tmp_path, signer)
    assert f"joining {SERVER_URL} needs the cluster token" in line


def test_k3s_url_that_is_not_https_is_refused_naming_k3s_url(
    small_bundle: Path, tmp_path: Path, signer: KeyFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("K3S_URL", "http://10.0.0.1:6443")
    monkeypatch.setenv("K3S_TOKEN", TOKEN)
    line = refused(small_bundle, tmp_path, signer)
    assert line == "Error: K3S_URL 'http://10.0.0.1:6443' is not an https:// URL"


def test_k3s_url_alone_never_turns_an_installed_server_into_an_agent(
    small_bundle: Path, tmp_path: Path, signer: KeyFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    installed(small_bundle, tmp_path, signer)
    monkeypatch.setenv("K3S_URL", SERVER_URL)
    monkeypatch.setenv("K3S_TOKEN", TOKEN)
    line = refused(small_bundle, tmp_path, signer)
    assert "K3S_URL without a server or agent command means an agent" in line
    monkeypatch.setenv("INSTALL_K3S_EXEC", "server")  # what the hint says: keep the server
    installed(small_bundle, tmp_path, signer)
    assert env_file(tmp_path)["K3S_URL"] == SERVER_URL
    assert not (tmp_path / SYSTEMD / "k3s-agent.service").exists()


@pytest.mark.parametrize(
    "words", [["--exec", "--disable=traefik"], ["--exec=--disable=traefik"]], ids=["two", "one"]
)
def test_exec_value_beginning_with_dashes_is_taken_in_both_forms(
    small_bundle: Path, tmp_path: Path, signer: KeyFiles, words: List[str]
) -> None:
    installed(small_bundle, tmp_path, signer, *words)
    unit = (tmp_path / SYSTEMD / "k3s.service").read_text()
    assert exec_start(unit) == ["/usr/local/bin/k3s", "server", "--disable=traefik"]


def test_leading_server_word_in_exec_is_the_command_and_is_not_repeated(
    small_bundle: Path, tmp_path: Path, signer: KeyFiles
) -> None:
    installed(small_bundle, tmp_path, signer, "--exec", "server --disable=traefik")
    unit = (tmp_path / SYSTEMD / "k3s.service").read_text()
    assert exec_start(unit) == ["/usr/local/bin/k3s", "server", "--disable=traefik"]
    record = json.loads((tmp_path / "var/lib/k3bundle/record.json").read_text())
    assert record["options"]["exec_args"] == ["--disable=traefik"]


def test_install_k3s_exec_agent_word_makes_an_agent_with_its_flags(
    small_bundle: Path, tmp_path: Path, signer: KeyFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INSTALL_K3S_EXEC", "agent --node-ip=10.0.0.5")
    installed(small_bundle, tmp_path, signer, "--server", SERVER_URL, "--token", TOKEN)
    unit = (tmp_path / SYSTEMD / "k3s-agent.service").read_text()
    assert exec_start(unit) == ["/usr/local/bin/k3s", "agent", "--node-ip=10.0.0.5"]


def test_install_k3s_exec_server_word_with_k3s_url_joins_as_a_server(
    small_bundle: Path, tmp_path: Path, signer: KeyFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INSTALL_K3S_EXEC", "server")
    monkeypatch.setenv("K3S_URL", SERVER_URL)
    monkeypatch.setenv("K3S_TOKEN", TOKEN)
    installed(small_bundle, tmp_path, signer)
    assert exec_start((tmp_path / SYSTEMD / "k3s.service").read_text())[1:] == ["server"]
    assert env_file(tmp_path)["K3S_URL"] == SERVER_URL
    assert not (tmp_path / SYSTEMD / "k3s-agent.service").exists()


def test_exec_flag_beats_install_k3s_exec(
    small_bundle: Path, tmp_path: Path, signer: KeyFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INSTALL_K3S_EXEC", "--disable=servicelb")
    installed(small_bundle, tmp_path, signer, "--exec", "--disable=traefik")
    unit = (tmp_path / SYSTEMD / "k3s.service").read_text()
    assert exec_start(unit)[2:] == ["--disable=traefik"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--role", "agent", "--exec", "server"], "--role agent contradicts the k3s command"),
        (["--exec", "etcd-snapshot save"], "begin with 'etcd-snapshot'"),
    ],
    ids=["role-vs-word", "other-command"],
)
def test_exec_command_word_that_cannot_be_honoured_is_refused(
    small_bundle: Path, tmp_path: Path, signer: KeyFiles, args: List[str], message: str
) -> None:
    assert message in refused(small_bundle, tmp_path, signer, *args)


# --- INSTALL_K3S_* --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "hint"),
    [
        ("INSTALL_K3S_CHANNEL", "latest", "k3bundle build --channel"),
        ("INSTALL_K3S_CHANNEL_URL", "https://mirror/", "k3bundle build --channel-url"),
        ("INSTALL_K3S_COMMIT", "abc123", "k3bundle build --version"),
        ("INSTALL_K3S_PR", "1234", "k3bundle build --version"),
        ("INSTALL_K3S_BIN_DIR_READ_ONLY", "true", "k3bundle places k3s itself"),
        ("INSTALL_K3S_DEBUG", "true", "--verbose"),
        ("INSTALL_K3S_VERSION", "v1.30.0+k3s1", "k3bundle build --version v1.30.0+k3s1"),
        ("INSTALL_K3S_BIN_DIR", "/usr/bin", "installs k3s to /usr/local/bin"),
        ("INSTALL_K3S_SYSTEMD_DIR", "/lib/systemd/system", "units to /etc/systemd/system"),
        ("INSTALL_K3S_NAME", "edge", "names the service k3s"),
        ("INSTALL_K3S_TYPE", "exec", "Type=notify"),
        ("INSTALL_K3S_SKIP_START", "yes", "Set INSTALL_K3S_SKIP_START=true"),
        ("INSTALL_K3S_SYMLINK", "always", "neither skip nor force"),
        ("INSTALL_K3S_SKIP_ENABEL", "true", "Check its spelling"),
    ],
)
def test_install_k3s_variable_that_cannot_be_honoured_is_refused_naming_it(
    small_bundle: Path,
    tmp_path: Path,
    signer: KeyFiles,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    value: str,
    hint: str,
) -> None:
    monkeypatch.setenv(name, value)
    root = tmp_path / "root"
    root.mkdir()
    before = snapshot(root)
    result = install_amd64(small_bundle, root, signer)
    assert result.returncode == UsageError.exit_code
    assert error_line(result).startswith(f"Error: {name}")
    assert hint in result.stderr
    assert snapshot(root) == before


def test_install_k3s_variables_that_match_this_install_are_accepted(
    small_bundle: Path, tmp_path: Path, signer: KeyFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "INSTALL_K3S_VERSION": "v1.31.4+k3s1",
        "INSTALL_K3S_BIN_DIR": "/usr/local/bin",
        "INSTALL_K3S_SYSTEMD_DIR": "/etc/systemd/system/",
        "INSTALL_K3S_NAME": "agent",  # install.sh names it k3s-agent, as k3bundle does
        "INSTALL_K3S_TYPE": "notify",
        "INSTALL_K3S_SKIP_DOWNLOAD": "true",  # the air-gap docs' habit: a bundle never downloads
        "INSTALL_K3S_SKIP_SELINUX_RPM": "true",
        "INSTALL_K3S_SELINUX_WARN": "true",
        "INSTALL_K3S_CHANNEL": "",  # empty is unset, as install.sh's -z tests read it
    }.items():
        monkeypatch.setenv(name, value)
    args = ("--role", "agent", "--server", SERVER_URL, "--token", TOKEN)
    installed(small_bundle, tmp_path, signer, *args)
    assert (tmp_path / SYSTEMD / "k3s-agent.service").is_file()


def test_skip_enable_under_root_makes_no_wants_link(
    small_bundle: Path, tmp_path: Path, signer: KeyFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INSTALL_K3S_SKIP_ENABLE", "true")
    result = installed(small_bundle, tmp_path, signer)
    assert (tmp_path / SYSTEMD / "k3s.service").is_file()
    assert not (tmp_path / SYSTEMD / "multi-user.target.wants").exists()
    assert "k3s.service not enabled (INSTALL_K3S_SKIP_ENABLE)" in result.stderr


def test_skip_enable_on_the_host_only_reloads_systemd(
    small_bundle: Path, tmp_path: Path, signer: KeyFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INSTALL_K3S_SKIP_ENABLE", "true")
    recorder = host_install(small_bundle, tmp_path, signer, monkeypatch)
    assert recorder.commands == [["systemctl", "daemon-reload"]]


def test_skip_start_on_the_host_enables_but_does_not_start(
    small_bundle: Path, tmp_path: Path, signer: KeyFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INSTALL_K3S_SKIP_START", "true")
    monkeypatch.setattr(install_module, "xtables_tools", lambda: ["iptables"])
    recorder = host_install(small_bundle, tmp_path, signer, monkeypatch)
    assert recorder.commands == [
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "k3s.service"],
    ]


def test_force_restart_restarts_an_unchanged_install(
    small_bundle: Path, tmp_path: Path, signer: KeyFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    host_install(small_bundle, tmp_path, signer, monkeypatch)
    assert host_install(small_bundle, tmp_path, signer, monkeypatch).commands == []
    monkeypatch.setenv("INSTALL_K3S_FORCE_RESTART", "true")
    again = host_install(small_bundle, tmp_path, signer, monkeypatch)
    assert again.commands[-1] == ["systemctl", "restart", "--no-block", "k3s.service"]


def test_symlink_skip_links_no_commands(
    small_bundle: Path, tmp_path: Path, signer: KeyFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INSTALL_K3S_SYMLINK", "skip")
    installed(small_bundle, tmp_path, signer)
    for command in ("kubectl", "crictl", "ctr"):
        assert not os.path.lexists(tmp_path / "usr/local/bin" / command)


def test_symlink_force_links_commands_that_exist_elsewhere(
    small_bundle: Path, tmp_path: Path, signer: KeyFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "usr/bin/kubectl").write_text("#!/bin/sh\n")  # the distribution's kubectl
    installed(small_bundle, tmp_path, signer)
    assert not os.path.lexists(tmp_path / "usr/local/bin/kubectl")
    monkeypatch.setenv("INSTALL_K3S_SYMLINK", "force")
    installed(small_bundle, tmp_path, signer)
    assert os.readlink(tmp_path / "usr/local/bin/kubectl") == "k3s"
    assert (tmp_path / "usr/bin/kubectl").read_text() == "#!/bin/sh\n"


# --- the env file across upgrades -----------------------------------------------------------


def test_proxy_and_k3s_variables_survive_an_upgrade_run_without_them(
    small_bundle: Path,
    newer: Path,
    tmp_path: Path,
    signer: KeyFiles,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    given = {
        "HTTPS_PROXY": "http://proxy.lan:3128",
        "no_proxy": "10.0.0.0/8,.lan",
        "K3S_KUBECONFIG_MODE": "644",
        "CONTAINERD_HTTPS_PROXY": "http://proxy.lan:3128",
    }
    with monkeypatch.context() as env:
        for name, value in given.items():
            env.setenv(name, value)
        installed(small_bundle, tmp_path, signer, "--token", TOKEN)
    installed(newer, tmp_path, signer)  # the upgrade: a new shell, none of those exported
    assert b"stand-in k3s v1.31.5+k3s1" in (tmp_path / "usr/local/bin/k3s").read_bytes()
    assert env_file(tmp_path) == {**given, "K3S_TOKEN": TOKEN}


def test_environment_replaces_a_remembered_variable_and_an_empty_one_forgets_it(
    small_bundle: Path, tmp_path: Path, signer: KeyFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://old.lan:3128")
    monkeypatch.setenv("NO_PROXY", ".lan")
    monkeypatch.setenv("K3S_TOKEN_FILE", "/etc/k3s-token")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/k3s-token").write_text(TOKEN)
    installed(small_bundle, tmp_path, signer)
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.delenv("K3S_TOKEN_FILE")
    monkeypatch.setenv("https_proxy", "http://new.lan:3128")  # either case, as curl reads them
    monkeypatch.setenv("NO_PROXY", "")
    installed(small_bundle, tmp_path, signer, "--token", TOKEN)
    assert env_file(tmp_path) == {"https_proxy": "http://new.lan:3128", "K3S_TOKEN": TOKEN}


def test_k3s_url_is_remembered_for_an_agent_upgrade(
    small_bundle: Path,
    newer: Path,
    tmp_path: Path,
    signer: KeyFiles,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with monkeypatch.context() as env:
        env.setenv("K3S_URL", SERVER_URL)
        env.setenv("K3S_TOKEN", TOKEN)
        installed(small_bundle, tmp_path, signer)
    installed(newer, tmp_path, signer)
    assert env_file(tmp_path, "k3s-agent") == {"K3S_TOKEN": TOKEN, "K3S_URL": SERVER_URL}
    assert not (tmp_path / SYSTEMD / "k3s.service").exists()


# --- iptables before a (re)start ------------------------------------------------------------


def test_iptables_rules_are_cleaned_before_the_restart_on_the_host(
    small_bundle: Path, tmp_path: Path, signer: KeyFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(install_module, "xtables_tools", lambda: ["iptables", "ip6tables"])
    recorder = host_install(small_bundle, tmp_path, signer, monkeypatch)
    assert recorder.commands == [
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "k3s.service"],
        IPTABLES,
        IP6TABLES,
        ["systemctl", "restart", "--no-block", "k3s.service"],
    ]


def test_no_iptables_cleanup_under_root(
    small_bundle: Path, tmp_path: Path, signer: KeyFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(install_module, "xtables_tools", lambda: ["iptables", "ip6tables"])
    recorder = Recorder()
    options = Options(
        bundle=str(small_bundle), root=str(tmp_path), pubkeys=(str(signer.public),),
        arch="amd64",
    )  # fmt: skip
    outcome = install_module.install(options, lambda line: None, Progress(), runner=recorder)
    assert recorder.commands == [] and outcome.commands == []


RULES = """\
*filter
:INPUT ACCEPT [0:0]
:KUBE-FIREWALL - [0:0]
-A INPUT -j KUBE-FIREWALL
-A FORWARD -s 10.42.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
-A INPUT -p tcp --dport 22 -j ACCEPT
COMMIT
"""


def fake_xtables(folder: Path, rules: str) -> Path:
    """iptables-save printing `rules`, iptables-restore writing its input to restored.txt."""
    folder.mkdir()
    (folder / "rules.txt").write_text(rules)
    save = folder / "iptables-save"
    save.write_text(f"#!/bin/sh\ncat '{folder}/rules.txt'\n")
    restore = folder / "iptables-restore"
    restore.write_text(f"#!/bin/sh\ncat > '{folder}/restored.txt'\n")
    save.chmod(0o755)
    restore.chmod(0o755)
    return folder


def run_cleanup(folder: Path) -> subprocess.CompletedProcess[str]:
    """The recorded cleanup command, run by sh with the fake tools first on PATH."""
    env = {**os.environ, "PATH": f"{folder}:{os.environ['PATH']}"}
    return subprocess.run(IPTABLES, env=env, capture_output=True, text=True, check=False)


def test_iptables_cleanup_drops_kube_and_flannel_rules_and_keeps_the_rest(tmp_path: Path) -> None:
    folder = fake_xtables(tmp_path / "bin", RULES)
    assert run_cleanup(folder).returncode == 0
    assert (folder / "restored.txt").read_text() == (
        "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp --dport 22 -j ACCEPT\nCOMMIT\n"
    )


def test_iptables_cleanup_leaves_rules_its_tools_cannot_read_back(tmp_path: Path) -> None:
    folder = fake_xtables(tmp_path / "bin", RULES + "-A CNI-HOSTPORT-MASQ -j MASQUERADE\n")
    done = run_cleanup(folder)
    assert done.returncode == 0 and "incompatible with existing rules" in done.stderr
    assert not (folder / "restored.txt").exists()
