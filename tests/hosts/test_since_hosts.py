"""An upgrade bundle (`build --since`) on booted hosts: over the full bundle k3s comes up with the
images of both; on a fresh host it is refused and nothing is installed.

The upgrade is made by the builder's own logic (bundler/since.py `carry`) from the stand-in
release: SECOND's k3s with FIRST's image archive (the same bytes, so only required) and a new one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from k3bundle.bundler import keys
from k3bundle.bundler.since import carry, read_previous
from k3bundle.bundler.writer import write_bundle
from k3bundle.installer.format import Manifest, Since, requires_json
from tests.helpers import KeyFiles, make_standin_payload
from tests.hosts.conftest import FIRST_IMAGE, SECOND, SECOND_IMAGE, Bundles
from tests.hosts.container import Host
from tests.hosts.images import image_archive
from tests.hosts.live import Node

pytestmark = pytest.mark.hosts

IMAGES = "/var/lib/rancher/k3s/agent/images"


@pytest.fixture(scope="module")
def upgrade(
    tmp_path_factory: pytest.TempPathFactory,
    host_bundles: Bundles,
    host_signer: KeyFiles,
    host_arch: str,
) -> Path:
    """SECOND built --since the FIRST bundle: carries k3s and image two, requires image one."""
    folder = tmp_path_factory.mktemp("hosts-since")
    full = host_bundles.first
    one = full.parent.parent / "k3b-hosts-one.tar"  # where host_bundles wrote FIRST's archive
    two = image_archive(folder / "layout", "two", SECOND_IMAGE, host_arch, folder / "two.tar.zst")
    payload = make_standin_payload(folder / "payload", host_arch, SECOND, [one, two])
    entries = [e for _, e in payload.values()]
    files = {path: local for path, (local, _) in payload.items()}
    previous = read_previous(full)
    carried = carry(previous, entries, files, [], lambda *args: pytest.fail("no subset here"))
    assert [r.path for r in carried.requires] == [f"{host_arch}/k3b-hosts-one.tar"]
    since = Since(previous.bundle_id, previous.manifest.k3s_version, previous.name)
    extra = requires_json(carried.requires, since)
    manifest = Manifest(SECOND, (host_arch,), tuple(carried.entries), extra=extra)
    signer = keys.load_signer(host_signer.private)
    return write_bundle(folder / "upgrade.tar", manifest, carried.files, signer).files[0]


@pytest.fixture
def node(host: Host, host_zipapp: Path, host_signer: KeyFiles) -> Node:
    """The host with the zipapp and the trusted key in /root/k3b."""
    return Node(host, host_zipapp, host_signer)


def test_upgrade_over_the_full_bundle_starts_k3s_with_both_images(
    node: Node, host_bundles: Bundles, upgrade: Path
) -> None:
    node.install(host_bundles.first)
    node.wait_active("k3s")
    node.install(upgrade)
    node.wait_active("k3s")
    assert SECOND in node.host.run("k3s", "--version").stdout
    listed = node.host.run("ls", IMAGES).stdout.split()
    assert listed == ["k3b-hosts-one.tar", "two.tar.zst"]
    images = node.images().split()
    assert FIRST_IMAGE in images and SECOND_IMAGE in images


def test_upgrade_on_a_fresh_host_is_refused_and_installs_nothing(
    node: Node, host_bundles: Bundles, upgrade: Path
) -> None:
    done = node.install(upgrade, check=False)
    assert done.returncode == 10, done.stderr
    assert f"Install the full bundle {host_bundles.first.name}" in done.stderr
    assert "k3b-hosts-one.tar" in done.stderr
    assert node.host.run("test", "-e", "/usr/local/bin/k3s", check=False).returncode == 1
    assert node.host.run("test", "-e", "/var/lib/k3bundle", check=False).returncode == 1
    unit = node.host.run("systemctl", "cat", "k3s", check=False)
    assert unit.returncode != 0
