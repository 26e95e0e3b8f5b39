"""The test hosts' root file system: Debian minbase with systemd, made once with debootstrap.

Cached in /var/cache/k3bundle-test-hosts/<key>/rootfs, where the key is the sha256 of the
package list, the suite, the mirror and this file, so a change to any of them builds a new one.
A build runs in a temporary folder beside the cache entry under a lock and is renamed into
place, so a concurrent or interrupted build never leaves half a root file system behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import List

CACHE = Path(os.environ.get("K3B_TEST_HOSTS_CACHE", "/var/cache/k3bundle-test-hosts"))
# python3-yaml: the stand-in reads config.yaml like k3s (YAML 1.1); containerd + zstd: it
# imports the image archives; kmod: the unit's ExecStartPre modprobe runs (and fails) for real;
# openssl: the installer verifies Ed25519 signatures with it where cryptography is missing;
# openssh-server: tests/fleet drives the hosts with Ansible over ssh (it needs only python3 there).
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "python3", "python3-yaml", "containerd", "iptables",
    "procps", "iproute2", "zstd", "kmod", "openssl", "openssh-server",
)  # fmt: skip
HOSTNAME = "k3b-host"
SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
DEFAULT_MIRROR = "http://deb.debian.org/debian"


def mirror() -> str:
    """The Debian mirror apt uses here (deb822 sources or sources.list), else deb.debian.org."""
    if SOURCES.is_file():
        for uri in re.findall(r"^URIs:\s*(\S+)", SOURCES.read_text(), re.MULTILINE):
            if not uri.rstrip("/").endswith("-security"):
                return str(uri)
    legacy = Path("/etc/apt/sources.list")
    if legacy.is_file():
        for line in legacy.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[0] == "deb" and "security" not in fields[1]:
                return fields[1]
    return DEFAULT_MIRROR


def suite() -> str:
    """The running Debian's code name (bookworm on Debian 12)."""
    found = re.search(r"^VERSION_CODENAME=(\S+)", Path("/etc/os-release").read_text(), re.M)
    return found.group(1) if found else "bookworm"


def cache_key() -> str:
    """sha256 of everything that shapes the root file system."""
    recipe = {"packages": sorted(PACKAGES), "suite": suite(), "mirror": mirror()}
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()


def rootfs() -> Path:
    """The cached root file system, built now if it is missing (a minute or two)."""
    entry = CACHE / cache_key()
    final = entry / "rootfs"
    if final.is_dir():
        return final
    entry.mkdir(parents=True, exist_ok=True)
    with open(entry / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent session waits, then finds it built
        if not final.is_dir():
            _remove_stale_builds(entry)
            _build(entry, final)
    return final


def _build(entry: Path, final: Path) -> None:
    building = Path(tempfile.mkdtemp(prefix=".build-", dir=entry))
    target = building / "rootfs"
    command = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}"]
    command += [suite(), str(target), mirror()]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        _unmount_below(building)
        raise RuntimeError(f"debootstrap failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    _customise(target)
    _unmount_below(building)
    os.rename(target, final)
    shutil.rmtree(building)


def _customise(target: Path) -> None:
    (target / "etc/hostname").write_text(HOSTNAME + "\n")
    # k3s runs a containerd of its own (so does the stand-in); Debian's would be a second one.
    wants = target / "etc/systemd/system/multi-user.target.wants/containerd.service"
    wants.unlink(missing_ok=True)
    shutil.rmtree(target / "var/cache/apt/archives", ignore_errors=True)
    (target / "var/cache/apt/archives/partial").mkdir(parents=True)


def _remove_stale_builds(entry: Path) -> None:
    # An interrupted debootstrap may leave /proc or /sys mounted in its target: unmount first,
    # so the removal never reaches into a live kernel file system.
    for stale in entry.glob(".build-*"):
        _unmount_below(stale)
        shutil.rmtree(stale, ignore_errors=True)


def _unmount_below(folder: Path) -> None:
    for path in mounts_below(folder):
        subprocess.run(["umount", "-l", path], capture_output=True, check=False)


def mounts_below(folder: Path) -> List[str]:
    """Mount points at or below `folder`, deepest first."""
    prefix = str(folder.resolve())
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        path = line.split()[1].encode().decode("unicode_escape")
        if path == prefix or path.startswith(prefix + "/"):
            found.append(path)
    return sorted(found, reverse=True)
