"""Pre-flight, before anything is written: free space, a foreign k3s, a read-only bin folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from k3bundle.installer.errors import InstallError
from tests.helpers import (
    CliResult,
    KeyFiles,
    installed,
    make_bundle,
    make_keys,
    run_installer,
    snapshot,
)
from tests.helpers import install_amd64 as install

BIN = "usr/local/bin"
SYSTEMD = "etc/systemd/system"
CACHE = "var/lib/rancher/k3s/agent/images/.cache.json"
RECORD = "var/lib/k3bundle/record.json"
FOREIGN = {
    f"{BIN}/k3s": b"#!/bin/sh\necho 'k3s from get.k3s.io'\n",
    f"{SYSTEMD}/k3s.service": b"[Unit]\nDescription=k3s from get.k3s.io\n",
    f"{SYSTEMD}/k3s.service.env": b'K3S_TOKEN="K10-foreign-token"\n',
}


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> KeyFiles:
    """The key the bundle is signed with."""
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, signer: KeyFiles) -> Path:
    """A small amd64 bundle."""
    folder = tmp_path_factory.mktemp("bundle")
    return make_bundle(folder, ("amd64",), signer, image_size=64 * 1024).files[0]


def error_line(result: CliResult) -> str:
    """The one `Error:` line of a refused command."""
    [line] = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    return line


class FakeStatvfs:
    """What os.statvfs reports for a filesystem with `free` bytes available."""

    def __init__(self, free: int) -> None:
        self.f_frsize = 4096
        self.f_bavail = free // 4096


# --- free space -----------------------------------------------------------------------------


def test_install_refuses_when_a_target_filesystem_lacks_room_and_writes_nothing(
    bundle: Path, tmp_path: Path, signer: KeyFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "etc").mkdir()
    before = snapshot(tmp_path)
    monkeypatch.setattr(os, "statvfs", lambda path: FakeStatvfs(1024 * 1024))
    result = install(bundle, tmp_path, signer)
    assert result.returncode == InstallError.exit_code
    line = error_line(result)
    assert f"not enough free space under {tmp_path}" in line
    assert "KiB there and 1.0 MiB is free" in line, line
    assert snapshot(tmp_path) == before


def test_a_reinstall_that_writes_nothing_needs_no_free_space(
    bundle: Path, tmp_path: Path, signer: KeyFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    installed(bundle, tmp_path, signer)
    monkeypatch.setattr(os, "statvfs", lambda path: FakeStatvfs(0))
    assert installed(bundle, tmp_path, signer).stdout.startswith("Nothing to do")


def test_install_passes_the_space_check_when_there_is_room(
    bundle: Path, tmp_path: Path, signer: KeyFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "statvfs", lambda path: FakeStatvfs(1 << 40))
    installed(bundle, tmp_path, signer)
    assert (tmp_path / BIN / "k3s").is_file()


# --- a k3s installed by other means ---------------------------------------------------------


def foreign(root: Path, *paths: str) -> None:
    """Put (some of) upstream install.sh's files under ROOT, with its kubectl link."""
    for path in paths or tuple(FOREIGN):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(FOREIGN[path])
    (root / BIN).mkdir(parents=True, exist_ok=True)
    (root / BIN / "kubectl").symlink_to("k3s")


@pytest.mark.parametrize(
    "path", [f"{BIN}/k3s", f"{SYSTEMD}/k3s.service", "opt/bin/k3s"], ids=["binary", "unit", "opt"]
)
def test_install_refuses_a_k3s_installed_by_other_means(
    bundle: Path, tmp_path: Path, signer: KeyFiles, path: str
) -> None:
    (tmp_path / path).parent.mkdir(parents=True)
    (tmp_path / path).write_bytes(b"foreign")
    before = snapshot(tmp_path)
    result = install(bundle, tmp_path, signer)
    assert result.returncode == InstallError.exit_code
    assert f"already installed here by other means (/{path}" in error_line(result)
    assert "--adopt" in result.stderr
    assert snapshot(tmp_path) == before


