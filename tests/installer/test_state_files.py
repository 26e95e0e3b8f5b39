"""k3bundle's own state files are data, not authority: a crafted journal or record is refused.

Every test keeps a sentinel folder OUTSIDE beside the root and checks, byte for byte, that it and
(for refusals) the root itself did not change.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import pytest

from k3bundle.installer.errors import InstallError
from k3bundle.installer.host.record import Record, RecordError, parse_record
from tests.helpers import KeyFiles, installed, run_installer, snapshot
from tests.helpers import install_amd64 as install

RECORD = "var/lib/k3bundle/record.json"
JOURNAL = "var/lib/k3bundle/journal.json"
CONFIG = "etc/rancher/k3s/config.yaml"


@pytest.fixture
def root(tmp_path: Path, small_bundle: Path, signer: KeyFiles) -> Path:
    """A root with the bundle installed, and a /etc/shadow of its own."""
    folder = tmp_path / "root"
    installed(small_bundle, folder, signer)
    (folder / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    return folder


def record_of(root: Path) -> Dict[str, Any]:
    """The install record as JSON."""
    doc: Dict[str, Any] = json.loads((root / RECORD).read_text())
    return doc


def write_record(root: Path, doc: Dict[str, Any]) -> None:
    """Replace the install record with `doc`."""
    (root / RECORD).write_text(json.dumps(doc))


def one_line_error(result: Any, code: int, *words: str) -> None:
    """The run failed with `code`, one error and one hint line, no traceback, naming `words`."""
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("Error: ") and len(result.stderr.strip().splitlines()) <= 2
    for word in words:
        assert word in result.stderr, result.stderr


ESCAPES = [
    {"state": "apply", "change": {"moves": [["/../../outside/x", "/etc/shadow"]]}},
    {"state": "apply", "change": {"removals": ["/../../outside/shadow"]}},
    {"state": "apply", "change": {"removals": ["/etc/shadow"]}},
    {"state": "backup", "change": {"links": [["/usr/local/bin/kubectl", "/etc/shadow"]]}},
    {"state": "apply", "change": {"unlinks": ["/etc/passwd"]}},
    {"state": "staging", "staged": ["/etc/shadow"], "dirs": []},
    {"state": "staging", "staged": ["/usr/local/bin/../../../outside/.k3s.k3bundle-tmp"]},
    {"state": "staging", "staged": [], "dirs": ["/etc", "/home"]},
    {"state": "staging", "staged": [], "dirs": ["/../outside"]},
]


def journal_doc(partial: Dict[str, Any]) -> Dict[str, Any]:
    """A journal of the current shape, with `partial` filled in."""
    doc: Dict[str, Any] = {"format": "k3bundle-journal/v1", "staged": [], "dirs": []}
    doc.update(partial)
    if "change" in partial:
        empty: Dict[str, Any] = {
            "moves": [],
            "removals": [],
            "links": [],
            "unlinks": [],
            "backups": [],
        }
        doc["change"] = {**empty, "keep_previous": True, **partial["change"]}
    return doc


@pytest.mark.parametrize("crafted", ESCAPES, ids=lambda d: json.dumps(d)[:60])
def test_a_crafted_journal_is_refused_and_status_only_reports_it(
    root: Path, outside: Path, crafted: Dict[str, Any]
) -> None:
    (root / JOURNAL).write_text(json.dumps(journal_doc(crafted)) + "\n")
    before, before_outside = snapshot(root), snapshot(outside)
    status = run_installer("status", "--root", str(root), "--json")
    assert "cannot trust" in json.loads(status.stdout)["interrupted"]
    assert snapshot(root) == before, "status is read-only"
    for command in (["recover"], ["uninstall"], ["rollback"]):
        result = run_installer(*command, "--root", str(root))
        one_line_error(result, 7, "journal.json", "move the journal away")
        assert snapshot(root) == before and snapshot(outside) == before_outside


@pytest.mark.parametrize(
    "junk", [b"[1, 2]", b"{not json}\n", b"[" * 100_000 + b"\n", b'{"state": 5}\n', b"\xff\xfe\n"]
)
def test_a_malformed_journal_never_gives_a_traceback(root: Path, junk: bytes) -> None:
    (root / JOURNAL).write_bytes(junk)
    before = snapshot(root)
    status = run_installer("status", "--root", str(root))
    assert status.returncode == 9 and "Traceback" not in status.stderr
    one_line_error(run_installer("recover", "--root", str(root)), 7, "journal.json")
    assert snapshot(root) == before


def test_a_record_listing_etc_shadow_does_not_make_uninstall_delete_it(
    root: Path, outside: Path
) -> None:
    doc = record_of(root)
    doc["files"].append({**doc["files"][0], "path": "/etc/shadow"})
    write_record(root, doc)
    before = snapshot(root)
    result = run_installer("uninstall", "--root", str(root))
    one_line_error(result, 7, "record.json", "/etc/shadow", "never places")
    assert snapshot(root) == before


@pytest.mark.parametrize("bin_dir", ["/../../x", "/tmp", "/usr/local/bin/../../../outside"])
def test_a_record_with_a_foreign_bin_dir_is_refused_by_the_next_install(
    root: Path, outside: Path, small_bundle: Path, signer: KeyFiles, bin_dir: str
) -> None:
    doc = record_of(root)
    doc["options"]["bin_dir"] = bin_dir
    write_record(root, doc)
    before, before_outside = snapshot(root), snapshot(outside)
    one_line_error(install(small_bundle, root, signer), 7, "bin_dir")
    assert snapshot(root) == before and snapshot(outside) == before_outside


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("files", 5),
        ("files", [{"path": "/usr/local/bin/k3s"}]),
        ("links", [{"path": "/usr/local/bin/kubectl", "target": "/etc/shadow"}]),
        ("folders", ["/home"]),
        ("ensured", ["/etc/shadow"]),
        ("format", "k3bundle-record/v9"),
        ("role", "root"),
        ("options", {"exec_args": "--x"}),
        ("options", {"unknown": 1}),
    ],
)
def test_a_record_with_a_wrong_field_is_refused_everywhere_without_a_traceback(
    root: Path, small_bundle: Path, signer: KeyFiles, field: str, value: Any
) -> None:
    doc = record_of(root)
    doc[field] = value
    write_record(root, doc)
    before = snapshot(root)
    one_line_error(run_installer("status", "--root", str(root)), 7, "record.json")
    one_line_error(run_installer("uninstall", "--root", str(root)), 7, "record.json")
    one_line_error(run_installer("rollback", "--root", str(root)), 7, "record.json")
    one_line_error(install(small_bundle, root, signer), 7, "record.json")
    assert snapshot(root) == before


def test_a_record_that_is_not_json_is_refused_with_how_to_repair(root: Path) -> None:
    (root / RECORD).write_bytes(b"{" * 10_000)
    result = run_installer("status", "--root", str(root))
    one_line_error(result, 7, "record.json", "move it away and reinstall")


def test_uninstall_keeps_a_file_changed_since_install_and_says_so(root: Path) -> None:
    (root / CONFIG).write_text("node-name: edited-by-hand\n")
    result = run_installer("uninstall", "--root", str(root))
    assert result.returncode == 0, result.stderr
    assert "kept /etc/rancher/k3s/config.yaml: changed since k3bundle placed it" in result.stderr
    assert (root / CONFIG).read_text() == "node-name: edited-by-hand\n"
    assert not (root / "usr/local/bin/k3s").exists()


def test_uninstall_force_removes_a_changed_file_too(root: Path) -> None:
    (root / CONFIG).write_text("node-name: edited-by-hand\n")
    result = run_installer("uninstall", "--force", "--root", str(root))
    assert result.returncode == 0, result.stderr
    assert not (root / CONFIG).exists()


def test_uninstall_keeps_a_link_that_now_points_elsewhere(root: Path) -> None:
    kubectl = root / "usr/local/bin/kubectl"
    kubectl.unlink()
    kubectl.symlink_to("/opt/my/kubectl")
    assert run_installer("uninstall", "--root", str(root)).returncode == 0
    assert kubectl.is_symlink()


def test_rollback_keeps_a_changed_file_it_would_remove(
    tmp_path: Path, small_bundle: Path, signer: KeyFiles
) -> None:
    """Upgrading with --config adds config-override.json; edited, rollback keeps it."""
    root = tmp_path / "root"
    installed(small_bundle, root, signer)
    config = tmp_path / "site.yaml"
    config.write_text("node-name: n1\n")
    installed(small_bundle, root, signer, "--config", str(config))
    override = root / "var/lib/k3bundle/config-override.json"
    override.write_text('{"node-name": "edited"}\n')
    result = run_installer("rollback", "--root", str(root))
    assert result.returncode == 0, result.stderr
    assert "kept /var/lib/k3bundle/config-override.json" in result.stderr
    assert override.read_text() == '{"node-name": "edited"}\n'


def test_a_planted_file_in_the_previous_generation_is_never_restored_over_the_host(
    tmp_path: Path, small_bundle: Path, signer: KeyFiles
) -> None:
    """An --adopt previous generation is the folder's content: a planted /etc/shadow there is
    refused, not copied over the host's."""
    root = tmp_path / "root"
    (root / "usr/local/bin").mkdir(parents=True)
    (root / "usr/local/bin/k3s").write_text("#!/bin/sh\necho foreign\n")
    installed(small_bundle, root, signer, "--adopt")
    kept = root / "var/lib/k3bundle/previous/files/etc/shadow"
    kept.parent.mkdir(parents=True)
    kept.write_text("attacker::0:0:::\n")
    (root / "etc/shadow").write_text("root:*:19000::::::\n")
    before = snapshot(root)
    result = run_installer("rollback", "--root", str(root))
    one_line_error(result, 7, "/etc/shadow", "which no install keeps")
    assert snapshot(root) == before


def test_the_record_model_round_trips_and_refuses_what_it_cannot_place() -> None:
    record = Record("ab" * 32, "v1.31.4+k3s1", "amd64", "server", folders=("/etc/rancher",))
    assert parse_record(record.to_bytes(), "record") == record
    doc = json.loads(record.to_bytes())
    doc["folders"] = ["/"]
    with pytest.raises(RecordError, match="never creates"):
        parse_record(json.dumps(doc).encode(), "record")
    assert issubclass(RecordError, InstallError)
