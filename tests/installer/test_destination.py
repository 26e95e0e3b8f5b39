"""HostDestination on tmp_path: staging, abort and what counts as current; the Journal commits."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import List, Sequence, cast

import pytest

from k3bundle.installer.errors import InstallError, IntegrityError
from k3bundle.installer.format.manifest import Entry
from k3bundle.installer.format.sources import VerifyingStream
from k3bundle.installer.format.tarstream import TarStream
from k3bundle.installer.host.destination import HostDestination
from k3bundle.installer.host.layout import staged_name
from k3bundle.installer.host.plan import Link, Placement
from k3bundle.installer.host.transaction import Change, Journal
from tests.helpers import snapshot

DATA = b"#!/bin/sh\necho k3s\n"


def generated(target: str, data: bytes = DATA, mode: int = 0o755) -> Placement:
    """A placement with generated content."""
    return Placement(target, mode, content=data)


def stage(dest: HostDestination, placement: Placement) -> Path:
    """Stage a generated placement from its content."""
    return dest.stage(placement, [memoryview(placement.content or b"")], lambda n: None)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A root that already holds /etc/hostname."""
    folder = tmp_path / "root"
    (folder / "etc").mkdir(parents=True)
    (folder / "etc" / "hostname").write_text("node-1\n")
    return folder


def commit(dest: HostDestination, targets: Sequence[str], links: Sequence[Link] = ()) -> None:
    """Commit staged targets and links through the root's journal, as an install does."""
    moves = [(staged_name(target), target) for target in targets]
    backups = [target for target in targets if dest.path(target).exists()]
    change = Change(moves, [], [(link.path, link.target) for link in links], [], backups)
    Journal(dest.fs).commit(change)


def tmp_files(root: Path) -> List[Path]:
    """Every staged temporary file under root."""
    return sorted(root.rglob("*.k3bundle-tmp"))


def test_stage_writes_a_temporary_file_beside_the_target(root: Path) -> None:
    dest = HostDestination(str(root))
    final = stage(dest, generated("/usr/local/bin/k3s"))
    assert final == root / "usr/local/bin/k3s"
    assert not final.exists()
    [tmp] = tmp_files(root)
    assert tmp.parent == final.parent and tmp.read_bytes() == DATA
    assert tmp.stat().st_mode & 0o7777 == 0o755


def test_stage_then_abort_leaves_root_as_it_was(root: Path) -> None:
    before = snapshot(root)
    dest = HostDestination(str(root))
    stage(dest, generated("/usr/local/bin/k3s"))
    stage(dest, generated("/etc/systemd/system/k3s.service", mode=0o644))
    stage(dest, generated("/etc/rancher/k3s/config.yaml", mode=0o600))
    dest.abort()
    assert snapshot(root) == before
    assert (root / "etc").is_dir()


def test_abort_keeps_folders_that_existed_before(root: Path) -> None:
    (root / "usr/local/bin").mkdir(parents=True)
    dest = HostDestination(str(root))
    stage(dest, generated("/usr/local/bin/k3s"))
    dest.abort()
    assert (root / "usr/local/bin").is_dir()
    assert list((root / "usr/local/bin").iterdir()) == []


def test_commit_renames_staged_files_into_place(root: Path) -> None:
    dest = HostDestination(str(root))
    stage(dest, generated("/usr/local/bin/k3s"))
    stage(dest, generated("/etc/systemd/system/k3s.service.env", b"K3S_TOKEN=x\n", 0o600))
    commit(dest, ["/usr/local/bin/k3s", "/etc/systemd/system/k3s.service.env"])
    binary = root / "usr/local/bin/k3s"
    env = root / "etc/systemd/system/k3s.service.env"
    assert binary.read_bytes() == DATA and binary.stat().st_mode & 0o7777 == 0o755
    assert env.read_bytes() == b"K3S_TOKEN=x\n" and env.stat().st_mode & 0o7777 == 0o600
    assert tmp_files(root) == []


