"""A network that exists only inside a network namespace the test creates: a bridge, a veth pair
into each container, and the Ansible controller run inside the namespace.

The namespace has no uplink and no route out, so nothing sent on 10.213.7.0/24 can leave it.
Each container keeps its own --private-network namespace (Host's default); its end of the veth
pair is moved there by the PID of its systemd. Leaving the `with` block deletes the namespace
(the veth pairs go with the containers' namespaces when the containers stop).
"""

from __future__ import annotations

import subprocess
import uuid
from typing import List, Mapping, Optional, Sequence

from tests.hosts.container import Host

PREFIX = "10.213.7"
BRIDGE = "br0"


def ip(*args: str) -> None:
    """Run `ip ARGS` on this machine; fail with its message."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


class Network:
    """A namespace holding a bridge at PREFIX.1/24; hosts are attached as PREFIX.11, .12, ..."""

    def __init__(self) -> None:
        self.name = f"k3b-fleet-{uuid.uuid4().hex[:8]}"
        self.gateway = f"{PREFIX}.1"
        self.attached: List[str] = []

    def __enter__(self) -> Network:
        ip("netns", "add", self.name)
        try:
            self._bridge()
        except BaseException:
            self.delete()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()

    def _bridge(self) -> None:
        ns = ("-n", self.name)
        ip(*ns, "link", "set", "lo", "up")
        ip(*ns, "link", "add", BRIDGE, "type", "bridge")
        ip(*ns, "addr", "add", f"{self.gateway}/24", "dev", BRIDGE)
        ip(*ns, "link", "set", BRIDGE, "up")

    def attach(self, host: Host) -> str:
        """Give `host` an eth0 on the bridge; returns its address."""
        address = f"{PREFIX}.{11 + len(self.attached)}"
        outer = f"vf{len(self.attached)}-{self.name[-6:]}"
        ip("-n", self.name, "link", "add", outer, "type", "veth", "peer", "name", "eth0",
           "netns", str(host.leader))  # fmt: skip
        ip("-n", self.name, "link", "set", outer, "master", BRIDGE, "up")
        host.run("ip", "addr", "add", f"{address}/24", "dev", "eth0")
        host.run("ip", "link", "set", "eth0", "up")
        self.attached.append(address)
        return address

    def run(
        self, command: Sequence[str], env: Mapping[str, str], timeout: float = 300.0
    ) -> subprocess.CompletedProcess[str]:
        """Run `command` on this machine but inside the namespace (the controller's side)."""
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *command],
            env=dict(env), capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def delete(self) -> None:
        """Remove the namespace (idempotent)."""
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)


def routes(network: Network, family: Optional[str] = None) -> str:
    """The namespace's routing table (`ip route`), to show it has no way out."""
    args = ["ip", *(["-" + family] if family else []), "route"]
    return network.run(args, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}).stdout
