"""The host's whole life: reinstall, change an option, upgrade, roll back, status, uninstall."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Set, Tuple

import pytest

from k3bundle.installer.errors import InstallError, UsageError
from k3bundle.installer.host import install as install_module
from k3bundle.installer.host import lifecycle
from k3bundle.installer.host.plan import Options
from k3bundle.installer.progress import Progress
from tests.helpers import (
    VERSION,
    CliResult,
    KeyFiles,
    Recorder,
    installed,
    make_bundle,
    make_keys,
    run_installer,
    run_k3bundle,
    snapshot,
)
from tests.helpers import (
    install_amd64 as install,
)

NEW_VERSION = "v1.32.0+k3s1"
BIN = "usr/local/bin"
IMAGES = "var/lib/rancher/k3s/agent/images"
OLD_IMAGES = f"{IMAGES}/k3s-airgap-images-amd64.tar.zst"
NEW_IMAGES = f"{IMAGES}/k3s-airgap-images-amd64.tar.gz"
CONFIG = "etc/rancher/k3s/config.yaml"
ENV = "etc/systemd/system/k3s.service.env"
RECORD = "var/lib/k3bundle/record.json"
ADMIN_STATE = "var/lib/k3bundle/admin-config.json"
PREVIOUS = "var/lib/k3bundle/previous"
TOKEN = "K10-life-s3cret"
DEFAULTS = {"config": {"write-kubeconfig-mode": "0644"}}
RESTART = [
    ["systemctl", "daemon-reload"],
    ["systemctl", "enable", "k3s.service"],
    ["systemctl", "restart", "--no-block", "k3s.service"],
]
Bundles = Tuple[Path, Path]


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> KeyFiles:
    """The key both bundles are signed with."""
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory, signer: KeyFiles) -> Bundles:
    """k3s VERSION (images as .tar.zst) and the newer NEW_VERSION (images as .tar.gz)."""
    folder = tmp_path_factory.mktemp("bundles")
    old = make_bundle(folder / "v1", ("amd64",), signer, install=DEFAULTS, image_size=1024)
    new = make_bundle(
        folder / "v2", ("amd64",), signer, install=DEFAULTS, image_size=1024,
        version=NEW_VERSION, image_format="tar.gz",
    )  # fmt: skip
    return old.files[0], new.files[0]


def command(*args: str) -> CliResult:
    """An in-process lifecycle command (status, rollback, uninstall)."""
    return run_installer(*args)


def as_host(
    bundle: Path, root: Path, signer: KeyFiles, monkeypatch: pytest.MonkeyPatch, **options: Any
) -> Tuple[List[List[str]], install_module.Outcome, List[str]]:
    """install() on ROOT as if it were /, with recorded systemctl calls and report lines."""
    monkeypatch.setattr(install_module, "is_host_root", lambda root: True)
    recorder = Recorder()
    lines: List[str] = []
    opts = Options(
        bundle=str(bundle), root=str(root), pubkeys=(str(signer.public),), arch="amd64", **options
    )
    outcome = install_module.install(opts, lines.append, Progress(), runner=recorder)
    return recorder.commands, outcome, lines


def generation(root: Path) -> Dict[str, Tuple[int, str]]:
    """snapshot() without the kept previous generation."""
    return {k: v for k, v in snapshot(root).items() if not k.startswith(PREVIOUS)}


def changed_files(
    before: Dict[str, Tuple[int, str]], after: Dict[str, Tuple[int, str]]
) -> Set[str]:
    """Files and links that differ, appeared or vanished (folders left out)."""
    folders = {p for p, (_, digest) in [*before.items(), *after.items()] if digest == "dir"}
    return {p for p in set(before) | set(after) if before.get(p) != after.get(p)} - folders


def record_of(root: Path) -> Dict[str, Any]:
    """The install record under ROOT."""
    doc: Dict[str, Any] = json.loads((root / RECORD).read_text())
    return doc


# --- idempotence ----------------------------------------------------------------------------


def test_same_bundle_same_options_changes_nothing_and_restarts_nothing(
    bundles: Bundles, tmp_path: Path, signer: KeyFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _, _ = as_host(bundles[0], tmp_path, signer, monkeypatch, token=TOKEN)
    assert first == RESTART
    before = {p: (v, (tmp_path / p).lstat().st_mtime_ns) for p, v in snapshot(tmp_path).items()}
    commands, outcome, lines = as_host(bundles[0], tmp_path, signer, monkeypatch)
    after = {p: (v, (tmp_path / p).lstat().st_mtime_ns) for p, v in snapshot(tmp_path).items()}
    assert after == before
    assert commands == [] and not outcome.changed
    assert "no change detected, k3s.service left as it is (not restarted)" in lines


def test_changing_only_a_node_label_rewrites_config_and_record_and_restarts_once(
    bundles: Bundles, tmp_path: Path, signer: KeyFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    as_host(bundles[0], tmp_path, signer, monkeypatch, token=TOKEN, node_labels=("tier=web",))
    before = generation(tmp_path)
    commands, _, _ = as_host(bundles[0], tmp_path, signer, monkeypatch, node_labels=("tier=db",))
    assert changed_files(before, generation(tmp_path)) == {CONFIG, ADMIN_STATE, RECORD}
    assert commands == RESTART
    config = (tmp_path / CONFIG).read_text()
    assert "tier=db" in config and "tier=web" not in config
    assert f'K3S_TOKEN="{TOKEN}"' in (tmp_path / ENV).read_text()


# --- upgrade --------------------------------------------------------------------------------


def test_upgrade_replaces_binary_and_images_keeps_config_and_token_restarts_once(
    bundles: Bundles, tmp_path: Path, signer: KeyFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = bundles
    as_host(old, tmp_path, signer, monkeypatch, token=TOKEN, node_labels=("tier=db",))
    old_binary = (tmp_path / BIN / "k3s").read_bytes()
    env, config = (tmp_path / ENV).read_bytes(), (tmp_path / CONFIG).read_bytes()
    commands, outcome, _ = as_host(new, tmp_path, signer, monkeypatch)
    assert commands == RESTART and outcome.version == NEW_VERSION
    assert (tmp_path / BIN / "k3s").read_bytes() == (new.parent / "payload/k3s").read_bytes()
    assert NEW_VERSION.encode() in (tmp_path / BIN / "k3s").read_bytes()
    assert not (tmp_path / OLD_IMAGES).exists() and (tmp_path / NEW_IMAGES).is_file()
    assert sorted(p.name for p in (tmp_path / IMAGES).iterdir()) == [Path(NEW_IMAGES).name]
    assert (tmp_path / ENV).read_bytes() == env and (tmp_path / CONFIG).read_bytes() == config
    record = record_of(tmp_path)
    assert record["k3s_version"] == NEW_VERSION
    assert record["previous"]["k3s_version"] == VERSION
    kept = tmp_path / PREVIOUS / "files"
    assert (kept / BIN / "k3s").read_bytes() == old_binary
    assert (kept / OLD_IMAGES).is_file()
    assert json.loads((kept / RECORD).read_text())["k3s_version"] == VERSION


def test_rollback_restores_the_previous_generation_exactly_and_twice_returns(
    bundles: Bundles, tmp_path: Path, signer: KeyFiles
) -> None:
    old, new = bundles
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/hostname").write_text("node-1\n")
    installed(old, tmp_path, signer, "--token", TOKEN, "--node-label", "tier=db")
    first = generation(tmp_path)
    installed(new, tmp_path, signer)
    second = generation(tmp_path)
    result = command("rollback", "--root", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert f"{NEW_VERSION} -> {VERSION}" in result.stdout
    assert generation(tmp_path) == first
    assert command("rollback", "--root", str(tmp_path)).returncode == 0
    assert generation(tmp_path) == second


def test_rollback_on_host_root_restarts_the_service_once(
    bundles: Bundles, tmp_path: Path, signer: KeyFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    installed(bundles[0], tmp_path, signer)
    installed(bundles[1], tmp_path, signer)
    monkeypatch.setattr(lifecycle, "is_host_root", lambda root: True)
    recorder = Recorder()
    done = lifecycle.rollback(str(tmp_path), lambda line: None, recorder)
    assert done == {"from": NEW_VERSION, "to": VERSION}
    assert recorder.commands == RESTART


def test_rollback_without_a_previous_generation_is_refused(
    bundles: Bundles, tmp_path: Path, signer: KeyFiles
) -> None:
    installed(bundles[0], tmp_path, signer)
    before = snapshot(tmp_path)
    result = command("rollback", "--root", str(tmp_path))
    assert result.returncode == InstallError.exit_code
    assert "no previous generation" in result.stderr
    assert snapshot(tmp_path) == before


def test_downgrade_is_refused_without_allow_downgrade(
    bundles: Bundles, tmp_path: Path, signer: KeyFiles
) -> None:
    old, new = bundles
    installed(new, tmp_path, signer)
    before = snapshot(tmp_path)
    result = install(old, tmp_path, signer)
    assert result.returncode == UsageError.exit_code
    assert NEW_VERSION in result.stderr and VERSION in result.stderr
    assert "--allow-downgrade" in result.stderr
    assert snapshot(tmp_path) == before
    installed(old, tmp_path, signer, "--allow-downgrade")
    assert record_of(tmp_path)["k3s_version"] == VERSION
    assert (tmp_path / OLD_IMAGES).is_file() and not (tmp_path / NEW_IMAGES).exists()


# --- status ---------------------------------------------------------------------------------


def test_status_shows_version_bundle_role_arch_and_that_files_match(
    bundles: Bundles, tmp_path: Path, signer: KeyFiles
) -> None:
    installed(bundles[0], tmp_path, signer)
    installed(bundles[1], tmp_path, signer)
    record = record_of(tmp_path)
    text = command("status", "--root", str(tmp_path))
    assert text.returncode == 0, text.stderr
    assert f"{NEW_VERSION} (amd64, server)" in text.stdout
    assert record["bundle_id"] in text.stdout and "all match the record" in text.stdout
    assert f"previous:      {VERSION}" in text.stdout
    as_json = command("status", "--root", str(tmp_path), "--json")
    summary = json.loads(as_json.stdout)
    assert as_json.returncode == 0
    assert {k: summary[k] for k in ("installed", "k3s_version", "bundle_id", "role", "arch")} == {
        "installed": True,
        "k3s_version": NEW_VERSION,
        "bundle_id": record["bundle_id"],
        "role": "server",
        "arch": "amd64",
    }
    assert summary["intact"] is True and summary["previous"] == {"k3s_version": VERSION}
    assert {f["path"] for f in summary["files"]} == {f["path"] for f in record["files"]}


def test_status_exits_9_and_names_a_file_that_no_longer_matches(
    bundles: Bundles, tmp_path: Path, signer: KeyFiles
) -> None:
    installed(bundles[0], tmp_path, signer)
    (tmp_path / BIN / "k3s").write_bytes(b"#!/bin/sh\necho tampered\n")
    (tmp_path / CONFIG).chmod(0o644)
    text = command("status", "--root", str(tmp_path))
    assert text.returncode == 9
    assert "modified: /usr/local/bin/k3s" in text.stdout
    assert f"mode changed: /{CONFIG}" in text.stdout and "2 do not match" in text.stdout
    as_json = command("status", "--root", str(tmp_path), "--json")
    summary = json.loads(as_json.stdout)
    assert as_json.returncode == 9 and summary["intact"] is False
    states = {f["path"]: f["state"] for f in summary["files"]}
    assert states["/usr/local/bin/k3s"] == "modified" and states[f"/{CONFIG}"] == "mode changed"
    (tmp_path / OLD_IMAGES).unlink()
    assert "missing: /" + OLD_IMAGES in command("status", "--root", str(tmp_path)).stdout


def test_status_of_a_root_without_install_says_so(tmp_path: Path) -> None:
    text = command("status", "--root", str(tmp_path))
    assert text.returncode == 0 and "not installed by k3bundle" in text.stdout
    summary = json.loads(command("status", "--root", str(tmp_path), "--json").stdout)
    assert summary == {"installed": False, "root": str(tmp_path)}


# --- uninstall ------------------------------------------------------------------------------


def with_neighbours(root: Path) -> Dict[str, Tuple[int, str]]:
    """Files k3bundle did not place, in the folders it uses; their snapshot."""
    for path, text in (
        ("etc/hostname", "node-1\n"),
        (f"{BIN}/helm", "#!/bin/sh\n"),
        ("etc/systemd/system/other.service", "[Unit]\n"),
    ):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return snapshot(root)


def user_files(root: Path) -> Dict[str, str]:
    """Files an operator adds after the install, beside k3bundle's: path → content."""
    files = {
        "etc/rancher/k3s/notes.txt": "mine\n",
        f"{IMAGES}/my-extra.tar": "extra\n",
        "var/lib/k3bundle/operator-notes.txt": "notes\n",
    }
    for path, text in files.items():
        (root / path).write_text(text)
    return files


