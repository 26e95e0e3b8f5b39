"""Fixtures the installer tests share: a signing key, a small signed bundle, a sentinel folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import KeyFiles, make_bundle, make_keys

DEFAULTS = {"config": {"write-kubeconfig-mode": "0644"}}


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> KeyFiles:
    """The key the module's bundles are signed with."""
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory: pytest.TempPathFactory, signer: KeyFiles) -> Path:
    """A small signed amd64 bundle with a config."""
    folder = tmp_path_factory.mktemp("bundle")
    return make_bundle(folder, ("amd64",), signer, install=DEFAULTS, image_size=1024).files[0]


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A sentinel folder outside the root, holding files an attacker would like rewritten."""
    folder = tmp_path / "outside"
    (folder / ".ssh").mkdir(parents=True)
    (folder / ".ssh/authorized_keys").write_text("ssh-ed25519 AAAA admin\n")
    (folder / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (folder / "k3s").write_text("not yours\n")
    return folder


@pytest.fixture(autouse=True)
def no_host_iptables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Host-root installs see no iptables tools unless a test says so: recorded commands must
    not depend on what the machine running the tests has installed."""
    from k3bundle.installer.host import install, lifecycle

    monkeypatch.setattr(install, "xtables_tools", lambda: [])
    monkeypatch.setattr(lifecycle, "xtables_tools", lambda: [])
