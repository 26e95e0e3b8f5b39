"""Release resolution: versions, channels, asset names and URLs, checksum files."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import pytest
import requests

from k3bundle.bundler.net.fetch import make_session
from k3bundle.bundler.payloads import release
from k3bundle.installer.errors import FetchError, UsageError
from tests.release_server import ReleaseServer

VERSION = "v1.31.4+k3s1"
RC_VERSION = "v1.32.4-rc1+k3s1"
AMD64_ONLY = "v1.30.2+k3s1"
SHA_A = "a" * 64
SHA_B = "b" * 64
BuildRun = Callable[..., Tuple[int, str]]
ManifestOf = Callable[[Path], Dict[str, Any]]


# --- versions, names, URLs (pure) -----------------------------------------------------------


@pytest.mark.parametrize("tag", ["v1.31.4+k3s1", "v1.32.4-rc1+k3s1", "v1.30.10+k3s2"])
def test_check_version_accepts_final_and_prerelease_tags(tag: str) -> None:
    assert release.check_version(tag) == tag


@pytest.mark.parametrize("tag", ["1.31.4", "v1.31+k3s1", "v1.31.4-k3s1", "v1.31.4", ""])
def test_check_version_refuses_malformed_tags(tag: str) -> None:
    with pytest.raises(UsageError, match="is not a k3s version") as caught:
        release.check_version(tag)
    assert "v1.31.4+k3s1" in caught.value.diagnostics()


def test_binary_names_follow_upstream_including_armhf() -> None:
    names = [release.binary_name(arch) for arch in ("amd64", "arm64", "arm")]
    assert names == ["k3s", "k3s-arm64", "k3s-armhf"]


@pytest.mark.parametrize(
    ("fmt", "name"),
    [
        ("zst", "k3s-airgap-images-arm.tar.zst"),
        ("gz", "k3s-airgap-images-arm.tar.gz"),
        ("tar", "k3s-airgap-images-arm.tar"),
    ],
)
def test_image_tarball_names_say_arm_not_armhf(fmt: str, name: str) -> None:
    assert release.images_name("arm", fmt) == name
    assert release.checksum_name("arm") == "sha256sum-arm.txt"


def test_images_name_refuses_unknown_format() -> None:
    with pytest.raises(UsageError, match="unknown images format 'xz'"):
        release.images_name("amd64", "xz")


def test_asset_url_percent_encodes_the_plus_in_the_tag() -> None:
    url = release.asset_url("https://mirror.example/k3s/", VERSION, "k3s")
    assert url == "https://mirror.example/k3s/v1.31.4%2Bk3s1/k3s"


# --- checksum files (pure) ------------------------------------------------------------------


def test_parse_checksums_looks_lines_up_by_name_in_any_order() -> None:
    text = f"# comment\n\n{SHA_B}  k3s\n{SHA_A.upper()} *k3s-airgap-images-amd64.tar.zst\n"
    sums = release.parse_checksums(text, "https://x/sha256sum-amd64.txt")
    assert sums == {"k3s": SHA_B, "k3s-airgap-images-amd64.tar.zst": SHA_A}


def test_parse_checksums_refuses_a_line_that_is_not_sha256sum_output() -> None:
    with pytest.raises(FetchError, match=r"https://x/sums line 2 is not a sha256sum line"):
        release.parse_checksums(f"{SHA_A}  k3s\n<html>oops</html>\n", "https://x/sums")


def test_expected_sha_names_the_missing_file_and_the_checksum_file() -> None:
    with pytest.raises(FetchError) as caught:
        release.expected_sha({"k3s": SHA_A}, "k3s-airgap-images-amd64.tar.gz", "https://x/sums")
    assert caught.value.exit_code == 8
    assert "https://x/sums has no line for k3s-airgap-images-amd64.tar.gz" in str(caught.value)


# --- channels against the local server -------------------------------------------------------


def test_channel_resolves_through_the_302_location(server: ReleaseServer) -> None:
    resolved = release.resolve_channel(make_session(), server.channel_url, "testing", (2, 2))
    assert resolved.version == RC_VERSION
    assert resolved.how == f"channel testing at {server.channel_url}"
    assert [(h.path, h.status) for h in server.log] == [("/channels/testing", 302)]


def test_channel_name_with_a_slash_is_refused_before_asking() -> None:
    with pytest.raises(UsageError, match="is not a channel name"):
        release.resolve_channel(requests.Session(), "http://127.0.0.1:9", "../etc", (1, 1))


def test_build_records_the_version_the_channel_resolved_to(
    run_build: BuildRun, manifest_of: ManifestOf, tmp_path: Path
) -> None:
    code, output = run_build("--channel", "testing", "--arch", "amd64")
    assert code == 0, output
    assert manifest_of(tmp_path / "dist")["k3s_version"] == RC_VERSION
    assert f"k3s {RC_VERSION} (channel testing at" in output


def test_unknown_channel_fails_naming_the_channel_and_the_url(
    run_build: BuildRun, server: ReleaseServer
) -> None:
    code, output = run_build("--channel", "v9.99", "--arch", "amd64")
    assert code == 8
    assert f"channel 'v9.99' is unknown at {server.channel_url}/v9.99 (HTTP 404)" in output


@pytest.mark.parametrize("bad", ["1.31.4", "v1.31+k3s1", "v1.31.4-k3s1"])
def test_build_refuses_a_malformed_version_with_exit_2(
    run_build: BuildRun, server: ReleaseServer, bad: str
) -> None:
    code, output = run_build("--version", bad, "--arch", "amd64")
    assert code == 2
    assert f"{bad!r} is not a k3s version" in output
    assert server.log == []  # refused before any request


def test_unknown_version_fails_naming_the_version_and_where_it_looked(
    run_build: BuildRun, server: ReleaseServer
) -> None:
    code, output = run_build("--version", "v9.9.9+k3s1", "--arch", "amd64")
    assert code == 8
    url = f"{server.release_url}/v9.9.9%2Bk3s1/sha256sum-amd64.txt"
    assert f"k3s v9.9.9+k3s1 has no sha256sum-amd64.txt at {url}" in output
    assert len(server.hits_for("sha256sum-amd64.txt")) == 1  # a 404 is not retried


def test_release_without_the_requested_arch_names_the_arch(
    run_build: BuildRun, server: ReleaseServer
) -> None:
    code, output = run_build("--version", AMD64_ONLY, "--arch", "arm64")
    assert code == 8
    assert "has no sha256sum-arm64.txt" in output
    assert "does not ship arm64" in output


def test_requested_urls_carry_the_plus_percent_encoded(
    run_build: BuildRun, manifest_of: ManifestOf, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: List[str] = []
    original = requests.Session.send

    def recording_send(
        self: requests.Session, request: requests.PreparedRequest, **kwargs: Any
    ) -> requests.Response:
        sent.append(str(request.url))
        return original(self, request, **kwargs)

    monkeypatch.setattr(requests.Session, "send", recording_send)
    code, output = run_build("--version", VERSION, "--arch", "amd64")
    assert code == 0, output
    downloads = [url for url in sent if "/download/" in url]
    assert len(downloads) == 3  # checksum file, binary, image tarball
    assert all("/v1.31.4%2Bk3s1/" in url for url in downloads)
    sources = [f["source"]["url"] for f in manifest_of(tmp_path / "dist")["files"]]
    assert all("/v1.31.4%2Bk3s1/" in url for url in sources)
