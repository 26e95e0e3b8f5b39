"""The unit, env file and scripts read back by systemd-analyze, sh, dash and shellcheck."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from k3bundle.installer.host.layout import folder_mode
from k3bundle.installer.host.service import XTABLES_CLEANUP, restart_commands, xtables_tools
from k3bundle.installer.host.units import (
    env_from_environment,
    render_env,
    render_killall,
    render_uninstall,
    render_unit,
    service_name,
)

UPSTREAM_SERVICE_LINES = [
    "[Service]",
    "Type=notify",
    "EnvironmentFile=-/etc/default/%N",
    "EnvironmentFile=-/etc/sysconfig/%N",
    "EnvironmentFile=-/etc/systemd/system/{name}.service.env",
    "KillMode=process",
    "Delegate=yes",
    "User=root",
    "# Having non-zero Limit*s causes performance problems due to accounting overhead",
    "# in the kernel. We recommend using cgroups to do container-local accounting.",
    "LimitNOFILE=1048576",
    "LimitNPROC=infinity",
    "LimitCORE=infinity",
    "TasksMax=infinity",
    "TimeoutStartSec=0",
    "Restart=always",
    "RestartSec=5s",
    "ExecStartPre=-/sbin/modprobe br_netfilter",
    "ExecStartPre=-/sbin/modprobe overlay",
    "ExecStart=/usr/local/bin/k3s \\",
]
UPSTREAM_HEAD_LINES = [
    "[Unit]",
    "Description=Lightweight Kubernetes",
    "Documentation=https://k3s.io",
    "Wants=network-online.target",
    "After=network-online.target",
    "",
    "[Install]",
    "WantedBy=multi-user.target",
    "",
]


def upstream_lines(name: str, command: str, arg_lines: List[str]) -> List[str]:
    """The lines install.sh writes for a service name, command and quoted argument lines."""
    service = [line.format(name=name) for line in UPSTREAM_SERVICE_LINES]
    return [*UPSTREAM_HEAD_LINES, *service, f"    {command} \\", *arg_lines, "", ""]


def test_service_name_maps_roles_to_upstream_names() -> None:
    assert service_name("server") == "k3s"
    assert service_name("agent") == "k3s-agent"
    with pytest.raises(ValueError, match="unknown k3s role"):
        service_name("worker")


def test_server_unit_has_upstream_directives_in_order() -> None:
    unit = render_unit("server", ["--disable=traefik"])

    expected = upstream_lines("k3s", "server", ["\t'--disable=traefik' \\"])
    assert unit.split("\n") == expected
    assert unit.endswith(" \\\n\n")


def test_agent_unit_without_args_ends_with_the_command() -> None:
    unit = render_unit("agent", [])

    assert unit.split("\n") == upstream_lines("k3s-agent", "agent", [])
    assert "Description=Lightweight Kubernetes\n" in unit


def test_unit_uses_given_bin_and_systemd_dirs() -> None:
    unit = render_unit("agent", [], bin_dir="/opt/bin", systemd_dir="/run/systemd/system")

    assert "EnvironmentFile=-/run/systemd/system/k3s-agent.service.env\n" in unit
    assert "ExecStart=/opt/bin/k3s \\\n    agent \\\n\n" in unit


def test_unit_quotes_args_with_spaces_and_single_quotes() -> None:
    unit = render_unit("server", ["--node-label=team=a b", "--node-name=it's"])

    lines = unit.split("\n")
    assert lines[-4:] == ["\t'--node-label=team=a b' \\", "\t'--node-name=it'\\''s' \\", "", ""]


def test_unit_escapes_what_systemd_would_expand() -> None:
    unit = render_unit("server", ["--kubelet-arg=eviction-hard=memory.available<5%", "a$b\\c"])

    assert "\t'--kubelet-arg=eviction-hard=memory.available<5%%' \\\n" in unit
    assert "\t'a$$b\\\\c' \\\n" in unit


def test_unit_refuses_arg_with_newline() -> None:
    with pytest.raises(ValueError, match="line break"):
        render_unit("server", ["--token=a\nb"])


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root holding systemd's own units and an executable k3s stub, for systemd-analyze."""
    root = tmp_path_factory.mktemp("root")
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    stub = root / "usr/local/bin/k3s"
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    return root


