"""A real systemd host for tests: systemd-nspawn --boot on an overlay of the cached rootfs.

Each Host gets its own overlay (lower: the shared rootfs, upper and work: the test's folder), no
network but its own loopback (--private-network: an air gap), and is reached with nsenter into
every namespace of its PID 1. Leaving the `with` block powers it off (SIGKILL after a grace
period) and unmounts the overlay, also when the test failed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import List, Mapping, Optional, Sequence

from tests.hosts.rootfs import mounts_below

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BOOT_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0


class Host:
    """One booted Debian container with systemd as PID 1."""

    def __init__(self, lower: Path, folder: Path) -> None:
        self.lower = lower
        self.folder = folder
        self.name = f"k3b-{uuid.uuid4().hex[:10]}"
        self.root = folder / "merged"  # the container's / as seen from outside
        self.boot_seconds = 0.0
        self._nspawn: Optional[subprocess.Popen[bytes]] = None
        self.leader = 0

    def __enter__(self) -> Host:
        try:
            self._mount()
            self._boot()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _mount(self) -> None:
        for part in ("upper", "work", "merged"):
            (self.folder / part).mkdir(parents=True, exist_ok=True)
        options = f"lowerdir={self.lower},upperdir={self.folder}/upper,workdir={self.folder}/work"
        subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", options, str(self.root)],
            check=True, capture_output=True,
        )  # fmt: skip

    def _boot(self) -> None:
        started = time.monotonic()
        command = ["systemd-nspawn", "--register=no", "--keep-unit", "--boot", "--quiet"]
        command += ["--private-network", "--link-journal=no", "-M", self.name, "-D", str(self.root)]
        with open(self.folder / "nspawn.log", "wb") as log:
            self._nspawn = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        self.leader = self._find_leader(started + BOOT_TIMEOUT)
        self._wait_for_boot(started + BOOT_TIMEOUT)
        self.boot_seconds = time.monotonic() - started

    def _find_leader(self, deadline: float) -> int:
        """The container's PID 1: the child of systemd-nspawn once it has become systemd."""
        assert self._nspawn is not None
        while time.monotonic() < deadline and self._nspawn.poll() is None:
            for pid in _children(self._nspawn.pid):
                if _comm(pid) == "systemd":
                    return pid
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not start systemd:\n{self.nspawn_log()}")

    def _wait_for_boot(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            left = max(1.0, deadline - time.monotonic())
            done = self.run("systemctl", "is-system-running", "--wait", check=False, timeout=left)
            state = done.stdout.strip()
            if state in ("running", "degraded"):
                if state == "degraded":  # accepted, but shown: a unit failed to start
                    print(f"{self.name} degraded:\n{self.run('systemctl', '--failed').stdout}")
                return
            time.sleep(0.2)  # systemd's bus is not up yet ("offline" or an error)
        raise RuntimeError(f"{self.name} did not finish booting:\n{self.nspawn_log()}")

    def run(
        self,
        *command: str,
        check: bool = True,
        input: Optional[str] = None,
        timeout: float = 120.0,
        env: Optional[Mapping[str, str]] = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `command` inside the container as root, in a clean environment."""
        variables = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", **(env or {})}
        inner = ["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in variables.items()), *command]
        outer = ["nsenter", f"--target={self.leader}", "--all", "--root", "--wd", "--", *inner]
        done = subprocess.run(
            outer, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(command)} exited {done.returncode} in {self.name}:\n"
                f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        return done

    def sh(self, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a shell script inside the container."""
        return self.run("sh", "-c", script, check=check)

    def put(self, source: Path, inside: str, mode: int = 0o644) -> str:
        """Copy a file from this machine into the container; returns its path inside."""
        target = self.root / inside.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        target.chmod(mode)
        return inside

    def nspawn_log(self) -> str:
        """The tail of systemd-nspawn's console output."""
        path = self.folder / "nspawn.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        """Power off (SIGTERM to nspawn is an orderly shutdown), then unmount the overlay."""
        if self._nspawn is not None and self._nspawn.poll() is None:
            self._nspawn.send_signal(signal.SIGTERM)
            try:
                self._nspawn.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                _kill(self.leader)
                self._nspawn.kill()
                self._nspawn.wait()
        for path in mounts_below(self.root):
            if subprocess.run(["umount", path], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", path], capture_output=True)
        with contextlib.suppress(OSError):  # nspawn leaves its (empty) propagation folder
            os.rmdir(f"/run/systemd/nspawn/propagate/{self.name}")


def _children(pid: int) -> List[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path("/proc", entry, "stat").read_text()
            except OSError:
                continue  # the process ended while we looked
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _comm(pid: int) -> str:
    try:
        return Path("/proc", str(pid), "comm").read_text().strip()
    except OSError:
        return ""


def _kill(pid: int) -> None:
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def unit_properties(host: Host, unit: str, names: Sequence[str]) -> Mapping[str, str]:
    """`systemctl show -p A,B UNIT` as a dict."""
    done = host.run("systemctl", "show", "-p", ",".join(names), unit)
    pairs = (line.partition("=") for line in done.stdout.splitlines() if "=" in line)
    return {key: value for key, _, value in pairs}
