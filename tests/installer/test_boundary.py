"""The root is a boundary: whatever links a root holds, nothing outside it is ever changed.

Each test plants a hostile tree under ROOT, keeps a sentinel folder OUTSIDE beside it, runs the
real installer CLI and compares OUTSIDE byte for byte before and after.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Tuple

import pytest

from tests.helpers import (
    KeyFiles,
    installed,
    run_installer,
    snapshot,
)
from tests.helpers import install_amd64 as install

Tree = Dict[str, Tuple[int, str]]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An empty root beside OUTSIDE."""
    folder = tmp_path / "root"
    folder.mkdir()
    return folder


def plant(root: Path, target: str, link: str) -> None:
    """Make ROOT/target a symlink to `link`."""
    path = root / target.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(link, path)


@pytest.mark.parametrize(
    "folder",
    [
        "/usr/local/bin",
        "/var/lib/rancher/k3s/agent/images",
        "/etc",
        "/var/lib/k3bundle",
        "/etc/systemd/system",
    ],
)
def test_absolute_folder_link_out_of_the_root_is_read_inside_it(
    small_bundle: Path, signer: KeyFiles, root: Path, outside: Path, folder: str
) -> None:
    """A link to /ABS is what a chroot (or the booted image) sees: ROOT/ABS, never /ABS."""
    before = snapshot(outside)
    plant(root, folder, str(outside))
    installed(small_bundle, root, signer)
    assert snapshot(outside) == before
    inside = root / str(outside).lstrip("/")
    assert inside.is_dir() and any(inside.iterdir()), "the files went to ROOT + the link target"
    assert run_installer("uninstall", "--root", str(root)).returncode == 0
    assert snapshot(outside) == before


@pytest.mark.parametrize("folder", ["/usr/local/bin", "/var/lib/k3bundle", "/etc"])
def test_relative_folder_link_that_climbs_out_of_the_root_is_refused(
    small_bundle: Path, signer: KeyFiles, root: Path, outside: Path, folder: str
) -> None:
    before = snapshot(outside)
    depth = folder.count("/")
    plant(root, folder, "../" * (depth + 1) + "outside")
    planted = snapshot(root)
    result = install(small_bundle, root, signer)
    assert result.returncode == 7, result.stderr
    assert "leads out of" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 2  # the error and its hint
    assert snapshot(outside) == before
    assert snapshot(root) == planted


def test_link_inside_the_root_is_followed_as_the_host_would(
    small_bundle: Path, signer: KeyFiles, root: Path
) -> None:
    """/var/lib/rancher on another disk of the same image: a link that stays in the root."""
    (root / "data/rancher").mkdir(parents=True)
    plant(root, "/var/lib/rancher", "../../data/rancher")
    installed(small_bundle, root, signer)
    assert (root / "data/rancher/k3s/agent/images/k3s-airgap-images-amd64.tar.zst").is_file()
    status = run_installer("status", "--root", str(root))
    assert status.returncode == 0, status.stdout


def test_planted_temporary_name_link_never_writes_through(
    small_bundle: Path, signer: KeyFiles, root: Path, outside: Path
) -> None:
    """A link at the staging name (.k3s.k3bundle-tmp) is replaced, its target never opened."""
    before = snapshot(outside)
    plant(root, "/usr/local/bin/.k3s.k3bundle-tmp", str(outside / "k3s"))
    os.symlink(str(outside / "k3s"), root / "usr/local/bin/.k3s.k3bundle-tmp-absolute")
    images = "/var/lib/rancher/k3s/agent/images"
    stage = f"{images}/.k3s-airgap-images-amd64.tar.zst.k3bundle-tmp"
    plant(root, stage, str(outside / ".ssh/authorized_keys"))
    installed(small_bundle, root, signer)
    assert snapshot(outside) == before
    assert not os.path.lexists(root / "usr/local/bin/.k3s.k3bundle-tmp")
    assert (root / "usr/local/bin/k3s").is_file() and not (root / "usr/local/bin/k3s").is_symlink()


def test_link_at_a_target_is_replaced_not_followed(
    small_bundle: Path, signer: KeyFiles, root: Path, outside: Path
) -> None:
    before = snapshot(outside)
    plant(root, "/usr/local/bin/k3s", str(outside / "k3s"))
    plant(root, "/etc/rancher/k3s/config.yaml", str(outside / "shadow"))
    result = install(small_bundle, root, signer, "--adopt")
    assert result.returncode == 0, result.stderr
    assert snapshot(outside) == before
    assert not (root / "usr/local/bin/k3s").is_symlink()


def test_a_folder_at_a_target_path_is_refused_before_any_change(
    small_bundle: Path, signer: KeyFiles, root: Path
) -> None:
    (root / "etc/systemd/system/k3s.service").mkdir(parents=True)
    (root / "etc/systemd/system/k3s.service/keep").write_text("mine\n")
    before = snapshot(root)
    result = install(small_bundle, root, signer)
    assert result.returncode == 7
    assert (
        "k3s.service is a folder" in result.stderr and "nothing has been changed" in result.stderr
    )
    assert snapshot(root) == before
    again = run_installer("status", "--root", str(root))
    assert again.returncode == 0 and "Traceback" not in again.stderr


def test_a_file_where_a_folder_belongs_is_refused(
    small_bundle: Path, signer: KeyFiles, root: Path
) -> None:
    (root / "usr/local").mkdir(parents=True)
    (root / "usr/local/bin").write_text("a file, not a folder\n")
    before = snapshot(root)
    result = install(small_bundle, root, signer)
    assert result.returncode == 7
    assert "is not a folder" in result.stderr
    assert snapshot(root) == before


def test_a_link_loop_is_refused(small_bundle: Path, signer: KeyFiles, root: Path) -> None:
    plant(root, "/usr/local/bin", "/usr/local/bin")
    before = snapshot(root)
    result = install(small_bundle, root, signer)
    assert result.returncode == 7 and "too many symlinks" in result.stderr
    assert snapshot(root) == before


def test_uninstall_through_a_planted_link_removes_nothing_outside(
    small_bundle: Path, signer: KeyFiles, root: Path, outside: Path
) -> None:
    """After the install, /usr/local/bin is swapped for a link out: uninstall stays inside."""
    installed(small_bundle, root, signer)
    bin_dir = root / "usr/local/bin"
    for item in bin_dir.iterdir():
        item.unlink()
    bin_dir.rmdir()
    os.symlink("../../../outside", bin_dir)
    before = snapshot(outside)
    result = run_installer("uninstall", "--root", str(root))
    assert result.returncode == 7 and "leads out of" in result.stderr
    assert snapshot(outside) == before


def test_purge_removes_a_linked_data_folder_itself_not_what_it_points_to(
    small_bundle: Path, signer: KeyFiles, root: Path, outside: Path
) -> None:
    installed(small_bundle, root, signer)
    os.symlink(str(outside), root / "var/lib/kubelet")
    before = snapshot(outside)
    result = run_installer("uninstall", "--purge", "--root", str(root))
    assert result.returncode == 0, result.stderr
    assert not os.path.lexists(root / "var/lib/kubelet")
    assert snapshot(outside) == before
