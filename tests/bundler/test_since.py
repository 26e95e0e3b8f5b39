"""`k3bundle build --since PREVIOUS` end to end: the stand-in release, a real registry, installs.

Bundle A carries k3s v1.31.4's airgap tarball and three extra images; B is built --since A from
the same inputs except that one image tag now points at other content. B leaves out the tarball
and every unchanged image, carries an archive of the one changed image under a path of its own,
and names A's files in `requires`; a host that installed A takes B, a fresh host refuses it.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple

import pytest

from k3bundle.bundler.since import read_previous
from k3bundle.installer.errors import UsageError
from k3bundle.installer.format.verify import inspect_bundle, read_manifest_bytes
from tests.bundler.conftest import VERSION, bundle_path
from tests.bundler.test_build_extras import build
from tests.helpers import KeyFiles, install_amd64, installed, snapshot
from tests.oci_registry import ImageLayout, LocalRegistry, PushedImages, push, push_test_images
from tests.release_server import ReleaseServer

IMAGES = "var/lib/rancher/k3s/agent/images"
FULL_ARCHIVE = "amd64/k3bundle-images-amd64.tar.zst"
UPDATE_ARCHIVE = "amd64/k3bundle-images-amd64.update-001.tar.zst"
AIRGAP = "amd64/k3s-airgap-images-amd64.tar.zst"
Built = Tuple[Path, Path]  # (A's bundle, B's bundle)


@pytest.fixture(scope="module")
def pushed(registry: LocalRegistry, image_layout: ImageLayout) -> PushedImages:
    """The standard images under a prefix of this module's own (it re-pushes one tag)."""
    return push_test_images(image_layout, registry.host, prefix=f"since{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """HOME, the shared cache and every output folder of this module."""
    folder = tmp_path_factory.mktemp("since-builds")
    (folder / "home").mkdir()
    return folder


def run(
    server: ReleaseServer, work: Path, dist: str, pushed: PushedImages, *args: str
) -> Tuple[int, str]:
    """`k3bundle build` of VERSION for amd64 with the three images, into WORK/DIST."""
    images = [pushed.index, pushed.app_a, pushed.app_b]
    flags = ["--version", VERSION, "--arch", "amd64", "--insecure-registry", pushed.host]
    for image in images:
        flags += ["--image", image]
    return build(server, work / "home", work / "cache", work / dist, *flags, *args)


@pytest.fixture(scope="module")
def built(
    release_server: ReleaseServer,
    pushed: PushedImages,
    work: Path,
    signer: KeyFiles,
    image_layout: ImageLayout,
) -> Iterator[Built]:
    """A (full) and B (--since A, after test/app-b:1.0 was re-pushed with other content)."""
    code, output = run(release_server, work, "a", pushed, "--sign-key", str(signer.private))
    assert code == 0, output
    full = bundle_path(work / "a")
    repo_tag = pushed.app_b.split("/", 1)[1]
    push(image_layout.layout, image_layout.multi.ref, pushed.host, repo_tag)  # new content
    code, output = run(
        release_server, work, "b", pushed, "--sign-key", str(signer.private), "--since", str(full)
    )
    assert code == 0, output
    yield full, bundle_path(work / "b")


def files_of(bundle: Path) -> Dict[str, Dict[str, Any]]:
    """Manifest entries by path."""
    return {f["path"]: f for f in inspect_bundle(str(bundle))["files"]}


def test_since_leaves_out_the_same_tarball_and_unchanged_images(built: Built) -> None:
    full, upgrade = built
    a, b = files_of(full), files_of(upgrade)
    assert set(a) == {"amd64/k3s", AIRGAP, FULL_ARCHIVE}
    assert set(b) == {"amd64/k3s", UPDATE_ARCHIVE}
    summary = inspect_bundle(str(upgrade))
    required = {r["path"]: r for r in summary["requires"]}
    assert set(required) == {AIRGAP, FULL_ARCHIVE}
    for path, item in required.items():
        assert (item["sha256"], item["size"]) == (a[path]["sha256"], a[path]["size"])
    assert summary["since"]["bundle_id"] == inspect_bundle(str(full))["bundle_id"]
    assert summary["since"]["name"] == full.name
    assert json.loads(read_manifest_bytes(str(upgrade)))["format"] == "k3bundle/v2"


def test_the_update_archive_holds_only_the_changed_image(
    built: Built, pushed: PushedImages
) -> None:
    full, upgrade = built
    entry = files_of(upgrade)[UPDATE_ARCHIVE]
    assert entry["source"]["images"] == pushed.app_b
    assert entry["source"]["relies_on"] == FULL_ARCHIVE
    assert entry["size"] < files_of(full)[FULL_ARCHIVE]["size"]
    names = {i["name"] for i in inspect_bundle(str(upgrade))["images"]}
    assert names == {pushed.index, pushed.app_a, pushed.app_b}  # what the host ends up with


def test_since_from_the_bare_manifest_builds_the_same_bundle(
    built: Built, release_server: ReleaseServer, pushed: PushedImages, work: Path, signer: KeyFiles
) -> None:
    full, upgrade = built
    saved = work / f"{full.name}.json"
    saved.write_bytes(read_manifest_bytes(str(full)))
    code, output = run(
        release_server, work, "c", pushed, "--sign-key", str(signer.private), "--since", str(saved)
    )
    assert code == 0, output
    assert bundle_path(work / "c").read_bytes() == upgrade.read_bytes()


def test_since_from_a_part_of_a_split_bundle(
    built: Built, release_server: ReleaseServer, pushed: PushedImages, work: Path, signer: KeyFiles
) -> None:
    full = built[0]
    code, output = run(release_server, work, "split", pushed, "--split", "100000")
    assert code == 0, output
    part = sorted((work / "split").glob("*.tar.000"))[0]
    code, output = run(release_server, work, "d", pushed, "--since", str(part))
    assert code == 0, output
    summary = inspect_bundle(str(bundle_path(work / "d")))
    assert summary["since"]["name"] == full.name
    assert {r["path"] for r in summary["requires"]} == {AIRGAP, FULL_ARCHIVE}


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b"{not json", "k3bundle.json"),
        (b'{"format": "k3bundle/v9"}', "declares format 'k3bundle/v9'"),
        (b"\x00" * 1024, "does not start with k3bundle.json"),
    ],
)
def test_a_hostile_previous_is_refused_with_one_line_and_nothing_written(
    release_server: ReleaseServer,
    pushed: PushedImages,
    work: Path,
    content: bytes,
    said: str,
    tmp_path: Path,
) -> None:
    previous = tmp_path / "previous.tar"
    previous.write_bytes(content)
    dist = f"bad-{uuid.uuid4().hex[:6]}"
    code, output = run(release_server, work, dist, pushed, "--since", str(previous))
    assert code == 3, output
    assert output.count("Error:") == 1 and f"--since {previous}" in output and said in output
    assert not (work / dist).exists() or not any((work / dist).iterdir())


def test_the_upgrade_installs_over_the_full_bundle_and_a_fresh_host_refuses_it(
    built: Built, tmp_path: Path, signer: KeyFiles
) -> None:
    full, upgrade = built
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    refused = install_amd64(upgrade, fresh, signer)
    assert refused.returncode == 10, refused.stderr
    assert f"Install the full bundle {full.name}" in refused.stderr
    assert snapshot(fresh) == {}
    root = tmp_path / "root"
    installed(full, root, signer)
    installed(upgrade, root, signer)
    names = sorted(p.name for p in (root / IMAGES).iterdir())
    assert names == [
        "k3bundle-images-amd64.tar.zst",
        "k3bundle-images-amd64.update-001.tar.zst",
        "k3s-airgap-images-amd64.tar.zst",
    ]
    assert names[0] < names[1]  # k3s imports in name order: the changed image comes last


def test_a_second_upgrade_against_the_first_relies_on_both_archives(
    built: Built, release_server: ReleaseServer, pushed: PushedImages, work: Path, signer: KeyFiles
) -> None:
    _, upgrade = built
    code, output = run(
        release_server,
        work,
        "e",
        pushed,
        "--sign-key",
        str(signer.private),
        "--since",
        str(upgrade),
    )
    assert code == 0, output
    summary = inspect_bundle(str(bundle_path(work / "e")))
    assert {r["path"] for r in summary["requires"]} == {AIRGAP, FULL_ARCHIVE, UPDATE_ARCHIVE}
    assert {f["path"] for f in summary["files"]} == {"amd64/k3s"}


def test_previous_named_with_control_characters_gives_a_printable_since_name(
    built: Built, tmp_path: Path
) -> None:
    full = built[0]
    odd = tmp_path / "full\x1b[2J.tar.json"
    odd.write_bytes(read_manifest_bytes(str(full)))
    previous = read_previous(odd)
    assert previous.name == "full?[2J.tar"
    assert previous.bundle_id == inspect_bundle(str(full))["bundle_id"]


def test_an_unreadable_previous_is_a_usage_error(tmp_path: Path) -> None:
    previous = tmp_path / "previous.tar.json"
    previous.write_text("{}")
    previous.chmod(0)
    if os.access(previous, os.R_OK):  # root reads it anyway: make it a folder's name instead
        previous.unlink()
        previous.mkdir()
    with pytest.raises(UsageError, match="--since"):
        read_previous(previous)