def analyze(root: Path, unit_name: str, text: str) -> subprocess.CompletedProcess[str]:
    """Writes a unit into the fake root and runs systemd-analyze verify on it."""
    (root / "etc/systemd/system" / unit_name).write_text(text)
    command = ["systemd-analyze", f"--root={root}", "verify", unit_name]
    return subprocess.run(command, capture_output=True, text=True, check=False)


@pytest.mark.parametrize("role", ["server", "agent"])
def test_systemd_analyze_accepts_unit(fake_root: Path, role: str) -> None:
    args = ["--node-label=team=a b", "--node-name=it's", "--kubelet-arg=max-pods=50%"]
    result = analyze(fake_root, f"{service_name(role)}.service", render_unit(role, args))

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Unknown" not in output
    assert "not executable" not in output


def test_systemd_analyze_catches_missing_k3s_binary(fake_root: Path) -> None:
    result = analyze(fake_root, "k3s.service", render_unit("server", [], bin_dir="/nowhere"))

    assert result.returncode != 0
    assert "/nowhere/k3s is not executable" in result.stdout + result.stderr


@pytest.mark.parametrize("name", ["k3s with space", "k3s-50%"])
def test_systemd_reads_quoted_arg_back_exactly(fake_root: Path, name: str) -> None:
    # The executable is the one word systemd checks on disk, so quote a path as an arg and run it.
    path = f"/usr/local/bin/{name}"
    shutil.copy(fake_root / "usr/local/bin/k3s", f"{fake_root}{path}")
    quoted = render_unit("server", [path]).split("\n")[-3].strip().removesuffix(" \\")
    text = f"[Service]\nType=oneshot\nExecStart={quoted}\n"

    result = analyze(fake_root, "quoted.service", text)

    assert result.returncode == 0, result.stdout + result.stderr


TRICKY_VALUES = {
    "K3S_TOKEN": "K10::server:s3cr3t with  two spaces",
    "K3S_NODE_NAME": 'quote"back\\slash',
    "HTTPS_PROXY": "http://user:pa$$w`rd@proxy:3128",
    "NO_PROXY": "",
    "CONTAINERD_LOG_LEVEL": "üñí 'single'",
}


def parse_systemd_env_line(line: str) -> tuple[str, str]:
    """Reads one double-quoted KEY="VALUE" line by systemd.exec(5)'s EnvironmentFile rules."""
    key, _, rest = line.partition("=")
    rest = rest.strip(" \t\r")
    assert rest.startswith('"') and rest.endswith('"'), line
    value, chars = [], iter(rest[1:-1])
    for char in chars:
        if char == "\\":
            following = next(chars)
            value.append(following if following in '"\\`$' else char + following)
        else:
            value.append(char)
    return key, "".join(value)


def test_env_file_round_trips_through_systemd_rules() -> None:
    text = render_env(TRICKY_VALUES)

    parsed = dict(parse_systemd_env_line(line) for line in text.splitlines())
    assert parsed == TRICKY_VALUES


def test_env_file_round_trips_through_sh(tmp_path: Path) -> None:
    (tmp_path / "k3s.service.env").write_text(render_env(TRICKY_VALUES), encoding="utf-8")
    script = "set -a; . ./k3s.service.env; env"

    result = subprocess.run(
        ["env", "-i", "sh", "-c", script], cwd=tmp_path, capture_output=True, check=True
    )

    read_back = dict(line.partition("=")[::2] for line in result.stdout.decode().splitlines())
    assert {key: read_back[key] for key in TRICKY_VALUES} == TRICKY_VALUES