def test_adopt_takes_over_keeps_the_token_and_rollback_restores_the_foreign_files(
    bundle: Path, tmp_path: Path, signer: KeyFiles
) -> None:
    foreign(tmp_path)
    before = snapshot(tmp_path)
    installed(bundle, tmp_path, signer, "--adopt")
    assert b"stand-in k3s" in (tmp_path / BIN / "k3s").read_bytes()
    env = (tmp_path / f"{SYSTEMD}/k3s.service.env").read_text()
    assert 'K3S_TOKEN="K10-foreign-token"' in env  # the cluster token survives the takeover
    ours = snapshot(tmp_path)
    result = run_installer("rollback", "--root", str(tmp_path))
    assert result.returncode == 0, result.stderr
    after = snapshot(tmp_path)
    assert {p: after.get(p) for p in before} == before
    assert not (tmp_path / RECORD).exists()
    assert "not installed by k3bundle" in run_installer("status", "--root", str(tmp_path)).stdout
    assert run_installer("rollback", "--root", str(tmp_path)).returncode == 0
    back = snapshot(tmp_path)
    assert {p: back.get(p) for p in ours if "previous" not in p} == {
        p: v for p, v in ours.items() if "previous" not in p
    }


# --- read-only /usr/local/bin ---------------------------------------------------------------


@pytest.fixture
def read_only_bin(tmp_path: Path) -> Iterator[Path]:
    """ROOT whose /usr/local/bin is immutable (chattr +i), as on Fedora CoreOS or Flatcar."""
    folder = tmp_path / BIN
    folder.mkdir(parents=True)
    if shutil.which("chattr") is None:
        pytest.skip("needs chattr")
    done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"chattr +i failed here: {done.stderr.decode().strip()}")
    try:
        yield tmp_path
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=False)


def test_read_only_usr_local_bin_installs_to_opt_bin(
    bundle: Path, read_only_bin: Path, signer: KeyFiles
) -> None:
    root = read_only_bin
    (root / "opt/bin").mkdir(parents=True)
    installed(bundle, root, signer)
    assert list((root / BIN).iterdir()) == []
    assert (root / "opt/bin/k3s").is_file()
    assert os.readlink(root / "opt/bin/kubectl") == "k3s"
    assert (root / "opt/bin/k3s-uninstall.sh").is_file()
    assert "ExecStart=/opt/bin/k3s" in (root / f"{SYSTEMD}/k3s.service").read_text()
    record: Any = json.loads((root / RECORD).read_text())
    assert record["options"]["bin_dir"] == "/opt/bin"
    assert installed(bundle, root, signer).stdout.startswith("Nothing to do")


def test_read_only_usr_local_bin_without_opt_bin_is_refused(
    bundle: Path, read_only_bin: Path, signer: KeyFiles
) -> None:
    before = snapshot(read_only_bin)
    result = install(bundle, read_only_bin, signer)
    assert result.returncode == InstallError.exit_code
    assert "/usr/local/bin is read-only and /opt/bin does not exist" in error_line(result)
    assert snapshot(read_only_bin) == before


# --- --image-cache --------------------------------------------------------------------------


def test_image_cache_is_created_once_and_left_to_k3s_afterwards(
    bundle: Path, tmp_path: Path, signer: KeyFiles
) -> None:
    installed(bundle, tmp_path, signer, "--image-cache")
    cache = tmp_path / CACHE
    assert cache.is_file() and cache.read_bytes() == b""
    assert cache.stat().st_mode & 0o777 == 0o644
    record: Any = json.loads((tmp_path / RECORD).read_text())
    assert record["ensured"] == [f"/{CACHE}"] and record["options"]["image_cache"] is True
    cache.write_text('{"k3s-airgap-images-amd64.tar.zst": "imported"}')  # k3s writes it
    stamp = cache.stat().st_mtime_ns
    assert installed(bundle, tmp_path, signer).stdout.startswith("Nothing to do")
    assert installed(bundle, tmp_path, signer, "--image-cache").stdout.startswith("Nothing to do")
    assert cache.read_text() == '{"k3s-airgap-images-amd64.tar.zst": "imported"}'
    assert cache.stat().st_mtime_ns == stamp
    assert run_installer("uninstall", "--root", str(tmp_path)).returncode == 0
    assert not cache.exists()


def test_without_image_cache_no_cache_file_is_made(
    bundle: Path, tmp_path: Path, signer: KeyFiles
) -> None:
    installed(bundle, tmp_path, signer)
    assert not (tmp_path / CACHE).exists()
