"""A fleet of real systemd hosts with sshd on a private bridge, and Ansible driving them.

Five containers of the host test bed (tests/hosts) are booted in parallel and attached to a
Network; the controller (ansible-playbook from the venv, the collection installed offline from
its built tarball) runs inside the namespace with an SSH key made for the run and a known_hosts
written from the hosts' own keys. Teardown stops every container and deletes the namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Sequence

import yaml

from tests.fleet.network import Network
from tests.hosts.container import Host

VENV_BIN = Path(sys.executable).parent
COLLECTION = Path(__file__).resolve().parents[2] / "ansible" / "k3bundle"
SERVERS, AGENTS = ("s1", "s2", "s3"), ("a1", "a2")
RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)"
                   r"\s+skipped=(\d+)\s+rescued=(\d+)\s+ignored=(\d+)", re.M)  # fmt: skip
RECAP_FIELDS = ("ok", "changed", "unreachable", "failed", "skipped", "rescued", "ignored")


@dataclass(frozen=True)
class Run:
    """One ansible-playbook run: exit code, output, and the recap per host."""

    returncode: int
    output: str
    recap: Dict[str, Dict[str, int]]

    def changed(self) -> Dict[str, int]:
        """changed= per host."""
        return {name: counts["changed"] for name, counts in self.recap.items()}


def parse_recap(output: str) -> Dict[str, Dict[str, int]]:
    """PLAY RECAP lines as {host: {ok: N, changed: N, ...}}."""
    tail = output[output.rfind("PLAY RECAP") :]
    return {m[1]: dict(zip(RECAP_FIELDS, map(int, m.groups()[1:]))) for m in RECAP.finditer(tail)}


class Fleet:
    """Booted hosts by inventory name, their addresses, and an Ansible controller for them."""

    def __init__(self, hosts: Mapping[str, Host], network: Network, folder: Path) -> None:
        self.hosts = dict(hosts)
        self.network = network
        self.folder = folder
        self.address = {name: network.attach(host) for name, host in self.hosts.items()}
        self.key = _ssh_key(folder)
        for host in self.hosts.values():
            _authorize(host, self.key)
        self.known_hosts = _known_hosts(self.hosts, self.address, folder)
        self.collections = install_collection(folder)
        self.control_dir = folder / "ssh-control"

    def close(self) -> None:
        """End the SSH master connections Ansible left behind (ControlPersist), by socket."""
        for socket in self.control_dir.glob("*"):
            subprocess.run(["ssh", "-o", f"ControlPath={socket}", "-O", "exit", "fleet"],
                           capture_output=True, timeout=30, check=False)  # fmt: skip

    def inventory(self, common: Mapping[str, Any], per_host: Mapping[str, Any]) -> Path:
        """Write an inventory: groups server and agent, `common` for all, `per_host` vars."""

        def entry(name: str) -> Dict[str, Any]:
            return {"ansible_host": self.address[name], **per_host.get(name, {})}

        groups = {"server": SERVERS, "agent": AGENTS}
        children = {g: {"hosts": {n: entry(n) for n in names}} for g, names in groups.items()}
        path = self.folder / f"inventory-{len(list(self.folder.glob('inventory-*')))}.yml"
        path.write_text(yaml.safe_dump({"all": {"vars": dict(common), "children": children}}))
        return path

    def playbook(self, name: str, inventory: Path, *args: str) -> Run:
        """`ansible-playbook k3bundle.airgap.NAME -i INVENTORY ARGS`, inside the namespace."""
        command = [str(VENV_BIN / "ansible-playbook"), f"k3bundle.airgap.{name}"]
        done = self.network.run([*command, "-i", str(inventory), *args], self.environment(), 600)
        output = done.stdout + done.stderr
        (self.folder / f"{name}-{len(list(self.folder.glob('*.log')))}.log").write_text(output)
        return Run(done.returncode, output, parse_recap(done.stdout))

    def environment(self) -> Dict[str, str]:
        """Ansible's settings for the run: its own home, the collection, the key, no colour."""
        ssh = "-o ControlMaster=auto -o ControlPersist=120s -o StrictHostKeyChecking=yes"
        ssh += f" -o UserKnownHostsFile={self.known_hosts}"
        return {
            "PATH": f"{VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(self.folder),
            "LANG": "C.UTF-8", "ANSIBLE_HOME": str(self.folder / "ansible-home"),
            "ANSIBLE_COLLECTIONS_PATH": str(self.collections), "ANSIBLE_REMOTE_USER": "root",
            "ANSIBLE_PRIVATE_KEY_FILE": str(self.key), "ANSIBLE_SSH_ARGS": ssh,
            "ANSIBLE_PIPELINING": "true", "ANSIBLE_FORKS": "5", "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3", "ANSIBLE_RETRY_FILES_ENABLED": "0",
            "ANSIBLE_LOCAL_TEMP": str(self.folder / "ansible-tmp"),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.control_dir),
        }  # fmt: skip


