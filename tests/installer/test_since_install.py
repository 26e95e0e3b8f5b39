"""Upgrade bundles (`build --since`): the host must hold what they rely on, or nothing changes.

Bundle A is a full stand-in release; bundle B is the next k3s binary whose manifest leaves out
A's airgap image tarball (same bytes) and names it in `requires`, as bundler/since.py writes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path
from typing import Any, Dict, Tuple

import pytest

from k3bundle.bundler import keys
from k3bundle.bundler.writer import write_bundle
from k3bundle.installer.cli import main
from k3bundle.installer.errors import FormatError, RequirementError
from k3bundle.installer.format.manifest import Entry, Manifest, parse
from k3bundle.installer.format.requires import Requirement, Since, requires_json
from tests.helpers import (
    CliResult,
    KeyFiles,
    installed,
    make_bundle,
    make_payload,
    run_installer,
    snapshot,
)
from tests.helpers import (
    install_amd64 as install,
)

NEW_VERSION = "v1.32.0+k3s1"
IMAGES = "var/lib/rancher/k3s/agent/images"
AIRGAP = f"{IMAGES}/k3s-airgap-images-amd64.tar.zst"
RECORD = "var/lib/k3bundle/record.json"
PREVIOUS = "var/lib/k3bundle/previous"
Bundles = Tuple[Path, Path]


def upgrade_bundle(folder: Path, full: Path, signer: KeyFiles) -> Path:
    """B: NEW_VERSION's binary; A's airgap tarball (the same bytes here) only required."""
    manifest_bytes = _manifest_bytes(full)
    previous = parse(manifest_bytes)
    airgap = next(e for e in previous.entries if e.kind == "airgap-images" and e.arch == "amd64")
    payload = make_payload(folder / "payload", ("amd64",), version=NEW_VERSION)
    binary = next(e for _, e in payload.values() if e.kind == "k3s-binary")
    required = Requirement(airgap.path, airgap.sha256, airgap.size, airgap.kind, "amd64")
    since = Since(hashlib.sha256(manifest_bytes).hexdigest(), previous.k3s_version, full.name)
    extra = requires_json([required], since)
    manifest = Manifest(NEW_VERSION, ("amd64",), (binary,), extra=extra)
    files = {binary.path: payload[binary.path][0]}
    output = write_bundle(folder / "upgrade.tar", manifest, files, keys.load_signer(signer.private))
    return output.files[0]


def _manifest_bytes(bundle: Path) -> bytes:
    result = inspect_cli(str(bundle), "--manifest")
    assert result.returncode == 0, result.stderr
    return result.stdout.encode("utf-8")


def inspect_cli(*args: str) -> CliResult:
    """`inspect ARGS` in process (it reads only: no --root)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["inspect", *args])
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory, signer: KeyFiles) -> Bundles:
    """(A, B): a full amd64 bundle and the upgrade built against it."""
    folder = tmp_path_factory.mktemp("since")
    full = make_bundle(folder / "a", ("amd64",), signer, name="full.tar").files[0]
    return full, upgrade_bundle(folder / "b", full, signer)


def record_of(root: Path) -> Dict[str, Any]:
    """The install record under ROOT."""
    doc: Dict[str, Any] = json.loads((root / RECORD).read_text())
    return doc


def generation(root: Path) -> Dict[str, Tuple[int, str]]:
    """snapshot() without the kept previous generation."""
    return {k: v for k, v in snapshot(root).items() if not k.startswith(PREVIOUS)}


def test_upgrade_installs_over_the_full_bundle_and_keeps_the_required_tarball(
    bundles: Bundles, tmp_path: Path, signer: KeyFiles
) -> None:
    full, upgrade = bundles
    installed(full, tmp_path, signer)
    tarball = (tmp_path / AIRGAP).read_bytes()
    result = installed(upgrade, tmp_path, signer)
    assert f"unchanged /{AIRGAP}" in result.stderr
    assert (tmp_path / AIRGAP).read_bytes() == tarball
    assert NEW_VERSION.encode() in (tmp_path / "usr/local/bin/k3s").read_bytes()
    files = {f["path"]: f for f in record_of(tmp_path)["files"]}
    assert files[f"/{AIRGAP}"]["sha256"] == hashlib.sha256(tarball).hexdigest()
    assert files[f"/{AIRGAP}"]["kind"] == "airgap-images"
    status = run_installer("status", "--root", str(tmp_path))
    assert status.returncode == 0 and "all match the record" in status.stdout


