"""`k3bundle install` into tmp_path roots: what lands where, with which mode, and what runs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pytest

from k3bundle.installer.errors import IntegrityError
from k3bundle.installer.host import install as install_module
from k3bundle.installer.host.plan import Options
from k3bundle.installer.progress import Progress
from tests.helpers import KeyFiles, make_bundle, make_keys, run_k3bundle, snapshot

CONFIG = {"write-kubeconfig-mode": "0644", "disable": ["traefik"]}
REGISTRIES = {"mirrors": {"docker.io": {"endpoint": ["https://registry.local:5000"]}}}
IMAGES = "var/lib/rancher/k3s/agent/images"
UNIT = "etc/systemd/system/k3s.service"
ENV = "etc/systemd/system/k3s.service.env"
WANTS = "etc/systemd/system/multi-user.target.wants/k3s.service"
Installed = Tuple[Path, "subprocess.CompletedProcess[str]"]
TOKEN = "K10-s3cret-token"
EXEC = "--disable=traefik --node-name 'a b'"
EXPECTED_MODES = {
    "usr/local/bin/k3s": 0o755,
    f"{IMAGES}/k3s-airgap-images-amd64.tar.zst": 0o644,
    UNIT: 0o644,
    ENV: 0o600,
    "usr/local/bin/k3s-killall.sh": 0o755,
    "usr/local/bin/k3s-uninstall.sh": 0o755,
    "etc/rancher/k3s/config.yaml": 0o600,
    "etc/rancher/k3s/registries.yaml": 0o600,
    "var/lib/k3bundle/admin-config.json": 0o600,  # the admin's keys and what k3bundle merged
    "var/lib/k3bundle/record.json": 0o600,
}


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> KeyFiles:
    """The key every bundle here is signed with."""
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory, signer: KeyFiles) -> Path:
    """Where the shared two-arch bundle and its stand-in payload live."""
    folder = tmp_path_factory.mktemp("bundle")
    make_bundle(
        folder,
        signer=signer,
        install={"config": CONFIG, "registries": REGISTRIES},
        image_size=8192,
    )
    return folder


@pytest.fixture(scope="module")
def bundle(bundle_dir: Path) -> Path:
    """A signed amd64 + arm64 bundle whose install defaults carry config and registries."""
    return bundle_dir / "bundle.tar"


@pytest.fixture(scope="module")
def installed(
    tmp_path_factory: pytest.TempPathFactory, bundle: Path, signer: KeyFiles
) -> Installed:
    """One install, shared by the read-only tests: ROOT and the CLI's result."""
    root = tmp_path_factory.mktemp("installed")
    args = ("--token", TOKEN, "--exec", EXEC)
    return root, install(bundle, root, signer, *args)


def install(
    bundle: Path, root: Path, signer: KeyFiles, *args: str, env: Optional[Dict[str, str]] = None
) -> subprocess.CompletedProcess[str]:
    """`k3bundle install BUNDLE --root ROOT --pubkey PUB ARGS`; it must succeed."""
    result = run_k3bundle(
        "install", str(bundle), "--root", str(root), "--pubkey", str(signer.public), *args, env=env
    )
    assert result.returncode == 0, result.stderr
    return result


def mode_of(path: Path) -> int:
    """Permission bits of a path (not following symlinks)."""
    return path.lstat().st_mode & 0o7777


def sha256_of(path: Path) -> str:
    """The sha256 of a file's content."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def with_mtimes(root: Path) -> Dict[str, Tuple[int, str, int]]:
    """snapshot() plus each path's mtime in nanoseconds."""
    return {
        path: (mode, digest, (root / path).lstat().st_mtime_ns)
        for path, (mode, digest) in snapshot(root).items()
    }


def exec_start_args(unit: str) -> List[str]:
    """The continuation lines of the unit's ExecStart, stripped."""
    lines = unit.split("ExecStart=", 1)[1].splitlines()
    return [line.strip().rstrip("\\").strip() for line in lines if line.strip()]


# --- files, modes, record -------------------------------------------------------------------


