"""The test bed itself: a container boots with systemd as PID 1, has no network, and goes away."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.hosts.container import Host
from tests.hosts.rootfs import mounts_below

pytestmark = pytest.mark.hosts


def test_container_boots_systemd_as_pid1_without_network(host: Host) -> None:
    assert host.run("cat", "/proc/1/comm").stdout.strip() == "systemd"
    state = host.run("systemctl", "is-system-running", check=False).stdout.strip()
    assert state in ("running", "degraded")
    links = host.run("ip", "-o", "link", "show").stdout.splitlines()
    assert [line.split(":")[1].strip() for line in links] == ["lo"]
    assert host.run("python3", "-c", "import yaml; print(yaml.__name__)").stdout == "yaml\n"


def test_containers_do_not_share_state_and_are_torn_down(host_rootfs: Path, tmp_path: Path) -> None:
    with Host(host_rootfs, tmp_path / "a") as first, Host(host_rootfs, tmp_path / "b") as second:
        first.sh("echo mine > /etc/k3b-marker")
        assert second.run("test", "-e", "/etc/k3b-marker", check=False).returncode == 1
        assert (first.root / "etc/k3b-marker").read_text() == "mine\n"
    assert not (host_rootfs / "etc/k3b-marker").exists()
    assert mounts_below(tmp_path) == []
    assert first._nspawn is not None and first._nspawn.poll() is not None