def test_upgrade_on_a_fresh_host_is_refused_and_changes_nothing(
    bundles: Bundles, tmp_path: Path, signer: KeyFiles, outside: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    before, around = snapshot(root), snapshot(outside)
    result = install(bundles[1], root, signer)
    assert result.returncode == RequirementError.exit_code == 10
    error = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1, result.stderr
    sha = hashlib.sha256(
        (bundles[0].parent / "payload/k3s-airgap-images-amd64.tar.zst").read_bytes()
    )
    assert f"/{AIRGAP} (sha256 {sha.hexdigest()}" in error[0]
    assert "k3bundle has installed nothing on this host" in error[0]
    assert f"Install the full bundle {bundles[0].name}" in result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(root) == before and snapshot(outside) == around


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        ("flip", "no longer match that sha256"),
        ("truncate", "on disk it has"),
        ("remove", "missing on disk"),
    ],
)
def test_upgrade_refused_when_the_required_tarball_changed_behind_the_record(
    bundles: Bundles, tmp_path: Path, signer: KeyFiles, damage: str, said: str
) -> None:
    installed(bundles[0], tmp_path, signer)
    target = tmp_path / AIRGAP
    data = target.read_bytes()
    if damage == "flip":
        target.write_bytes(bytes([data[0] ^ 1]) + data[1:])
    elif damage == "truncate":
        target.write_bytes(data[:-1])
    else:
        target.unlink()
    before = snapshot(tmp_path)
    result = install(bundles[1], tmp_path, signer)
    assert result.returncode == 10, result.stderr
    assert said in result.stderr
    assert snapshot(tmp_path) == before


def test_upgrade_refused_when_the_record_names_other_bytes(
    bundles: Bundles, tmp_path: Path, signer: KeyFiles
) -> None:
    installed(bundles[0], tmp_path, signer)
    record = record_of(tmp_path)
    for item in record["files"]:
        if item["path"] == f"/{AIRGAP}":
            item["sha256"] = "0" * 64
    (tmp_path / RECORD).write_text(json.dumps(record))
    before = snapshot(tmp_path)
    result = install(bundles[1], tmp_path, signer)
    assert result.returncode == 10, result.stderr
    assert f"the install record lists sha256 {'0' * 64}" in result.stderr
    assert snapshot(tmp_path) == before