def test_install_places_every_file_with_its_mode(installed: Installed) -> None:
    root = installed[0]
    modes = {path: mode_of(root / path) for path in EXPECTED_MODES}
    assert modes == EXPECTED_MODES
    assert all((root / path).is_file() for path in EXPECTED_MODES)


def test_install_writes_config_and_registries_from_install_defaults(installed: Installed) -> None:
    root = installed[0]
    config = (root / "etc/rancher/k3s/config.yaml").read_text()
    registries = (root / "etc/rancher/k3s/registries.yaml").read_text()
    assert "write-kubeconfig-mode" in config and "traefik" in config
    assert "https://registry.local:5000" in registries


def test_install_without_install_defaults_writes_no_config(
    tmp_path: Path, signer: KeyFiles
) -> None:
    plain = make_bundle(tmp_path / "plain", arches=("amd64",), signer=signer, image_size=1024)
    root = tmp_path / "root"
    install(plain.files[0], root, signer, "--arch", "amd64")
    assert (root / "usr/local/bin/k3s").is_file()
    assert not (root / "etc/rancher").exists()


def test_install_record_holds_bundle_id_and_hash_of_every_placed_file(
    installed: Installed, bundle: Path
) -> None:
    root = installed[0]
    record = json.loads((root / "var/lib/k3bundle/record.json").read_text())
    with tarfile.open(bundle) as tar:
        manifest = tar.extractfile("k3bundle.json")
        assert manifest is not None
        assert record["bundle_id"] == hashlib.sha256(manifest.read()).hexdigest()
    listed = {item["path"].lstrip("/"): item["sha256"] for item in record["files"]}
    expected = set(EXPECTED_MODES) - {"var/lib/k3bundle/record.json"}
    assert set(listed) == expected
    assert {path: sha256_of(root / path) for path in listed} == listed
    assert record["arch"] == "amd64" and record["previous"] is None


def test_install_trusts_keys_from_the_roots_trust_dir(
    bundle: Path, tmp_path: Path, signer: KeyFiles
) -> None:
    trust = tmp_path / "etc/k3bundle/trusted.d"
    trust.mkdir(parents=True)
    shutil.copyfile(signer.public, trust / "builder.pub")
    result = run_k3bundle("install", str(bundle), "--root", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "usr/local/bin/k3s").is_file()


# --- links ----------------------------------------------------------------------------------


def test_install_links_kubectl_crictl_and_ctr_to_k3s(installed: Installed) -> None:
    root = installed[0]
    for command in ("kubectl", "crictl", "ctr"):
        link = root / "usr/local/bin" / command
        assert link.is_symlink() and os.readlink(link) == "k3s"


def test_install_skips_link_for_a_command_that_already_exists(
    bundle: Path, tmp_path: Path, signer: KeyFiles
) -> None:
    kubectl = tmp_path / "usr/bin/kubectl"
    kubectl.parent.mkdir(parents=True)
    kubectl.write_bytes(b"#!/bin/sh\necho distro kubectl\n")
    install(bundle, tmp_path, signer)
    assert not (tmp_path / "usr/local/bin/kubectl").exists()
    assert not (tmp_path / "usr/local/bin/kubectl").is_symlink()
    assert kubectl.read_bytes() == b"#!/bin/sh\necho distro kubectl\n"
    assert os.readlink(tmp_path / "usr/local/bin/crictl") == "k3s"


def test_install_enables_unit_by_wants_symlink(installed: Installed) -> None:
    root, result = installed
    wants = root / WANTS
    assert wants.is_symlink() and os.readlink(wants) == "/etc/systemd/system/k3s.service"
    assert "no systemctl call" in result.stderr