def test_commit_replaces_an_existing_file(root: Path) -> None:
    old = root / "usr/local/bin/k3s"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"old")
    old.chmod(0o700)
    dest = HostDestination(str(root))
    stage(dest, generated("/usr/local/bin/k3s"))
    assert old.read_bytes() == b"old"
    commit(dest, ["/usr/local/bin/k3s"])
    assert old.read_bytes() == DATA and old.stat().st_mode & 0o7777 == 0o755
    kept = root / "var/lib/k3bundle/previous/files/usr/local/bin/k3s"
    assert kept.read_bytes() == b"old"
    assert not (root / "var/lib/k3bundle/journal.json").exists()


def test_commit_creates_links(root: Path) -> None:
    dest = HostDestination(str(root))
    stage(dest, generated("/usr/local/bin/k3s"))
    commit(dest, ["/usr/local/bin/k3s"], [Link("/usr/local/bin/kubectl", "k3s")])
    link = root / "usr/local/bin/kubectl"
    assert link.is_symlink() and os.readlink(link) == "k3s"
    assert dest.link_is_current(Link("/usr/local/bin/kubectl", "k3s"))
    assert not dest.link_is_current(Link("/usr/local/bin/kubectl", "other"))


def test_commit_replaces_a_link_with_the_wrong_target(root: Path) -> None:
    link = root / "usr/local/bin/kubectl"
    link.parent.mkdir(parents=True)
    link.symlink_to("/opt/old-kubectl")
    commit(HostDestination(str(root)), [], [Link("/usr/local/bin/kubectl", "k3s")])
    assert os.readlink(link) == "k3s"


def test_is_current_only_for_same_content_and_mode(root: Path) -> None:
    placement = generated("/usr/local/bin/k3s")
    dest = HostDestination(str(root))
    assert not dest.is_current(placement)
    stage(dest, placement)
    assert not dest.is_current(placement)
    commit(dest, [placement.target])
    assert dest.is_current(placement)
    path = root / "usr/local/bin/k3s"
    path.chmod(0o644)
    assert not dest.is_current(placement)
    path.chmod(0o755)
    path.write_bytes(DATA.replace(b"k3s", b"k3z"))
    assert not dest.is_current(placement)


def test_is_current_is_false_for_a_symlink_to_identical_content(root: Path) -> None:
    real = root / "opt/k3s"
    real.parent.mkdir(parents=True)
    real.write_bytes(DATA)
    real.chmod(0o755)
    link = root / "usr/local/bin/k3s"
    link.parent.mkdir(parents=True)
    link.symlink_to(real)
    assert not HostDestination(str(root)).is_current(generated("/usr/local/bin/k3s"))


def test_existing_commands_ignores_our_own_links(root: Path) -> None:
    bin_dir = root / "usr/local/bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "kubectl").symlink_to("k3s")
    (root / "usr/bin").mkdir()
    (root / "usr/bin/crictl").write_bytes(b"#!/bin/sh\n")
    (root / "usr/bin/ctr").symlink_to("/nowhere")
    assert HostDestination(str(root)).existing_commands() == {"crictl", "ctr"}


def test_stage_of_corrupted_stream_raises_and_abort_cleans_up(root: Path) -> None:
    before = snapshot(root)
    entry = Entry("amd64/k3s", len(DATA), hashlib.sha256(b"other").hexdigest(), "k3s-binary")
    stream = VerifyingStream(cast(TarStream, io.BytesIO(DATA)), entry, "bundle.tar")
    dest = HostDestination(str(root))
    with pytest.raises(IntegrityError, match="amd64/k3s"):
        dest.stage(generated("/usr/local/bin/k3s"), stream.chunks(), lambda n: None)
    dest.abort()
    assert snapshot(root) == before


