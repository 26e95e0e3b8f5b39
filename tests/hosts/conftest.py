"""Fixtures for the layer of real systemd hosts (systemd-nspawn containers), `make test-hosts`.

The root file system is built once per machine (cached, see rootfs.py) inside the session; each
test that asks for `host` gets a freshly booted container of its own. Without root, debootstrap
or systemd-nspawn the layer is skipped, except in CI (CI=true), where that is a failure.
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.helpers import KeyFiles, build_zipapp, make_keys, make_standin_bundle
from tests.hosts import rootfs
from tests.hosts.container import Host
from tests.hosts.images import image_archive

TOOLS = ("debootstrap", "systemd-nspawn", "nsenter", "mount", "umoci", "zstd")
ARCHES = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
FIRST, SECOND = "v1.31.4+k3s1", "v1.31.5+k3s1"
FIRST_IMAGE, SECOND_IMAGE = "docker.io/k3b/hosts-one:1.0", "docker.io/k3b/hosts-two:2.0"


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


@pytest.fixture(scope="session")
def host_arch() -> str:
    """This machine's architecture in k3s's words (the containers share it)."""
    return ARCHES.get(platform.machine(), platform.machine())


@pytest.fixture(scope="session")
def host_zipapp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """k3bundle-install.pyz, as `k3bundle installer-zipapp` writes it."""
    return build_zipapp(tmp_path_factory.mktemp("hosts-zipapp"))


@pytest.fixture(scope="session")
def host_signer(tmp_path_factory: pytest.TempPathFactory) -> KeyFiles:
    """The key pair the hosts' bundles are signed with."""
    return make_keys(tmp_path_factory.mktemp("hosts-keys"))


@dataclass(frozen=True)
class Bundles:
    """Two signed stand-in bundles: `first` carries FIRST_IMAGE, `second` (newer) SECOND_IMAGE."""

    first: Path
    second: Path


@pytest.fixture(scope="session")
def host_bundles(
    tmp_path_factory: pytest.TempPathFactory, host_signer: KeyFiles, host_arch: str
) -> Bundles:
    """The two bundle versions every live-path test installs."""
    folder = tmp_path_factory.mktemp("hosts-bundles")
    layout = folder / "layout"
    one = image_archive(layout, "one", FIRST_IMAGE, host_arch, folder / "k3b-hosts-one.tar")
    two = image_archive(layout, "two", SECOND_IMAGE, host_arch, folder / "k3b-hosts-two.tar.zst")
    first = make_standin_bundle(folder / "first", host_arch, host_signer, FIRST, [one])
    second = make_standin_bundle(folder / "second", host_arch, host_signer, SECOND, [two])
    return Bundles(first, second)