# --- architecture selection -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "arch", "stand_in"),
    [((), "amd64", "k3s"), (("--arch", "arm64"), "arm64", "k3s-arm64")],
    ids=["host-amd64", "arch-arm64"],
)
def test_install_selects_one_arch_from_a_multi_arch_bundle(
    bundle_dir: Path,
    tmp_path: Path,
    signer: KeyFiles,
    args: Sequence[str],
    arch: str,
    stand_in: str,
) -> None:
    if not args and os.uname().machine not in ("x86_64", "amd64"):
        pytest.skip("the host-arch case expects an amd64 host")
    other = "arm64" if arch == "amd64" else "amd64"
    install(bundle_dir / "bundle.tar", tmp_path, signer, *args)
    payload = bundle_dir / "payload"
    assert (tmp_path / "usr/local/bin/k3s").read_bytes() == (payload / stand_in).read_bytes()
    images = tmp_path / IMAGES / f"k3s-airgap-images-{arch}.tar.zst"
    assert images.read_bytes() == (payload / images.name).read_bytes()
    assert sorted(p.name for p in (tmp_path / IMAGES).iterdir()) == [images.name]
    assert [p for p in snapshot(tmp_path) if other in p] == []


# --- dry run, token, exec -------------------------------------------------------------------


def test_dry_run_prints_every_action_and_changes_nothing(
    bundle: Path, tmp_path: Path, signer: KeyFiles
) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/hostname").write_text("node-1\n")
    before = snapshot(tmp_path)
    result = install(bundle, tmp_path, signer, "--dry-run")
    assert snapshot(tmp_path) == before
    for path in EXPECTED_MODES:
        assert f"would place /{path} ({EXPECTED_MODES[path]:04o}," in result.stderr
    for command in ("kubectl", "crictl", "ctr"):
        assert f"would link /usr/local/bin/{command} -> k3s" in result.stderr
    assert f"would link /{WANTS} -> /{UNIT}" in result.stderr
    assert "nothing was changed" in result.stdout
    assert not any(line.startswith("placed ") for line in result.stderr.splitlines())


def test_token_goes_to_the_env_file_and_not_to_the_unit(installed: Installed) -> None:
    root = installed[0]
    env = root / ENV
    assert f'K3S_TOKEN="{TOKEN}"' in env.read_text().splitlines()
    assert mode_of(env) == 0o600
    assert TOKEN not in (root / UNIT).read_text()


def test_exec_args_appear_single_quoted_in_exec_start(installed: Installed) -> None:
    root = installed[0]
    args = exec_start_args((root / UNIT).read_text())
    assert args == ["/usr/local/bin/k3s", "server", "'--disable=traefik'", "'--node-name'", "'a b'"]


# --- idempotence and failure ----------------------------------------------------------------


def test_reinstalling_the_same_bundle_changes_nothing(
    bundle: Path, tmp_path: Path, signer: KeyFiles
) -> None:
    install(bundle, tmp_path, signer)
    before = with_mtimes(tmp_path)
    result = install(bundle, tmp_path, signer)
    assert with_mtimes(tmp_path) == before
    assert result.stdout.startswith("Nothing to do")
    assert not any(line.startswith(("placed ", "linked ")) for line in result.stderr.splitlines())


def test_install_repairs_a_changed_file_and_leaves_the_rest(
    bundle: Path, tmp_path: Path, signer: KeyFiles
) -> None:
    install(bundle, tmp_path, signer)
    (tmp_path / UNIT).write_text("[Unit]\n")
    before = with_mtimes(tmp_path)
    result = install(bundle, tmp_path, signer)
    after = with_mtimes(tmp_path)
    assert f"placed /{UNIT}" in result.stderr
    changed = {p for p in after if after[p] != before[p]}
    # the rename also touches the folder's mtime, and the commit's journal comes and goes in
    # the state folder; every other file and link stays as it was
    assert changed == {UNIT, "etc/systemd/system", "var/lib/k3bundle"}
    assert "ExecStart=" in (tmp_path / UNIT).read_text()