def test_rollback_after_the_upgrade_restores_the_full_generation_exactly(
    bundles: Bundles, tmp_path: Path, signer: KeyFiles
) -> None:
    installed(bundles[0], tmp_path, signer)
    first = generation(tmp_path)
    installed(bundles[1], tmp_path, signer)
    assert generation(tmp_path) != first
    result = run_installer("rollback", "--root", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert generation(tmp_path) == first


def test_uninstall_after_the_upgrade_removes_the_required_tarball_too(
    bundles: Bundles, tmp_path: Path, signer: KeyFiles
) -> None:
    installed(bundles[0], tmp_path, signer)
    installed(bundles[1], tmp_path, signer)
    result = run_installer("uninstall", "--root", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / AIRGAP).exists()
    assert not (tmp_path / "usr/local/bin/k3s").exists()


def test_inspect_shows_what_the_upgrade_relies_on_and_the_saving(bundles: Bundles) -> None:
    full, upgrade = bundles
    result = inspect_cli(str(upgrade))
    assert result.returncode == 0, result.stderr
    assert f"upgrade of:    {full.name} (k3s v1.31.4+k3s1" in result.stdout
    assert "relies on:     1 files" in result.stdout
    assert "not carried" in result.stdout
    assert "k3s-airgap-images-amd64.tar.zst" in result.stdout
    doc = json.loads(inspect_cli(str(upgrade), "--json").stdout)
    assert [r["path"] for r in doc["requires"]] == ["amd64/k3s-airgap-images-amd64.tar.zst"]
    assert doc["since"]["name"] == full.name


def test_inspect_manifest_prints_the_exact_bytes_whose_sha256_is_the_bundle_id(
    bundles: Bundles,
) -> None:
    data = _manifest_bytes(bundles[1])
    doc = json.loads(inspect_cli(str(bundles[1]), "--json").stdout)
    assert hashlib.sha256(data).hexdigest() == doc["bundle_id"]
    assert json.loads(data)["format"] == "k3bundle/v2"


# --- the manifest fields, strictly --------------------------------------------------------


def _doc(bundle: Path) -> Dict[str, Any]:
    doc: Dict[str, Any] = json.loads(_manifest_bytes(bundle))
    return doc


def _bytes(doc: Dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (lambda d: d.update(format="k3bundle/v1"), "but declares 'k3bundle/v1'"),
        (lambda d: d["requires"][0].update(kind="chart"), "only image archives can be required"),
        (lambda d: d["requires"][0].update(arch="arm64"), "an architecture not listed"),
        (lambda d: d["requires"][0].update(sha256="xyz"), "field 'sha256' has a malformed"),
        (lambda d: d["requires"][0].update(path="../etc/shadow"), "leaves the bundle"),
        (lambda d: d["requires"][0].update(size=-1), "negative size"),
        (lambda d: d["requires"].append(dict(d["requires"][0])), "listed twice"),
        (lambda d: d.pop("since"), "no 'since' naming the bundle"),
        (lambda d: d["since"].update(bundle_id="abc"), "field 'bundle_id' has a malformed"),
        (lambda d: d["since"].update(name="x\x1b[2J"), "field 'name' has a malformed"),
        (lambda d: d.update(requires={"path": "x"}), "field 'requires' is missing or not a list"),
    ],
)
def test_manifest_requires_is_validated_strictly(bundles: Bundles, change: Any, said: str) -> None:
    doc = _doc(bundles[1])
    change(doc)
    with pytest.raises(FormatError) as caught:
        parse(_bytes(doc))
    assert said in caught.value.message


def test_required_path_that_is_also_carried_is_refused(bundles: Bundles) -> None:
    doc = _doc(bundles[1])
    doc["requires"][0]["path"] = doc["files"][0]["path"]
    with pytest.raises(FormatError, match="also carried"):
        parse(_bytes(doc))


def test_a_v1_installer_format_check_refuses_v2(bundles: Bundles) -> None:
    doc = _doc(bundles[1])
    assert doc["format"] == "k3bundle/v2"
    doc["format"] = "k3bundle/v3"
    with pytest.raises(FormatError, match="reads only k3bundle/v1 and k3bundle/v2"):
        parse(_bytes(doc))


def test_requirements_for_another_arch_are_not_asked_of_this_host(
    tmp_path: Path, signer: KeyFiles, bundles: Bundles
) -> None:
    payload = make_payload(tmp_path / "payload", ("amd64", "arm64"), version=NEW_VERSION)
    entries = tuple(e for _, e in payload.values() if e.kind == "k3s-binary")
    arm = next(e for _, e in payload.values() if e.kind == "airgap-images" and e.arch == "arm64")
    required = Requirement(arm.path, arm.sha256, arm.size, arm.kind, "arm64")
    since = Since("a" * 64, "v1.31.4+k3s1", "full.tar")
    manifest = Manifest(
        NEW_VERSION, ("amd64", "arm64"), entries, extra=requires_json([required], since)
    )
    files = {e.path: payload[e.path][0] for e in entries}
    output = write_bundle(tmp_path / "b.tar", manifest, files, keys.load_signer(signer.private))
    installed(output.files[0], tmp_path / "root", signer)
    assert isinstance(entries[0], Entry)