def test_env_file_lines_are_sorted_by_key() -> None:
    text = render_env({"K3S_URL": "https://10.0.0.1:6443", "K3S_TOKEN": "t"})

    assert text == 'K3S_TOKEN="t"\nK3S_URL="https://10.0.0.1:6443"\n'


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"K3S_TOKEN": "a\nb"}, "line break"),
        ({"K3S-TOKEN": "a"}, "not a valid environment variable name"),
        ({"1K3S": "a"}, "not a valid environment variable name"),
    ],
)
def test_env_file_refuses_what_systemd_cannot_read(variables: Dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render_env(variables)


def test_env_from_environment_keeps_what_upstream_copies() -> None:
    environ = {
        "K3S_TOKEN": "t",
        "CONTAINERD_HTTP_PROXY": "http://p",
        "http_proxy": "http://p",
        "HTTPS_PROXY": "http://p",
        "no_proxy": "localhost",
        "HOME": "/root",
        "MY_K3S_THING": "x",
        "K3S": "x",
        "HTTP_PROXY_USER": "x",
        "ALL_PROXY": "x",
    }

    kept = env_from_environment(environ)

    expected = ["CONTAINERD_HTTP_PROXY", "HTTPS_PROXY", "K3S_TOKEN", "http_proxy", "no_proxy"]
    assert sorted(kept) == expected
    assert kept["K3S_TOKEN"] == "t"


SCRIPTS = {
    "k3s-killall.sh": render_killall(),
    "k3s-uninstall.sh": render_uninstall("server"),
    "k3s-agent-uninstall.sh": render_uninstall("agent", data_dir="/srv/k3s data"),
}


@pytest.mark.parametrize("shell", ["sh", "dash"])
@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_parses_in_posix_shells(tmp_path: Path, shell: str, name: str) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    (tmp_path / name).write_text(SCRIPTS[name])

    result = subprocess.run([shell, "-n", name], cwd=tmp_path, capture_output=True, text=True)

    assert result.returncode == 0, result.stderr
    assert SCRIPTS[name].startswith("#!/bin/sh\n")


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_passes_shellcheck(tmp_path: Path, name: str) -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    (tmp_path / name).write_text(SCRIPTS[name])

    result = subprocess.run(["shellcheck", name], cwd=tmp_path, capture_output=True, text=True)

    assert result.returncode == 0, result.stdout


def test_killall_honours_k3s_data_dir() -> None:
    script = render_killall("/srv/k3s")

    assert '[ -n "${K3S_DATA_DIR:-}" ] || K3S_DATA_DIR=/srv/k3s\n' in script
    assert "sudo --preserve-env=K3S_DATA_DIR" in script
    assert '"$K3S_DATA_DIR"/data/*/bin/' in script


RECORDING_STUB = '#!/bin/sh\necho "${0##*/} $*" >>"$STUB_LOG"\n'
# rm logs every call and really deletes only below the test's own tmp dir.
GUARDED_RM = (
    RECORDING_STUB
    + """for arg in "$@"; do
    case "$arg" in -*) ;; "$STUB_SAFE"/*) ;; *) exit 0 ;; esac
done
exec /bin/rm "$@"
"""
)


@pytest.fixture
def stubbed_host(tmp_path: Path) -> Path:
    """A PATH dir whose id says root, whose umount and systemctl log and whose rm is guarded."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for command in ("umount", "systemctl", "sudo"):
        (stubs / command).write_text(RECORDING_STUB)
    (stubs / "rm").write_text(GUARDED_RM)
    (stubs / "id").write_text("#!/bin/sh\necho 0\n")
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    return stubs


def run_uninstall(tmp_path: Path, stubs: Path, role: str) -> Tuple[List[str], str]:
    """Runs an uninstall script on tmp dirs with stubs first on PATH: the stub log, its stdout."""
    bin_dir, systemd_dir = tmp_path / "bin", tmp_path / "systemd"
    script = bin_dir / f"{service_name(role)}-uninstall.sh"
    script.write_text(
        render_uninstall(role, str(bin_dir), str(systemd_dir), str(tmp_path / "data"))
    )
    (bin_dir / "k3s-killall.sh").write_text(RECORDING_STUB)
    for path in (script, bin_dir / "k3s-killall.sh"):
        path.chmod(0o755)
    log = tmp_path / "log"
    env = {"PATH": f"{stubs}:/usr/bin:/bin", "STUB_LOG": str(log), "STUB_SAFE": str(tmp_path)}
    result = subprocess.run([str(script)], env=env, capture_output=True, text=True, check=True)
    return log.read_text().splitlines(), result.stdout


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    """Tmp bin, systemd and data dirs laid out as after an install of a server."""
    for folder in ("bin", "systemd", "data/agent/images"):
        (tmp_path / folder).mkdir(parents=True)
    for name in ("k3s.service", "k3s.service.env"):
        (tmp_path / "systemd" / name).write_text("")
    (tmp_path / "bin/kubectl").symlink_to("k3s")
    (tmp_path / "bin/crictl").symlink_to("/opt/crictl")
    return tmp_path


def test_uninstall_removes_k3s_its_links_data_and_record(
    installed: Path, stubbed_host: Path
) -> None:
    log, _ = run_uninstall(installed, stubbed_host, "server")

    bin_dir, systemd_dir = installed / "bin", installed / "systemd"
    assert log[:3] == ["k3s-killall.sh ", "systemctl disable k3s", "systemctl reset-failed k3s"]
    assert f"rm -f {systemd_dir}/k3s.service {systemd_dir}/k3s.service.env" in log
    assert f"rm -f {bin_dir}/kubectl" in log
    assert f"rm -f {bin_dir}/crictl" not in log
    assert "rm -rf /etc/rancher/k3s /run/k3s /run/flannel" in log
    assert f"rm -rf {(installed / 'data').resolve()}" in log
    assert f"rm -f {bin_dir}/k3s {bin_dir}/k3s-killall.sh" in log
    assert log[-2:] == ["rm -rf /var/lib/k3bundle", f"rm -f {bin_dir}/k3s-uninstall.sh"]
    assert sorted(path.name for path in bin_dir.iterdir()) == ["crictl"]
    assert not (installed / "data").exists()
    assert sorted(path.name for path in systemd_dir.iterdir()) == []


def test_uninstall_stops_when_another_k3s_service_remains(
    installed: Path, stubbed_host: Path
) -> None:
    (installed / "systemd/k3s-agent.service").write_text("")

    log, output = run_uninstall(installed, stubbed_host, "server")

    assert output == "Additional k3s services installed, skipping uninstall of k3s\n"
    assert "systemctl daemon-reload" in log
    assert log[-1] == f"rm -f {installed}/bin/k3s-uninstall.sh"
    assert [path.name for path in (installed / "systemd").iterdir()] == ["k3s-agent.service"]
    assert (installed / "data/agent/images").is_dir()
    assert not any("/etc/rancher/k3s" in line or "k3bundle" in line for line in log)


def test_restart_commands_clean_the_firewall_only_right_before_a_start() -> None:
    reload, enable = ["systemctl", "daemon-reload"], ["systemctl", "enable", "k3s.service"]
    clean = ["sh", "-c", XTABLES_CLEANUP.format(tool="ip6tables")]
    restart = ["systemctl", "restart", "--no-block", "k3s.service"]
    assert restart_commands("k3s.service", False, xtables=["ip6tables"]) == [
        reload,
        enable,
        clean,
        restart,
    ]
    assert restart_commands("k3s.service", True, xtables=["ip6tables"]) == [reload, enable]
    assert restart_commands("k3s.service", False, True, ["ip6tables"]) == [reload]


def test_xtables_tools_needs_both_save_and_restore() -> None:
    present = {"iptables-save", "iptables-restore", "ip6tables-save"}
    assert xtables_tools(lambda name: f"/usr/sbin/{name}" if name in present else None) == [
        "iptables"
    ]


@pytest.mark.parametrize(
    ("path", "mode"),
    [
        ("/var/lib/rancher/k3s/server", 0o700),
        ("/var/lib/rancher/k3s/server/static/charts", 0o700),
        ("/srv/k3s/server/manifests", 0o700),  # a --data-dir's server folders too
        ("/var/lib/k3bundle", 0o700),
        ("/var/lib/k3bundle/previous/files/etc", 0o700),
        ("/var/lib/rancher/k3s", 0o755),
        ("/var/lib/rancher/k3s/agent/images", 0o755),
        ("/etc/systemd/system/multi-user.target.wants", 0o755),
        ("/var/lib/k3bundle-other", 0o755),
    ],
)
def test_folder_mode_is_private_for_server_folders_and_the_state_dir(path: str, mode: int) -> None:
    assert folder_mode(path) == mode
