"""Fixtures for the layer of real systemd hosts (systemd-nspawn containers), `make test-hosts`.

The root file system is built once per machine (cached, see rootfs.py) inside the session; each
test that asks for `host` gets a freshly booted container of its own. Without root, debootstrap
or systemd-nspawn the layer is skipped, except in CI (CI=true), where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.hosts import rootfs
from tests.hosts.container import Host

TOOLS = ("debootstrap", "systemd-nspawn", "nsenter", "mount", "umoci", "zstd")


def _missing() -> str:
    if os.geteuid() != 0:
        return "the host layer boots containers and needs root"
    absent = [tool for tool in TOOLS if shutil.which(tool) is None]
    return f"missing {', '.join(absent)} (make deps installs them)" if absent else ""


@pytest.fixture(scope="session")
def host_rootfs() -> Path:
    """The cached Debian root file system the hosts boot from (built now when missing)."""
    reason = _missing()
    if reason and os.environ.get("CI"):
        pytest.fail(f"the host layer cannot run in CI: {reason}")
    if reason:
        pytest.skip(reason)
    started = time.monotonic()
    found = rootfs.rootfs()
    print(f"host rootfs {found} ready in {time.monotonic() - started:.1f} s")
    return found


@pytest.fixture
def host(host_rootfs: Path, tmp_path: Path) -> Iterator[Host]:
    """A freshly booted container of its own (systemd as PID 1, no network)."""
    with Host(host_rootfs, tmp_path / "host") as booted:
        print(f"{booted.name} booted in {booted.boot_seconds:.1f} s")
        yield booted
