"""`k3bundle build` end to end against the local release server: what lands in DIR and the cache."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import random
import socket
import subprocess
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import pytest
import requests

from k3bundle.bundler import build as build_module
from k3bundle.installer.format.manifest import arch_from_machine
from tests.helpers import KeyFiles, run_k3bundle
from tests.release_server import ReleaseServer

VERSION = "v1.31.4+k3s1"
RC_VERSION = "v1.32.4-rc1+k3s1"
BINARIES = {"amd64": "k3s", "arm64": "k3s-arm64", "arm": "k3s-armhf"}
BuildRun = Callable[..., Tuple[int, str]]
ManifestOf = Callable[[Path], Dict[str, Any]]
FindBundle = Callable[[Path], Path]
Unverified = Callable[[Path], List[str]]
IMAGES_DIR = "var/lib/rancher/k3s/agent/images"


def sha256_of(path: Path) -> str:
    """The sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_by_path(manifest: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """The manifest's file entries by member path."""
    return {f["path"]: f for f in manifest["files"]}


def install(bundle: Path, root: Path, signer: KeyFiles, *args: str) -> str:
    """`k3bundle install BUNDLE --root ROOT --pubkey PUB ARGS` in a subprocess; it must succeed."""
    done = run_k3bundle(
        "install", str(bundle), "--root", str(root), "--pubkey", str(signer.public), *args
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def payload_hits(server: ReleaseServer) -> int:
    """Requests for binaries and image tarballs (not checksum files or channels)."""
    return sum(
        len(hits)
        for path, hits in server.hits.items()
        if path.startswith("/download/") and not path.endswith(".txt")
    )


# --- architectures and formats --------------------------------------------------------------


@pytest.mark.parametrize("arch", ["amd64", "arm64", "arm"])
def test_each_arch_bundles_its_binary_and_images_checked_against_its_checksum_file(
    run_build: BuildRun, manifest_of: ManifestOf, server: ReleaseServer, tmp_path: Path, arch: str
) -> None:
    code, output = run_build("--version", VERSION, "--arch", arch)
    assert code == 0, output
    manifest = manifest_of(tmp_path / "dist")
    binary, images = BINARIES[arch], f"k3s-airgap-images-{arch}.tar.zst"
    by_path = files_by_path(manifest)
    assert sorted(by_path) == sorted([f"{arch}/{binary}", f"{arch}/{images}"])
    for name in (binary, images):
        source = by_path[f"{arch}/{name}"]["source"]
        assert source["url"] == server.url_for(VERSION, name)
        assert source["checksum_file"] == server.url_for(VERSION, f"sha256sum-{arch}.txt")
    assert manifest["architectures"] == [arch]


def test_arm_bundle_installs_the_armhf_binary_as_usr_local_bin_k3s(
    run_build: BuildRun,
    find_bundle: FindBundle,
    server: ReleaseServer,
    signer: KeyFiles,
    tmp_path: Path,
) -> None:
    code, output = run_build(
        "--version", VERSION, "--arch", "arm", "--sign-key", str(signer.private)
    )
    assert code == 0, output
    assert [path for path, _ in server.hits.items() if "armhf" in path] == [
        f"/download/{VERSION}/k3s-armhf"
    ]
    root = tmp_path / "root"
    install(find_bundle(tmp_path / "dist"), root, signer, "--arch", "arm")
    release = server.root / VERSION
    assert (root / "usr/local/bin/k3s").read_bytes() == (release / "k3s-armhf").read_bytes()
    images = root / IMAGES_DIR / "k3s-airgap-images-arm.tar.zst"
    assert images.read_bytes() == (release / "k3s-airgap-images-arm.tar.zst").read_bytes()


def test_a_prerelease_version_builds(
    run_build: BuildRun, manifest_of: ManifestOf, tmp_path: Path
) -> None:
    code, output = run_build("--version", RC_VERSION, "--arch", "amd64")
    assert code == 0, output
    assert manifest_of(tmp_path / "dist")["k3s_version"] == RC_VERSION
    assert (tmp_path / "dist" / "k3s-v1.32.4-rc1-k3s1-amd64.tar").is_file()


@pytest.mark.parametrize(
    ("fmt", "tarball"),
    [("zst", ".tar.zst"), ("gz", ".tar.gz"), ("tar", ".tar")],
)
def test_images_format_picks_the_matching_tarball(
    run_build: BuildRun,
    manifest_of: ManifestOf,
    server: ReleaseServer,
    tmp_path: Path,
    fmt: str,
    tarball: str,
) -> None:
    code, output = run_build("--version", VERSION, "--arch", "arm64", "--images-format", fmt)
    assert code == 0, output
    name = f"k3s-airgap-images-arm64{tarball}"
    entry = files_by_path(manifest_of(tmp_path / "dist"))[f"arm64/{name}"]
    assert entry["sha256"] == sha256_of(server.root / VERSION / name)
    assert len(server.hits_for(name)) == 1
    assert [p for p in server.hits if "airgap" in p] == [f"/download/{VERSION}/{name}"]


def test_several_arches_in_one_bundle_and_install_picks_the_hosts(
    run_build: BuildRun,
    manifest_of: ManifestOf,
    find_bundle: FindBundle,
    server: ReleaseServer,
    signer: KeyFiles,
    tmp_path: Path,
) -> None:
    arches = ("amd64", "arm64", "arm")
    flags = [part for arch in arches for part in ("--arch", arch)]
    code, output = run_build("--version", VERSION, *flags, "--sign-key", str(signer.private))
    assert code == 0, output
    manifest = manifest_of(tmp_path / "dist")
    assert manifest["architectures"] == list(arches)
    assert {f["arch"] for f in manifest["files"]} == set(arches)
    assert len(manifest["files"]) == 6
    host = arch_from_machine(platform.machine())
    root = tmp_path / "root"
    install(find_bundle(tmp_path / "dist"), root, signer)
    release = server.root / VERSION
    assert (root / "usr/local/bin/k3s").read_bytes() == (release / BINARIES[host]).read_bytes()
    assert sorted(p.name for p in (root / IMAGES_DIR).iterdir()) == [
        f"k3s-airgap-images-{host}.tar.zst"
    ]


# --- checksum files -------------------------------------------------------------------------


def test_checksum_file_in_another_order_with_extra_lines_still_works(
    run_build: BuildRun,
    manifest_of: ManifestOf,
    server: ReleaseServer,
    tmp_path: Path,
    scratch_version: str,
) -> None:
    sums = server.root / scratch_version / "sha256sum-amd64.txt"
    lines = sums.read_text().splitlines()
    lines.append(f"{'e' * 64}  k3s-airgap-images-amd64.tar.lz4")
    lines.append(f"{'f' * 64}  k3s-images.txt")
    random.Random(7).shuffle(lines)
    lines.reverse()  # the binary's line is never where it was
    sums.write_text("\n".join(lines) + "\n")
    code, output = run_build("--version", scratch_version, "--arch", "amd64")
    assert code == 0, output
    by_path = files_by_path(manifest_of(tmp_path / "dist"))
    for name in ("k3s", "k3s-airgap-images-amd64.tar.zst"):
        assert by_path[f"amd64/{name}"]["sha256"] == sha256_of(server.root / scratch_version / name)


def test_checksum_file_without_a_line_for_the_file_names_file_and_url(
    run_build: BuildRun, server: ReleaseServer, tmp_path: Path, scratch_version: str
) -> None:
    sums = server.root / scratch_version / "sha256sum-amd64.txt"
    kept = [line for line in sums.read_text().splitlines() if not line.endswith("  k3s")]
    sums.write_text("\n".join(kept) + "\n")
    code, output = run_build("--version", scratch_version, "--arch", "amd64")
    assert code == 8
    url = server.url_for(scratch_version, "sha256sum-amd64.txt")
    assert f"{url} has no line for k3s" in output
    assert payload_hits(server) == 0
    assert not (tmp_path / "dist").exists()


def test_wrong_expected_hash_exits_4_and_caches_nothing(
    run_build: BuildRun,
    server: ReleaseServer,
    tmp_path: Path,
    scratch_version: str,
    unverified_in_cache: Unverified,
) -> None:
    release = server.root / scratch_version
    actual = sha256_of(release / "k3s")
    wrong = hashlib.sha256(b"not the binary").hexdigest()
    sums = release / "sha256sum-amd64.txt"
    sums.write_text(sums.read_text().replace(actual, wrong))
    code, output = run_build("--version", scratch_version, "--arch", "amd64")
    assert code == 4
    url = server.url_for(scratch_version, "k3s")
    assert f"checksum mismatch for {url}: expected sha256 {wrong}, got {actual}" in output
    cache = tmp_path / "cache"
    assert not (cache / "sha256" / wrong).exists() and not (cache / "sha256" / actual).exists()
    assert list((cache / "partial").iterdir()) == []
    assert unverified_in_cache(cache) == []
    assert not (tmp_path / "dist").exists()


def test_corrupt_download_exits_4_naming_url_expected_and_actual(
    run_build: BuildRun, server: ReleaseServer, tmp_path: Path, unverified_in_cache: Unverified
) -> None:
    name = "k3s-airgap-images-arm64.tar.zst"
    server.fault(name, "corrupt")
    code, output = run_build("--version", VERSION, "--arch", "arm64", "--retries", "0")
    assert code == 4
    expected = sha256_of(server.root / VERSION / name)
    assert server.url_for(VERSION, name) in output and f"expected sha256 {expected}, got " in output
    cache = tmp_path / "cache"
    assert not (cache / "sha256" / expected).exists()
    assert list((cache / "partial").iterdir()) == []
    assert unverified_in_cache(cache) == []


# --- the cache ------------------------------------------------------------------------------


def test_rebuild_downloads_no_payload_and_writes_a_byte_identical_signed_bundle(
    run_build: BuildRun, server: ReleaseServer, signer: KeyFiles, tmp_path: Path
) -> None:
    args = ("--version", VERSION, "--arch", "amd64", "--arch", "arm")
    sign = ("--sign-key", str(signer.private))
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    code, output = run_build(*args, *sign, "-o", str(first_dir))
    assert code == 0, output
    assert payload_hits(server) == 4
    code, output = run_build(*args, *sign, "-o", str(second_dir))
    assert code == 0, output
    assert payload_hits(server) == 4  # nothing fetched the second time
    assert "Downloaded 0 B; everything else came from the cache." in output
    first = {p.name: sha256_of(p) for p in first_dir.iterdir()}
    second = {p.name: sha256_of(p) for p in second_dir.iterdir()}
    assert first == second
    assert any(name.endswith(".tar") for name in first)
    assert f"signed by {signer.key_id}" in output


def test_rebuild_from_a_rotted_cache_file_fails_naming_it_and_keeps_the_last_build(
    run_build: BuildRun, tmp_path: Path
) -> None:
    args = ("--version", VERSION, "--arch", "amd64")
    code, output = run_build(*args)
    assert code == 0, output
    dist = tmp_path / "dist"
    before = {p.name: sha256_of(p) for p in dist.iterdir()}
    cache = tmp_path / "cache" / "sha256"
    blob = max(cache.iterdir(), key=lambda p: p.stat().st_size)  # the airgap images
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    code, output = run_build(*args, "--name", "other")
    assert code == 4, output
    assert f"{blob} changed since it was verified" in output
    assert "build again" in output
    assert {p.name: sha256_of(p) for p in dist.iterdir()} == before  # nothing lost, no temp file
    assert sha256sum_check(dist).returncode == 0


def test_offline_rebuild_works_with_the_server_stopped(
    release_root: Path, manifest_of: ManifestOf, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    with ReleaseServer(release_root, {"stable": VERSION}) as private:
        urls = ("--release-url", private.release_url, "--channel-url", private.channel_url)
        port = private.port
        online = run_k3bundle(
            "build", "--arch", "amd64", "--cache-dir", str(cache), "-o", str(tmp_path / "a"), *urls
        )
        assert online.returncode == 0, online.stderr
    with socket.socket() as probe:  # the release URL now points at a closed port
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    by_channel = run_k3bundle(
        *("build", "--arch", "amd64", "--offline", "--cache-dir", str(cache)),
        *("-o", str(tmp_path / "b"), *urls),
    )
    assert by_channel.returncode == 0, by_channel.stderr
    assert manifest_of(tmp_path / "b")["k3s_version"] == VERSION  # the cached channel answer
    pinned = run_k3bundle(
        *("build", "--arch", "amd64", "--offline", "--version", VERSION),
        *("--cache-dir", str(cache), "-o", str(tmp_path / "c"), *urls),
    )
    assert pinned.returncode == 0, pinned.stderr
    a = {p.name: sha256_of(p) for p in (tmp_path / "a").iterdir()}
    assert {p.name: sha256_of(p) for p in (tmp_path / "b").iterdir()} == a
    assert {p.name: sha256_of(p) for p in (tmp_path / "c").iterdir()} == a


def test_offline_needs_no_server_at_all(
    run_build: BuildRun, manifest_of: ManifestOf, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, output = run_build("--version", VERSION, "--arch", "arm64")
    assert code == 0, output

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("an --offline build made a request")

    monkeypatch.setattr(requests.Session, "send", no_network)
    offline = tmp_path / "offline"
    code, output = run_build(
        "--offline", "--version", VERSION, "--arch", "arm64", "-o", str(offline)
    )
    assert code == 0, output
    assert manifest_of(offline)["architectures"] == ["arm64"]


def test_offline_with_an_empty_cache_fails_saying_what_is_missing(
    run_build: BuildRun, server: ReleaseServer, tmp_path: Path
) -> None:
    code, output = run_build("--offline", "--version", VERSION, "--arch", "amd64")
    assert code == 8
    url = server.url_for(VERSION, "sha256sum-amd64.txt")
    assert f"--offline: {url} is not in the cache" in output
    assert "pass the same --release-url" in output
    code, output = run_build("--offline", "--channel", "stable", "--arch", "amd64")
    assert code == 8
    assert "channel 'stable' was never resolved with this cache" in output
    assert server.log == []


def test_offline_with_a_half_filled_cache_names_the_missing_file(
    run_build: BuildRun, server: ReleaseServer, tmp_path: Path
) -> None:
    code, output = run_build("--version", VERSION, "--arch", "amd64")
    assert code == 0, output
    images = server.root / VERSION / "k3s-airgap-images-amd64.tar.zst"
    (tmp_path / "cache" / "sha256" / sha256_of(images)).unlink()
    code, output = run_build("--offline", "--version", VERSION, "--arch", "amd64")
    assert code == 8
    assert "--offline: k3s-airgap-images-amd64.tar.zst" in output and "not in the cache" in output


def test_manifest_records_each_files_source_and_the_checksum_it_was_checked_against(
    run_build: BuildRun, manifest_of: ManifestOf, server: ReleaseServer, tmp_path: Path
) -> None:
    code, output = run_build("--version", VERSION, "--arch", "arm64")
    assert code == 0, output
    sums_url = server.url_for(VERSION, "sha256sum-arm64.txt")
    sums_text = (server.root / VERSION / "sha256sum-arm64.txt").read_text()
    listed = {name: sha for sha, name in (line.split() for line in sums_text.splitlines())}
    for entry in manifest_of(tmp_path / "dist")["files"]:
        name = entry["path"].split("/", 1)[1]
        assert entry["source"] == {
            "url": server.url_for(VERSION, name),
            "checksum_file": sums_url,
            "checksum": listed[name],
        }
        assert entry["sha256"] == listed[name] == sha256_of(server.root / VERSION / name)


# --- the output folder ----------------------------------------------------------------------


def sha256sum_check(folder: Path) -> subprocess.CompletedProcess[str]:
    """The real `sha256sum -c SHA256SUMS`, run in `folder`."""
    return subprocess.run(
        ["sha256sum", "-c", "SHA256SUMS"], cwd=folder, capture_output=True, text=True, check=False
    )


def test_output_folder_holds_one_bundle_the_installer_and_sha256sums(
    run_build: BuildRun, tmp_path: Path
) -> None:
    code, output = run_build("--version", VERSION, "--arch", "amd64")
    assert code == 0, output
    dist = tmp_path / "dist"
    bundle = "k3s-v1.31.4-k3s1-amd64.tar"
    assert sorted(p.name for p in dist.iterdir()) == sorted(
        [bundle, "k3bundle-install.pyz", "SHA256SUMS"]
    )
    check = sha256sum_check(dist)
    assert check.returncode == 0, check.stdout + check.stderr
    assert sorted(check.stdout.splitlines()) == sorted(
        [f"{bundle}: OK", "k3bundle-install.pyz: OK"]
    )


def _stats(folder: Path) -> Dict[str, Tuple[int, int, str]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, sha256_of(p)) for p in folder.iterdir()}


def test_same_build_into_the_same_folder_is_up_to_date_and_writes_nothing(
    run_build: BuildRun, server: ReleaseServer, signer: KeyFiles, tmp_path: Path
) -> None:
    args = ("--version", VERSION, "--arch", "amd64", "--sign-key", str(signer.private))
    code, output = run_build(*args, "--split", "100K")
    assert code == 0, output
    dist = tmp_path / "dist"
    before, hits = _stats(dist), payload_hits(server)
    code, output = run_build(*args, "--split", "100K")
    assert code == 0, output
    assert output.startswith("Up to date: k3s-v1.31.4-k3s1-amd64.tar.000")
    assert "nothing was written again (--force writes it anyway)" in output
    assert _stats(dist) == before  # same inodes and mtimes: not one file rewritten
    assert payload_hits(server) == hits
    assert sha256sum_check(dist).returncode == 0
    code, output = run_build(*args, "--split", "100K", "--json")
    assert json.loads(output)["up_to_date"] is True


def test_a_changed_output_file_or_input_or_force_writes_the_build_again(
    run_build: BuildRun, signer: KeyFiles, tmp_path: Path
) -> None:
    args = ("--version", VERSION, "--arch", "amd64")
    assert run_build(*args)[0] == 0
    dist = tmp_path / "dist"
    bundle = dist / "k3s-v1.31.4-k3s1-amd64.tar"
    good = sha256_of(bundle)
    stat = bundle.stat()
    with open(bundle, "r+b") as handle:  # damage it, then put its mtime back
        handle.write(b"\0")
    os.utime(bundle, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    code, output = run_build(*args)
    assert code == 0 and "\nBuilt k3s-" in f"\n{output}" and "Up to date" not in output, output
    assert sha256_of(bundle) == good and sha256sum_check(dist).returncode == 0
    code, output = run_build(*args, "--sign-key", str(signer.private))  # another input
    assert code == 0 and "\nBuilt k3s-" in f"\n{output}" and "Up to date" not in output, output
    before = _stats(dist)
    code, output = run_build(*args, "--sign-key", str(signer.private), "--force")
    assert code == 0 and "\nBuilt k3s-" in f"\n{output}" and "Up to date" not in output, output
    after = _stats(dist)
    assert {n: s[2] for n, s in after.items()} == {n: s[2] for n, s in before.items()}
    assert after[bundle.name][0] != before[bundle.name][0]  # written again (a new file)


def test_a_build_that_fails_at_its_last_step_leaves_the_previous_build_whole(
    run_build: BuildRun, signer: KeyFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ("--version", VERSION, "--arch", "amd64", "--split", "100K")
    assert run_build(*args)[0] == 0
    dist = tmp_path / "dist"
    before = {p.name: sha256_of(p) for p in dist.iterdir()}

    def disk_full(*args: object) -> str:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(build_module, "_sums_text", disk_full)
    with pytest.raises(OSError, match="No space left"):
        run_build(*args, "--sign-key", str(signer.private))  # same names, other bytes
    assert {p.name: sha256_of(p) for p in dist.iterdir()} == before  # no temporary file either
    assert sha256sum_check(dist).returncode == 0


def test_the_installer_in_the_output_folder_is_executable(
    run_build: BuildRun, tmp_path: Path
) -> None:
    assert run_build("--version", VERSION, "--arch", "amd64")[0] == 0
    assert (tmp_path / "dist" / "k3bundle-install.pyz").stat().st_mode & 0o777 == 0o755


def test_a_new_bundle_writer_is_not_up_to_date_with_the_old_ones_output(
    run_build: BuildRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ("--version", VERSION, "--arch", "amd64")
    assert run_build(*args)[0] == 0
    monkeypatch.setattr(build_module, "writer_code_sha256", lambda: "0" * 64)
    code, output = run_build(*args)
    assert code == 0 and "Up to date" not in output, output


def test_second_build_into_the_same_folder_leaves_only_the_new_bundle(
    run_build: BuildRun, tmp_path: Path
) -> None:
    dist = tmp_path / "dist"
    (dist / "notes.txt").parent.mkdir(parents=True)
    (dist / "notes.txt").write_text("mine")
    assert run_build("--version", VERSION, "--arch", "amd64", "--split", "100K")[0] == 0
    assert (dist / "k3s-v1.31.4-k3s1-amd64.tar.parts.json").is_file()
    code, output = run_build("--version", VERSION, "--arch", "arm64", "--arch", "arm")
    assert code == 0, output
    assert sorted(p.name for p in dist.iterdir()) == sorted(
        ["k3s-v1.31.4-k3s1-arm64-arm.tar", "k3bundle-install.pyz", "SHA256SUMS", "notes.txt"]
    )
    assert sha256sum_check(dist).returncode == 0


def test_split_writes_parts_and_an_index_that_sha256sum_checks(
    run_build: BuildRun, manifest_of: ManifestOf, tmp_path: Path
) -> None:
    code, output = run_build("--version", VERSION, "--arch", "amd64", "--split", "64K")
    assert code == 0, output
    dist = tmp_path / "dist"
    names = sorted(p.name for p in dist.iterdir())
    stem = "k3s-v1.31.4-k3s1-amd64.tar"
    parts = [n for n in names if n.startswith(f"{stem}.0")]
    assert len(parts) >= 2
    assert all((dist / p).stat().st_size <= 64 * 1024 for p in parts)
    assert names == sorted([*parts, f"{stem}.parts.json", "k3bundle-install.pyz", "SHA256SUMS"])
    assert sha256sum_check(dist).returncode == 0
    assert manifest_of(dist)["k3s_version"] == VERSION


def test_summary_ends_with_the_next_steps(
    server: ReleaseServer, signer: KeyFiles, tmp_path: Path
) -> None:
    done = run_k3bundle(
        *("build", "--version", VERSION, "--arch", "amd64", "-q"),
        *("--cache-dir", str(tmp_path / "cache"), "-o", str(tmp_path / "dist")),
        *("--release-url", server.release_url, "--sign-key", str(signer.private)),
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.rstrip().splitlines()
    steps = lines[lines.index(next(x for x in lines if x.startswith("Next steps"))) :]
    assert "  sha256sum -c SHA256SUMS" in steps
    install_line = next(x for x in steps if "k3bundle-install.pyz install" in x)
    assert "k3s-v1.31.4-k3s1-amd64.tar" in install_line and "--pubkey" in install_line
    assert lines[-1].startswith("(k3bundle-install.pyz needs only python3")
    assert "Warning" not in done.stderr  # signed: no unsigned warning


def test_unsigned_build_warns_and_says_allow_unsigned(run_build: BuildRun) -> None:
    code, output = run_build("--version", VERSION, "--arch", "amd64")
    assert code == 0, output
    assert "Warning: no --sign-key given: the bundle is UNSIGNED" in output
    assert "--allow-unsigned" in output.splitlines()[-2]