def test_uninstall_removes_exactly_what_the_record_lists(
    bundles: Bundles, tmp_path: Path, signer: KeyFiles
) -> None:
    neighbours = with_neighbours(tmp_path)
    installed(bundles[0], tmp_path, signer, "--token", TOKEN)
    installed(bundles[1], tmp_path, signer)  # so that a previous generation is kept too
    record, mine = record_of(tmp_path), user_files(tmp_path)
    result = command("uninstall", "--root", str(tmp_path))
    assert result.returncode == 0, result.stderr
    for item in [*record["files"], *record["links"]]:
        path = tmp_path / item["path"].lstrip("/")
        assert not path.exists() and not path.is_symlink(), item["path"]
    assert not (tmp_path / RECORD).exists() and not (tmp_path / PREVIOUS).exists()
    left = snapshot(tmp_path)
    assert {p: left[p] for p in neighbours} == neighbours
    assert {p: (tmp_path / p).read_text() for p in mine} == mine
    files_left = {p for p, (_, digest) in left.items() if digest != "dir"}
    assert files_left == {p for p, (_, d) in neighbours.items() if d != "dir"} | set(mine)


def test_install_upgrade_uninstall_leaves_the_tree_exactly_as_before(
    bundles: Bundles, tmp_path: Path, signer: KeyFiles
) -> None:
    """Folders the installs created go too (deepest first); folders that were there stay."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "hostname").write_text("node-1\n")
    (tmp_path / "usr/local/bin").mkdir(parents=True)  # there before: stays, even when empty
    before = snapshot(tmp_path)
    installed(bundles[0], tmp_path, signer)
    installed(bundles[1], tmp_path, signer)
    folders = record_of(tmp_path)["folders"]
    assert "/etc/rancher/k3s" in folders and "/usr/local/bin" not in folders
    result = command("uninstall", "--root", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "removed /etc/rancher/k3s/" in result.stderr
    assert snapshot(tmp_path) == before


def test_uninstall_keeps_a_created_folder_that_holds_someone_elses_file(
    bundles: Bundles, tmp_path: Path, signer: KeyFiles
) -> None:
    installed(bundles[0], tmp_path, signer)
    (tmp_path / "etc/rancher/k3s/notes.txt").write_text("mine\n")
    result = command("uninstall", "--root", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "etc/rancher/k3s/notes.txt").read_text() == "mine\n"
    assert not (tmp_path / "etc/rancher/k3s/config.yaml").exists()


def test_uninstall_purge_also_removes_k3s_data_and_config(
    bundles: Bundles, tmp_path: Path, signer: KeyFiles
) -> None:
    neighbours = with_neighbours(tmp_path)
    installed(bundles[0], tmp_path, signer)
    user_files(tmp_path)
    (tmp_path / "var/lib/rancher/k3s/server/db").mkdir(parents=True)
    (tmp_path / "var/lib/rancher/k3s/server/db/state.db").write_bytes(b"etcd")
    result = command("uninstall", "--root", str(tmp_path), "--purge")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "var/lib/rancher/k3s").exists()
    assert not (tmp_path / "etc/rancher/k3s").exists()
    assert "purged /var/lib/rancher/k3s" in result.stderr
    left = snapshot(tmp_path)
    assert {p: left[p] for p in neighbours} == neighbours
    assert (tmp_path / "var/lib/k3bundle/operator-notes.txt").read_text() == "notes\n"


def test_uninstall_dry_run_lists_everything_and_changes_nothing(
    bundles: Bundles, tmp_path: Path, signer: KeyFiles
) -> None:
    installed(bundles[0], tmp_path, signer)
    record, before = record_of(tmp_path), snapshot(tmp_path)
    result = command("uninstall", "--root", str(tmp_path), "--dry-run", "--purge")
    assert result.returncode == 0, result.stderr
    assert snapshot(tmp_path) == before
    for item in [*record["files"], *record["links"]]:
        assert f"would remove {item['path']}" in result.stderr
    assert "would remove" in result.stdout


def test_uninstall_purge_dry_run_names_what_purge_would_delete_and_changes_nothing(
    bundles: Bundles, tmp_path: Path, signer: KeyFiles
) -> None:
    installed(bundles[0], tmp_path, signer)
    (tmp_path / "var/lib/rancher/k3s/server/db").mkdir(parents=True)
    (tmp_path / "var/lib/kubelet").mkdir(parents=True)
    before = snapshot(tmp_path)
    result = command("uninstall", "--root", str(tmp_path), "--dry-run", "--purge")
    assert result.returncode == 0, result.stderr
    purges = [line for line in result.stderr.splitlines() if "purge" in line]
    assert purges == [
        "would purge /etc/rancher/k3s",
        "would purge /var/lib/rancher/k3s",
        "would purge /var/lib/kubelet",
    ]
    assert snapshot(tmp_path) == before


def test_uninstall_on_host_root_stops_and_disables_the_unit_first(
    bundles: Bundles, tmp_path: Path, signer: KeyFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    installed(bundles[0], tmp_path, signer)
    monkeypatch.setattr(lifecycle, "is_host_root", lambda root: True)
    recorder = Recorder()
    lifecycle.uninstall(str(tmp_path), lambda line: None, recorder)  # never with purge here
    assert recorder.commands == [
        ["systemctl", "disable", "--now", "k3s.service"],
        ["systemctl", "daemon-reload"],
        ["sh", "-c", "systemctl reset-failed k3s.service 2>/dev/null || true"],
    ]
    assert not (tmp_path / BIN / "k3s").exists()


def test_uninstall_without_a_record_is_refused(tmp_path: Path) -> None:
    (tmp_path / BIN).mkdir(parents=True)
    (tmp_path / BIN / "k3s").write_bytes(b"not ours")
    result = command("uninstall", "--root", str(tmp_path))
    assert result.returncode == InstallError.exit_code and "nothing to uninstall" in result.stderr
    assert (tmp_path / BIN / "k3s").read_bytes() == b"not ours"


# --- every command takes --root, through the real entry point -------------------------------


def test_every_command_takes_root(bundles: Bundles, tmp_path: Path, signer: KeyFiles) -> None:
    old, new = bundles
    root = str(tmp_path / "root")
    pub = ("--pubkey", str(signer.public), "--arch", "amd64")
    steps = [
        ("install", str(old), "--root", root, *pub),
        ("install", str(new), "--root", root, *pub),
        ("status", "--root", root),
        ("status", "--json", "--root", root),
        ("rollback", "--root", root),
        ("uninstall", "--dry-run", "--root", root),
        ("uninstall", "--root", root),
    ]
    for args in steps:
        result = run_k3bundle(*args)
        assert result.returncode == 0, (args, result.stderr)
    assert not (tmp_path / "root" / BIN / "k3s").exists()
    assert not (tmp_path / "root" / RECORD).exists()


def test_rollback_with_image_cache_gives_restored_archives_a_new_mtime(
    bundles: Bundles, tmp_path: Path, signer: KeyFiles
) -> None:
    old, new = bundles
    installed(old, tmp_path, signer, "--image-cache")
    images = tmp_path / OLD_IMAGES
    os.utime(images, (1_000_000, 1_000_000))  # imported long ago; k3s's cache knows it
    installed(new, tmp_path, signer)
    assert not images.exists()
    result = command("rollback", "--root", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert abs(images.stat().st_mtime - time.time()) < 60
    assert (tmp_path / NEW_IMAGES).exists() is False