def test_install_failing_mid_stream_leaves_no_temp_files_and_no_new_folders(
    bundle: Path, tmp_path: Path, signer: KeyFiles
) -> None:
    damaged = Path(shutil.copyfile(bundle, tmp_path / "damaged.tar"))
    with tarfile.open(damaged) as tar:
        last = tar.getmembers()[-1]
    with open(damaged, "r+b") as handle:
        handle.seek(last.offset_data + last.size // 2)
        handle.write(b"\xff\x00\xff")
    root = tmp_path / "root"
    (root / "usr/local").mkdir(parents=True)
    before = snapshot(root)
    result = run_k3bundle(
        "install", str(damaged), "--root", str(root), "--pubkey", str(signer.public)
    )
    assert result.returncode == IntegrityError.exit_code, result.stderr
    assert last.name in result.stderr
    assert list(root.rglob("*.k3bundle-tmp")) == []
    assert snapshot(root) == before


# --- service management ---------------------------------------------------------------------


class Recorder:
    """A runner that records commands instead of running them."""

    def __init__(self) -> None:
        self.commands: List[List[str]] = []

    def __call__(self, command: Sequence[str]) -> None:
        """Record one command."""
        self.commands.append(list(command))


def install_as_host(
    bundle: Path,
    root: Path,
    signer: KeyFiles,
    monkeypatch: pytest.MonkeyPatch,
    dry_run: bool = False,
    no_start: bool = False,
) -> Tuple[Recorder, install_module.Outcome]:
    """Call install() on `root` as if it were the host's /, with a recording runner."""
    monkeypatch.setattr(install_module, "is_host_root", lambda root: True)
    recorder = Recorder()
    opts = Options(
        bundle=str(bundle),
        root=str(root),
        pubkeys=(str(signer.public),),
        arch="amd64",
        dry_run=dry_run,
        no_start=no_start,
    )
    outcome = install_module.install(opts, lambda line: None, Progress(), runner=recorder)
    return recorder, outcome


def test_install_on_host_root_reloads_systemd_and_starts_k3s(
    bundle: Path, tmp_path: Path, signer: KeyFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder, outcome = install_as_host(bundle, tmp_path, signer, monkeypatch)
    assert recorder.commands == [
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "k3s.service"],
        ["systemctl", "restart", "--no-block", "k3s.service"],
    ]
    assert outcome.commands == recorder.commands
    assert (tmp_path / "usr/local/bin/k3s").is_file()


def test_install_on_host_root_with_no_start_only_enables(
    bundle: Path, tmp_path: Path, signer: KeyFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder, _ = install_as_host(bundle, tmp_path, signer, monkeypatch, no_start=True)
    assert recorder.commands == [
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "k3s.service"],
    ]


def test_dry_run_on_host_root_lists_commands_but_runs_none(
    bundle: Path, tmp_path: Path, signer: KeyFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder, outcome = install_as_host(bundle, tmp_path, signer, monkeypatch, dry_run=True)
    assert recorder.commands == []
    assert outcome.commands[-1] == ["systemctl", "restart", "--no-block", "k3s.service"]
    assert list(tmp_path.iterdir()) == []


def test_unchanged_reinstall_on_host_root_runs_no_systemctl(
    bundle: Path, tmp_path: Path, signer: KeyFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_as_host(bundle, tmp_path, signer, monkeypatch)
    recorder, outcome = install_as_host(bundle, tmp_path, signer, monkeypatch)
    assert recorder.commands == []
    assert not outcome.changed


def test_install_under_root_runs_no_systemctl(
    bundle: Path, tmp_path: Path, signer: KeyFiles
) -> None:
    recorder = Recorder()
    opts = Options(bundle=str(bundle), root=str(tmp_path), pubkeys=(str(signer.public),))
    outcome = install_module.install(opts, lambda line: None, Progress(), runner=recorder)
    assert recorder.commands == [] and outcome.commands == []
    assert outcome.changed


# --- the unit passes systemd's own check ----------------------------------------------------


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_installed_unit_passes_systemd_analyze_verify(
    bundle: Path, tmp_path: Path, signer: KeyFiles
) -> None:
    system_units = Path("/usr/lib/systemd/system")
    if not system_units.is_dir():
        pytest.skip("needs the host's /usr/lib/systemd/system as reference units")
    shutil.copytree(system_units, tmp_path / "usr/lib/systemd/system", symlinks=True)
    install(bundle, tmp_path, signer, "--exec", "--disable=traefik --node-name 'a b'")
    done = subprocess.run(
        ["systemd-analyze", f"--root={tmp_path}", "verify", "k3s.service"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr + done.stdout
