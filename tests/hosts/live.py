"""The live install path inside a test host: the zipapp under the host's own python3, as root."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Mapping

from tests.helpers import KeyFiles
from tests.hosts.container import Host, unit_properties

WORK = "/root/k3b"
ZIPAPP = f"{WORK}/k3bundle-install.pyz"
PUBKEY = f"{WORK}/signer.pub"
# The monotonic start time has microseconds: a restart within the same second still shows.
RESTART_PROPERTIES = ("NRestarts", "ExecMainStartTimestampMonotonic", "ExecMainPID")


class Node:
    """A test host with the zipapp, the trusted key and bundles copied in."""

    def __init__(self, host: Host, zipapp: Path, signer: KeyFiles) -> None:
        self.host = host
        host.put(zipapp, ZIPAPP)
        host.put(signer.public, PUBKEY)

    def k3bundle(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`python3 k3bundle-install.pyz ARGS` inside the host (no --root: the live path)."""
        return self.host.run("python3", ZIPAPP, *args, check=check)

    def install(
        self, bundle: Path, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Copy `bundle` in and install it with the trusted key."""
        inside = self.host.put(bundle, f"{WORK}/{bundle.parent.name}-{bundle.name}")
        return self.k3bundle("install", inside, "--pubkey", PUBKEY, "-q", *args, check=check)

    def wait_active(self, unit: str, timeout: float = 60.0) -> None:
        """Wait until `unit` is active (Type=notify: the stand-in said READY=1)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.host.run("systemctl", "is-active", unit, check=False).stdout.strip()
            if state == "active":
                return
            time.sleep(0.2)
        journal = self.host.run("journalctl", "-u", unit, "--no-pager", "-n", "50", check=False)
        raise AssertionError(f"{unit} is {state}, not active:\n{journal.stdout}")

    def restarts(self, unit: str) -> Mapping[str, str]:
        """The unit's restart count, main start time and main PID."""
        return unit_properties(self.host, unit, RESTART_PROPERTIES)

    def images(self) -> str:
        """What the stand-in's containerd holds (`k3s ctr -n k8s.io images ls -q`)."""
        return self.host.run("k3s", "ctr", "-n", "k8s.io", "images", "ls", "-q").stdout

    def journal(self, unit: str) -> str:
        """The unit's journal."""
        return self.host.run("journalctl", "-u", unit, "--no-pager", "-o", "cat").stdout

    def wait_for_journal(self, unit: str, text: str, timeout: float = 30.0) -> None:
        """Wait until `text` appears in the unit's journal."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.journal(unit):
                return
            time.sleep(0.2)
        raise AssertionError(f"{text!r} not in the journal of {unit}:\n{self.journal(unit)}")
