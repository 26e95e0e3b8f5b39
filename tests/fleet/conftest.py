"""Fixtures for the fleet layer (`make test-fleet`): five real systemd hosts driven by Ansible.

The hosts come from the host test bed (tests/hosts: the cached rootfs, now with sshd); the
bundles carry the k3s stand-in for amd64 and arm64 (the same Python script: the containers are
all x86_64, so the arm64 hosts install with k3bundle_arch: arm64).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from k3bundle.bundler import keys
from k3bundle.bundler.writer import write_bundle
from k3bundle.installer.format.manifest import Manifest
from tests.fleet.fleet import VENV_BIN, Fleet, booted_fleet
from tests.helpers import KeyFiles, make_standin_payload
from tests.hosts.conftest import host_rootfs, host_signer, host_zipapp  # noqa: F401 - fixtures

FIRST, SECOND = "v1.31.4+k3s1", "v1.31.5+k3s1"
ARCHES = ("amd64", "arm64")
TOOLS = ("ip", "ssh", "ssh-keygen")


@dataclass(frozen=True)
class FleetBundles:
    """Two signed two-arch stand-in bundles: `first` (FIRST) and the newer `second` (SECOND)."""

    first: Path
    second: Path


def two_arch_bundle(folder: Path, signer: KeyFiles, version: str) -> Path:
    """A signed bundle of `version` holding the stand-in as the amd64 and the arm64 k3s."""
    payload = {}
    for arch in ARCHES:
        payload.update(make_standin_payload(folder / "payload" / arch, arch, version))
    manifest = Manifest(version, ARCHES, tuple(e for _, e in payload.values()), install={})
    files = {path: local for path, (local, _) in payload.items()}
    return write_bundle(
        folder / "bundle.tar", manifest, files, keys.load_signer(signer.private)
    ).files[0]


@pytest.fixture(scope="session")
def fleet_bundles(tmp_path_factory: pytest.TempPathFactory, host_signer: KeyFiles) -> FleetBundles:  # noqa: F811
    """The two bundle versions the fleet rolls out."""
    folder = tmp_path_factory.mktemp("fleet-bundles")
    first = two_arch_bundle(folder / "first", host_signer, FIRST)
    return FleetBundles(first, two_arch_bundle(folder / "second", host_signer, SECOND))


@pytest.fixture(scope="module")
def fleet(host_rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:  # noqa: F811
    """Five booted hosts (s1-s3 servers, a1-a2 agents) on a private bridge, Ansible ready."""
    absent = [tool for tool in TOOLS if shutil.which(tool) is None]
    absent += [] if (VENV_BIN / "ansible-playbook").exists() else ["ansible-core (make install)"]
    if absent:
        message = f"the fleet layer needs {', '.join(absent)}"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    started = time.monotonic()
    with booted_fleet(host_rootfs, tmp_path_factory.mktemp("fleet")) as ready:
        print(f"fleet of {len(ready.hosts)} booted and wired in {time.monotonic() - started:.1f} s")
        yield ready
