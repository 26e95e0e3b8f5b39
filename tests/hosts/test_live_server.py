"""The live path as `/`: the zipapp installs, restarts, upgrades and rolls back a k3s server.

Every test boots its own Debian host (systemd as PID 1, no network) and runs the zipapp under the
host's python3 as root, without --root, so systemctl really runs. The k3s binary is the stand-in.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict

import pytest

from tests.helpers import KeyFiles
from tests.hosts.conftest import FIRST, FIRST_IMAGE, SECOND, SECOND_IMAGE, Bundles
from tests.hosts.container import Host
from tests.hosts.live import Node

pytestmark = pytest.mark.hosts

IMAGES = "/var/lib/rancher/k3s/agent/images"
STATE = "/var/lib/rancher/k3s/standin/state.json"
# A --no-block restart would show up within this long (the stand-in is ready in under a second).
SETTLE = 3.0


@pytest.fixture
def node(host: Host, host_zipapp: Path, host_signer: KeyFiles) -> Node:
    """The host with the zipapp and the trusted key in /root/k3b."""
    return Node(host, host_zipapp, host_signer)


def installed_server(node: Node, bundle: Path, *args: str) -> None:
    """Install `bundle` as a server and wait until k3s is active."""
    node.install(bundle, *args)
    node.wait_active("k3s")


def standin_state(node: Node) -> Dict[str, Any]:
    """What the running stand-in saw: its command, version, merged config, imported archives."""
    state: Dict[str, Any] = json.loads(node.host.run("cat", STATE).stdout)
    return state


def wait_for_new_main_pid(node: Node, unit: str, old_pid: str, timeout: float = 60.0) -> None:
    """Wait until `unit` runs a main process other than `old_pid` and is active again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.restarts(unit)["ExecMainPID"] not in (old_pid, "0"):
            node.wait_active(unit)
            return
        time.sleep(0.2)
    raise AssertionError(f"{unit} was not restarted:\n{node.journal(unit)}")


def test_server_install_starts_k3s_imports_images_and_writes_kubeconfig(
    node: Node, host_bundles: Bundles
) -> None:
    installed_server(node, host_bundles.first)
    host = node.host
    assert host.run("systemctl", "is-active", "k3s").stdout == "active\n"
    assert host.run("systemctl", "is-enabled", "k3s").stdout == "enabled\n"
    assert FIRST_IMAGE in node.images().split()
    assert host.run("stat", "-c", "%a", "/etc/rancher/k3s/k3s.yaml").stdout == "600\n"
    assert "kind: Config" in host.run("cat", "/etc/rancher/k3s/k3s.yaml").stdout
    assert FIRST in host.run("k3s", "--version").stdout
    assert "Ready" in host.run("kubectl", "get", "nodes").stdout
    assert standin_state(node)["command"] == "server"


def test_modprobe_fails_in_the_container_and_the_unit_still_starts(
    node: Node, host_bundles: Bundles
) -> None:
    installed_server(node, host_bundles.first)
    journal = node.journal("k3s")
    assert "modprobe: FATAL: Module br_netfilter not found" in journal
    pre = node.host.run("systemctl", "show", "-p", "ExecStartPre", "k3s").stdout
    assert pre.count("ignore_errors=yes") == 2 and pre.count("code=exited ; status=1 }") == 2


def test_second_identical_install_restarts_nothing(node: Node, host_bundles: Bundles) -> None:
    installed_server(node, host_bundles.first)
    before = node.restarts("k3s")
    node.install(host_bundles.first)
    time.sleep(SETTLE)
    assert node.restarts("k3s") == before
    assert node.journal("k3s").count("starting server") == 1


def test_option_change_restarts_exactly_once(node: Node, host_bundles: Bundles) -> None:
    installed_server(node, host_bundles.first)
    before = node.restarts("k3s")
    node.install(host_bundles.first, "--node-label", "a=b")
    wait_for_new_main_pid(node, "k3s", before["ExecMainPID"])
    time.sleep(SETTLE)
    after = node.restarts("k3s")
    assert after["ExecMainStartTimestampMonotonic"] != before["ExecMainStartTimestampMonotonic"]
    assert after["NRestarts"] == "0"  # a restart asked for, not a crash loop
    assert node.journal("k3s").count("starting server") == 2
    assert "a=b" in json.dumps(standin_state(node)["config"])


def test_upgrade_imports_the_new_images_and_rollback_restores_the_first(
    node: Node, host_bundles: Bundles
) -> None:
    installed_server(node, host_bundles.first)
    pid = node.restarts("k3s")["ExecMainPID"]
    node.install(host_bundles.second)
    wait_for_new_main_pid(node, "k3s", pid)
    assert SECOND in node.host.run("k3s", "--version").stdout
    assert SECOND_IMAGE in node.images().split()
    assert node.host.run("ls", IMAGES).stdout.split() == ["k3b-hosts-two.tar.zst"]
    pid = node.restarts("k3s")["ExecMainPID"]
    node.k3bundle("rollback", "-q")
    wait_for_new_main_pid(node, "k3s", pid)
    assert FIRST in node.host.run("k3s", "--version").stdout
    assert node.host.run("ls", IMAGES).stdout.split() == ["k3b-hosts-one.tar"]
    assert standin_state(node)["imported"] == ["k3b-hosts-one.tar"]


def test_status_exits_0_and_reports_the_install_intact(node: Node, host_bundles: Bundles) -> None:
    installed_server(node, host_bundles.first)
    done = node.k3bundle("status", "--json")
    report = json.loads(done.stdout)
    assert done.returncode == 0
    assert FIRST in json.dumps(report)