def install_collection(folder: Path) -> Path:
    """Build the collection's tarball and install it offline; returns the collections path."""
    galaxy = str(VENV_BIN / "ansible-galaxy")
    built, target = folder / "built", folder / "collections"
    env = {**os.environ, "ANSIBLE_HOME": str(folder / "ansible-home")}
    _run([galaxy, "collection", "build", str(COLLECTION), "--output-path", str(built)], env)
    tarballs = [str(path) for path in built.glob("k3bundle-airgap-*.tar.gz")]
    _run([galaxy, "collection", "install", "--offline", "-p", str(target), *tarballs], env)
    return target


def _run(command: Sequence[str], env: Mapping[str, str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, env=dict(env), check=False)
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}\n{done.stderr}"


def _ssh_key(folder: Path) -> Path:
    key = folder / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "k3b-fleet", "-f",
                    str(key)], check=True, capture_output=True)  # fmt: skip
    return key


def _authorize(host: Host, key: Path) -> None:
    host.sh("install -d -m 0700 /root/.ssh")
    host.put(key.with_suffix(".pub"), "/root/.ssh/authorized_keys", mode=0o600)


def _known_hosts(hosts: Mapping[str, Host], address: Mapping[str, str], folder: Path) -> Path:
    lines = []
    for name, host in hosts.items():
        public = host.run("cat", "/etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[:2]
        lines.append(f"{address[name]} {' '.join(public)}\n")
    path = folder / "known_hosts"
    path.write_text("".join(lines))
    return path


@contextlib.contextmanager
def booted_fleet(lower: Path, folder: Path) -> Iterator[Fleet]:
    """Boot SERVERS + AGENTS in parallel on one Network; everything goes away on exit."""
    names: Sequence[str] = (*SERVERS, *AGENTS)
    with contextlib.ExitStack() as stack:
        network = stack.enter_context(Network())
        hosts = {name: Host(lower, folder / name) for name in names}
        for host in hosts.values():
            stack.callback(host.stop)
        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            list(pool.map(lambda host: host.__enter__(), hosts.values()))
        for host in hosts.values():
            host.run("systemctl", "is-active", "ssh")
        fleet = Fleet(hosts, network, folder)
        stack.callback(fleet.close)
        yield fleet


def status(host: Host) -> Dict[str, Any]:
    """`k3bundle status --json` on the host, through the role's copy of the installer."""
    done = host.run("python3", "/var/lib/k3bundle-ansible/k3bundle-install.pyz", "status", "--json",
                    check=False)  # fmt: skip
    assert done.returncode in (0, 9), done.stderr
    parsed: Dict[str, Any] = json.loads(done.stdout)
    return parsed


def env_file(host: Host, unit: str) -> Dict[str, str]:
    """The unit's env file as a dict (values unquoted)."""
    text = host.run("cat", f"/etc/systemd/system/{unit}.service.env").stdout
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {key: value.strip('"') for key, value in pairs}


def active(host: Host, unit: str) -> str:
    """`systemctl is-active UNIT`."""
    return host.run("systemctl", "is-active", unit, check=False).stdout.strip()


def installed_names(hosts: Mapping[str, Host]) -> List[str]:
    """The hosts that carry a k3bundle install record."""
    found = []
    for name, host in hosts.items():
        if host.run("test", "-e", "/var/lib/k3bundle/record.json", check=False).returncode == 0:
            found.append(name)
    return found
