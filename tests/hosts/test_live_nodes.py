"""The live path as `/` for the other node kinds, the generated scripts, and stand-in refusals.

An agent joining a server and a second server joining a first (the stand-in logs the URL and never
connects: the hosts have no network), then k3s-killall.sh and k3s-uninstall.sh run on the booted
host and must leave it as upstream's scripts would (reference/k3s-facts.md §3.10, §3.11).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import KeyFiles
from tests.hosts.conftest import Bundles
from tests.hosts.container import Host
from tests.hosts.live import Node

pytestmark = pytest.mark.hosts

SERVER_URL = "https://10.11.12.13:6443"
TOKEN = "k3b-test-token"
# Everything k3bundle and k3s place; upstream's uninstall removes all of it.
PLACED = (
    "/usr/local/bin/k3s", "/usr/local/bin/kubectl", "/usr/local/bin/crictl",
    "/usr/local/bin/k3s-killall.sh", "/usr/local/bin/k3s-uninstall.sh",
    "/etc/systemd/system/k3s.service", "/etc/systemd/system/k3s.service.env",
    "/etc/rancher/k3s", "/var/lib/rancher/k3s", "/var/lib/k3bundle",
)  # fmt: skip


@pytest.fixture
def node(host: Host, host_zipapp: Path, host_signer: KeyFiles) -> Node:
    """The host with the zipapp and the trusted key in /root/k3b."""
    return Node(host, host_zipapp, host_signer)


def exists(host: Host, path: str) -> bool:
    """True when `path` exists inside the host (a dangling link counts)."""
    return host.run("sh", "-c", f'[ -e "{path}" ] || [ -L "{path}" ]', check=False).returncode == 0


def test_agent_joins_a_server_with_url_and_token_from_the_env_file(
    node: Node, host_bundles: Bundles
) -> None:
    node.install(host_bundles.first, "--role", "agent", "--server", SERVER_URL, "--token", TOKEN)
    node.wait_active("k3s-agent")
    host = node.host
    assert host.run("systemctl", "is-active", "k3s-agent").stdout == "active\n"
    assert f"joining {SERVER_URL}" in node.journal("k3s-agent")
    env = "/etc/systemd/system/k3s-agent.service.env"
    assert host.run("stat", "-c", "%a", env).stdout == "600\n"
    assert TOKEN in host.run("cat", env).stdout
    assert not exists(host, "/etc/systemd/system/k3s.service")
    assert not exists(host, "/etc/rancher/k3s/k3s.yaml")  # agents write no kubeconfig
    assert exists(host, "/usr/local/bin/k3s-agent-uninstall.sh")


def test_second_server_joins_the_first(node: Node, host_bundles: Bundles) -> None:
    node.install(host_bundles.first, "--server", SERVER_URL, "--token", TOKEN)
    node.wait_active("k3s")
    journal = node.journal("k3s")
    assert f"joining {SERVER_URL}" in journal and "starting server" in journal
    assert not exists(node.host, "/etc/systemd/system/k3s-agent.service")


def test_killall_stops_k3s_and_its_containerd(node: Node, host_bundles: Bundles) -> None:
    node.install(host_bundles.first)
    node.wait_active("k3s")
    host = node.host
    assert host.run("pgrep", "-f", "/usr/local/bin/k3s server").returncode == 0
    host.run("/usr/local/bin/k3s-killall.sh")
    assert host.run("systemctl", "is-active", "k3s", check=False).stdout.strip() == "inactive"
    assert host.run("pgrep", "-f", "/usr/local/bin/k3s", check=False).returncode == 1
    assert host.run("pgrep", "-x", "containerd", check=False).returncode == 1
    assert exists(host, "/usr/local/bin/k3s")  # killall stops; it removes nothing of k3s


def test_uninstall_leaves_the_host_as_upstreams_would(node: Node, host_bundles: Bundles) -> None:
    host = node.host
    host.sh("mkdir -p /usr/local/bin && echo mine > /usr/local/bin/admin-tool")
    node.install(host_bundles.first)
    node.wait_active("k3s")
    host.sh("echo mine > /etc/rancher/k3s/admin-notes.yaml")
    assert all(exists(host, path) for path in PLACED)
    host.run("/usr/local/bin/k3s-uninstall.sh")
    assert [path for path in PLACED if exists(host, path)] == []
    units = host.run("systemctl", "list-unit-files", "k3s*", "--no-legend", check=False)
    assert (units.returncode, units.stdout.strip()) == (1, "")  # 1: no unit file matched
    assert host.run("systemctl", "show", "-p", "LoadState", "k3s").stdout == "LoadState=not-found\n"
    assert host.run("pgrep", "-f", "/usr/local/bin/k3s", check=False).returncode == 1
    assert host.run("pgrep", "-x", "containerd", check=False).returncode == 1
    assert host.run("cat", "/usr/local/bin/admin-tool").stdout == "mine\n"
    # Upstream runs `rm -rf /etc/rancher/k3s`: a file of the admin's in there goes too.
    assert not exists(host, "/etc/rancher/k3s/admin-notes.yaml")


def test_uninstall_keeps_an_admins_own_kubectl(node: Node, host_bundles: Bundles) -> None:
    host = node.host
    host.sh(
        "mkdir -p /usr/local/bin && printf '#!/bin/sh\\necho admin\\n' > /usr/local/bin/kubectl"
    )
    host.run("chmod", "755", "/usr/local/bin/kubectl")
    node.install(host_bundles.first)
    node.wait_active("k3s")
    host.run("/usr/local/bin/k3s-uninstall.sh")
    assert host.run("kubectl").stdout == "admin\n"
    assert not exists(host, "/usr/local/bin/crictl") and not exists(host, "/usr/local/bin/k3s")


def test_standin_refuses_a_non_boolean_selinux_drop_in_and_systemd_retries(
    node: Node, host_bundles: Bundles
) -> None:
    node.install(host_bundles.first)
    node.wait_active("k3s")
    host = node.host
    host.sh("mkdir -p /etc/rancher/k3s/config.yaml.d")
    host.sh("echo 'selinux: \"maybe\"' > /etc/rancher/k3s/config.yaml.d/50-bad.yaml")
    host.run("systemctl", "restart", "--no-block", "k3s")
    node.wait_for_journal("k3s", 'invalid value "maybe" for flag -selinux')
    state = host.run("systemctl", "is-active", "k3s", check=False).stdout.strip()
    assert state in ("activating", "failed")


def test_k3bundle_uninstall_stops_k3s_and_removes_what_it_placed(
    node: Node, host_bundles: Bundles
) -> None:
    node.install(host_bundles.first)
    node.wait_active("k3s")
    host = node.host
    node.k3bundle("uninstall", "-q")
    assert host.run("systemctl", "show", "-p", "LoadState", "k3s").stdout == "LoadState=not-found\n"
    assert host.run("pgrep", "-f", "/usr/local/bin/k3s", check=False).returncode == 1
    placed = [p for p in PLACED if not p.startswith(("/etc/rancher", "/var/lib/rancher"))]
    assert [path for path in placed if exists(host, path)] == []
    # What k3s itself wrote is not k3bundle's to remove (k3s-uninstall.sh removes it).
    assert exists(host, "/etc/rancher/k3s/k3s.yaml")