def test_stage_refuses_when_a_file_blocks_the_folder(root: Path) -> None:
    (root / "usr").write_bytes(b"not a folder")
    before = snapshot(root)
    dest = HostDestination(str(root))
    with pytest.raises(InstallError, match="usr"):
        stage(dest, generated("/usr/local/bin/k3s"))
    dest.abort()
    assert snapshot(root) == before


def test_stage_reports_progress_in_bytes(root: Path) -> None:
    seen: List[int] = []
    chunks = [memoryview(DATA[:3]), memoryview(DATA[3:])]
    HostDestination(str(root)).stage(generated("/usr/local/bin/k3s"), chunks, seen.append)
    assert seen == [3, len(DATA) - 3]
    assert sum(seen) == len(DATA)


def test_read_json_is_none_for_a_missing_file_and_refuses_a_broken_one(root: Path) -> None:
    dest = HostDestination(str(root))
    assert dest.read_json("/var/lib/k3bundle/record.json") is None
    (root / "etc/broken.json").write_text("{not json")
    with pytest.raises(InstallError, match=r"broken\.json is not valid JSON"):
        dest.read_json("/etc/broken.json")
    (root / "etc/good.json").write_text('{"bundle_id": "x"}')
    assert dest.read_json("/etc/good.json") == {"bundle_id": "x"}


def test_staged_path_is_a_hidden_name_beside_the_target(root: Path) -> None:
    dest = HostDestination(str(root))
    assert dest.staged_path("/usr/local/bin/k3s") == root / "usr/local/bin/.k3s.k3bundle-tmp"
    assert stage(dest, generated("/usr/local/bin/k3s")) == root / "usr/local/bin/k3s"
    assert dest.staged_path("/usr/local/bin/k3s").read_bytes() == DATA


def test_missing_dirs_lists_folders_to_create_parents_first_once(root: Path) -> None:
    dest = HostDestination(str(root))
    targets = ["/usr/local/bin/k3s", "/usr/local/bin/kubectl", "/etc/rancher/k3s/config.yaml"]
    assert dest.missing_dirs(targets) == [
        "/usr",
        "/usr/local",
        "/usr/local/bin",
        "/etc/rancher",
        "/etc/rancher/k3s",
    ]
    assert dest.missing_dirs(["/etc/hostname"]) == []


def test_read_env_reads_back_quoted_values_and_ignores_other_lines(root: Path) -> None:
    env = root / "etc/systemd/system/k3s.service.env"
    env.parent.mkdir(parents=True)
    env.write_text('K3S_TOKEN="a \\"quoted\\" token"\n# comment\nK3S_URL=https://h:6443\n\n')
    found = HostDestination(str(root)).read_env("/etc/systemd/system/k3s.service.env")
    assert found == {"K3S_TOKEN": 'a "quoted" token', "K3S_URL": "https://h:6443"}
    assert HostDestination(str(root)).read_env("/etc/missing.env") == {}


def test_journal_commit_of_a_replaced_link_keeps_no_copy_of_it(root: Path) -> None:
    link = root / "usr/local/bin/kubectl"
    link.parent.mkdir(parents=True)
    link.symlink_to("/opt/old-kubectl")
    dest = HostDestination(str(root))
    commit(dest, [], [Link("/usr/local/bin/kubectl", "k3s")])
    assert os.readlink(link) == "k3s"
    assert not (root / "var/lib/k3bundle/previous/files/usr/local/bin/kubectl").exists()


def test_read_env_reads_upstreams_single_quoted_export_lines(root: Path) -> None:
    """An env file upstream's install.sh wrote (taken over with --adopt) keeps its values."""
    env = root / "etc/systemd/system/k3s.service.env"
    env.parent.mkdir(parents=True)
    env.write_text("K3S_TOKEN='it'\\''s s3cret'\nHTTPS_PROXY='http://proxy:3128'\n")
    dest = HostDestination(str(root))
    assert dest.read_env("/etc/systemd/system/k3s.service.env") == {
        "K3S_TOKEN": "it's s3cret",
        "HTTPS_PROXY": "http://proxy:3128",
    }
