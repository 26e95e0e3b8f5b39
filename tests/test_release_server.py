"""The stand-in release/channel server itself: layout, routes, ranges and each fault kind."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator

import pytest
import requests

from tests.release_server import (
    ReleaseServer,
    binary_content,
    default_channels,
    generate_release,
    parse_range,
)

VERSION = "v1.31.4+k3s1"
ENCODED = "v1.31.4%2Bk3s1"
SIZE = 64 * 1024
IMAGE = "k3s-airgap-images-amd64.tar.zst"


@pytest.fixture(scope="module")
def release_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("releases")
    generate_release(root, VERSION, image_size=SIZE)
    return root


@pytest.fixture
def server(release_root: Path) -> Iterator[ReleaseServer]:
    with ReleaseServer(release_root) as srv:
        yield srv


def image_bytes(root: Path, name: str = IMAGE) -> bytes:
    return (root / VERSION / name).read_bytes()


# -- generated release --------------------------------------------------------------------------


def test_release_has_upstream_file_set(release_root: Path) -> None:
    names = sorted(p.name for p in (release_root / VERSION).iterdir())
    expected = ["k3s", "k3s-arm64", "k3s-armhf", "k3s-images.txt"]
    for arch in ("amd64", "arm64", "arm"):
        expected += [f"k3s-airgap-images-{arch}.{fmt}" for fmt in ("tar", "tar.gz", "tar.zst")]
        expected.append(f"sha256sum-{arch}.txt")
    assert names == sorted(expected)
    assert (release_root / VERSION / "k3s-armhf").read_bytes() == binary_content(VERSION, "arm")
    assert b"STAND-IN" in (release_root / VERSION / "k3s").read_bytes()
    assert os.access(release_root / VERSION / "k3s", os.X_OK)
    assert (release_root / VERSION / IMAGE).stat().st_size == SIZE


@pytest.mark.parametrize(
    ("arch", "binary"), [("amd64", "k3s"), ("arm64", "k3s-arm64"), ("arm", "k3s-armhf")]
)
def test_checksum_file_lists_four_names_in_upstream_order(
    release_root: Path, arch: str, binary: str
) -> None:
    folder = release_root / VERSION
    lines = (folder / f"sha256sum-{arch}.txt").read_text().splitlines()
    names = [f"k3s-airgap-images-{arch}.{fmt}" for fmt in ("tar", "tar.gz", "tar.zst")] + [binary]
    assert [line.split("  ", 1)[1] for line in lines] == names
    for line in lines:
        digest, name = line.split("  ", 1)
        assert digest == hashlib.sha256((folder / name).read_bytes()).hexdigest()


def test_generation_is_deterministic(tmp_path: Path) -> None:
    first = generate_release(tmp_path / "a", VERSION, ["arm64"], image_size=3 * 1024 * 1024 + 5)
    second = generate_release(tmp_path / "b", VERSION, ["arm64"], image_size=3 * 1024 * 1024 + 5)
    assert first == second
    assert set(first) == {
        "k3s-arm64",
        "k3s-airgap-images-arm64.tar",
        "k3s-airgap-images-arm64.tar.gz",
        "k3s-airgap-images-arm64.tar.zst",
        "sha256sum-arm64.txt",
        "k3s-images.txt",
    }
    # Different names and versions give different bytes.
    assert len({first[f"k3s-airgap-images-arm64.{fmt}"] for fmt in ("tar", "tar.gz")}) == 2
    other = generate_release(tmp_path / "c", "v1.30.8+k3s1", ["arm64"], image_size=1024)
    assert other["k3s-airgap-images-arm64.tar"] != first["k3s-airgap-images-arm64.tar"]


# -- routes -------------------------------------------------------------------------------------


def test_channel_redirects_with_raw_plus(server: ReleaseServer) -> None:
    resp = requests.get(f"{server.channel_url}/stable", allow_redirects=False, timeout=5)
    assert resp.status_code == 302
    assert resp.headers["Location"] == f"{server.base_url}/tag/{VERSION}"
    assert resp.headers["Location"].rsplit("/", 1)[-1] == VERSION
    followed = requests.get(f"{server.channel_url}/stable", timeout=5)
    assert followed.status_code == 200
    assert unquote_last(followed.url) == VERSION
    assert requests.get(f"{server.channel_url}/v1.99", timeout=5).status_code == 404


def unquote_last(url: str) -> str:
    from urllib.parse import unquote

    return unquote(url.rsplit("/", 1)[-1])


def test_channel_list_and_explicit_channels(release_root: Path) -> None:
    with ReleaseServer(release_root, {"stable": VERSION, "latest": "v1.32.0+k3s1"}) as srv:
        doc = requests.get(srv.channel_url, timeout=5).json()
        assert doc["type"] == "collection"
        latest: Dict[str, str] = {d["id"]: d["latest"] for d in doc["data"]}
        assert latest == {"stable": VERSION, "latest": "v1.32.0+k3s1"}
        assert all(d["type"] == "channel" and d["name"] == d["id"] for d in doc["data"])
        assert doc["data"][0]["links"]["self"] == f"{srv.channel_url}/stable"
        srv.channels = {"stable": "v1.30.8+k3s1"}
        resp = requests.get(f"{srv.channel_url}/stable", allow_redirects=False, timeout=5)
        assert resp.headers["Location"].endswith("/tag/v1.30.8+k3s1")


def test_default_channels() -> None:
    tags = ["v1.30.8+k3s1", "v1.31.4+k3s1", "v1.31.3+k3s1", "v1.32.0-rc1+k3s1", "junk"]
    assert default_channels(tags) == {
        "stable": "v1.31.4+k3s1",
        "latest": "v1.31.4+k3s1",
        "testing": "v1.32.0-rc1+k3s1",
        "v1.30": "v1.30.8+k3s1",
        "v1.31": "v1.31.4+k3s1",
    }


def test_encoded_and_raw_plus_both_served(server: ReleaseServer, release_root: Path) -> None:
    want = image_bytes(release_root)
    for tag in (ENCODED, VERSION):
        resp = requests.get(f"{server.release_url}/{tag}/{IMAGE}", timeout=5)
        assert resp.status_code == 200
        assert resp.content == want
        assert resp.headers["Accept-Ranges"] == "bytes"
    assert server.url_for(VERSION, IMAGE).endswith(f"/{ENCODED}/{IMAGE}")
    assert server.hits[f"/download/{VERSION}/{IMAGE}"] == [("GET", None), ("GET", None)]
    assert server.hits_for(IMAGE) == [("GET", None), ("GET", None)]
    missing = requests.get(f"{server.release_url}/{ENCODED}/nope", timeout=5)
    assert missing.status_code == 404
    assert requests.get(f"{server.release_url}/..%2F/k3s", timeout=5).status_code in (400, 404)


def test_range_requests(server: ReleaseServer, release_root: Path) -> None:
    want = image_bytes(release_root)
    url = server.url_for(VERSION, IMAGE)
    resp = requests.get(url, headers={"Range": "bytes=1000-"}, timeout=5)
    assert resp.status_code == 206
    assert resp.headers["Content-Range"] == f"bytes 1000-{SIZE - 1}/{SIZE}"
    assert resp.headers["Content-Length"] == str(SIZE - 1000)
    assert resp.content == want[1000:]
    resp = requests.get(url, headers={"Range": "bytes=10-19"}, timeout=5)
    assert (resp.status_code, resp.content) == (206, want[10:20])
    resp = requests.get(url, headers={"Range": "bytes=-5"}, timeout=5)
    assert (resp.status_code, resp.content) == (206, want[-5:])
    resp = requests.get(url, headers={"Range": f"bytes={SIZE}-"}, timeout=5)
    assert resp.status_code == 416
    assert resp.headers["Content-Range"] == f"bytes */{SIZE}"
    head = requests.head(url, timeout=5)
    assert (head.status_code, head.headers["Content-Length"]) == (200, str(SIZE))
    assert server.hits_for(IMAGE)[0] == ("GET", "bytes=1000-")
    assert server.hits_for(IMAGE)[-1] == ("HEAD", None)


def test_parse_range() -> None:
    assert parse_range(None, 10) is None
    assert parse_range("bytes=2-", 10) == (2, 9)
    assert parse_range("bytes=2-100", 10) == (2, 9)
    assert parse_range("bytes=-3", 10) == (7, 9)
    assert parse_range("bytes=10-", 10) == "unsatisfiable"
    assert parse_range("bytes=5-2", 10) is None
    assert parse_range("bytes=0-1,4-5", 10) is None
    assert parse_range("items=0-1", 10) is None


# -- faults -------------------------------------------------------------------------------------


def test_fault_drop(server: ReleaseServer) -> None:
    server.fault(IMAGE, "drop", after=1000)
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(server.url_for(VERSION, IMAGE), timeout=5).raise_for_status()
    got = bytearray()
    with pytest.raises(requests.exceptions.RequestException):
        server.fault(IMAGE, "drop")
        with requests.get(server.url_for(VERSION, IMAGE), stream=True, timeout=5) as resp:
            assert resp.headers["Content-Length"] == str(SIZE)
            for chunk in resp.iter_content(4096):
                got += chunk
    assert len(got) == SIZE // 2
    assert requests.get(server.url_for(VERSION, IMAGE), timeout=5).status_code == 200


def test_fault_ignore_range(server: ReleaseServer, release_root: Path) -> None:
    server.fault(IMAGE, "ignore-range")
    resp = requests.get(server.url_for(VERSION, IMAGE), headers={"Range": "bytes=100-"}, timeout=5)
    assert (resp.status_code, resp.content) == (200, image_bytes(release_root))
    resp = requests.get(server.url_for(VERSION, IMAGE), headers={"Range": "bytes=100-"}, timeout=5)
    assert resp.status_code == 206


def test_fault_status_times_and_forever(server: ReleaseServer) -> None:
    server.fault("k3s", "status", times=2, status=503, retry_after=2)
    url = server.url_for(VERSION, "k3s")
    for _ in range(2):
        resp = requests.get(url, timeout=5)
        assert (resp.status_code, resp.headers["Retry-After"]) == (503, "2")
    assert requests.get(url, timeout=5).status_code == 200
    server.fault("k3s", "status", times=-1, status=404)
    assert [requests.get(url, timeout=5).status_code for _ in range(3)] == [404] * 3
    server.clear_faults()
    assert requests.get(url, timeout=5).status_code == 200
    server.fault("stable", "status", status=503)  # channel outages too
    assert requests.get(f"{server.channel_url}/stable", timeout=5).status_code == 503
    assert server.log[-1] == ("GET", "/channels/stable", None, 503, "status")


def test_fault_stall(server: ReleaseServer) -> None:
    url = server.url_for(VERSION, IMAGE)
    server.fault(IMAGE, "stall", seconds=3, before_headers=True)
    with pytest.raises(requests.exceptions.Timeout):
        requests.get(url, timeout=0.3)
    server.fault(IMAGE, "stall", seconds=3)
    with requests.get(url, stream=True, timeout=0.3) as resp:
        assert resp.status_code == 200  # headers arrive, the body does not
        with pytest.raises(requests.exceptions.ConnectionError):
            next(resp.iter_content(10))


def test_fault_corrupt(server: ReleaseServer, release_root: Path) -> None:
    want = image_bytes(release_root)
    server.fault(IMAGE, "corrupt")
    got = requests.get(server.url_for(VERSION, IMAGE), timeout=5).content
    assert len(got) == len(want)
    assert [i for i in range(len(want)) if got[i] != want[i]] == [SIZE // 2]
    server.fault(IMAGE, "corrupt", offset=7)
    got = requests.get(server.url_for(VERSION, IMAGE), timeout=5).content
    assert [i for i in range(len(want)) if got[i] != want[i]] == [7]
    assert requests.get(server.url_for(VERSION, IMAGE), timeout=5).content == want


def test_fault_rejects_unknown_kind_and_option(server: ReleaseServer) -> None:
    with pytest.raises(ValueError):
        server.fault("k3s", "explode")
    with pytest.raises(TypeError):
        server.fault("k3s", "drop", seconds=3)


def test_stalled_handler_does_not_block_close(release_root: Path) -> None:
    srv = ReleaseServer(release_root).start()
    srv.fault(IMAGE, "stall", seconds=60, before_headers=True)
    with pytest.raises(requests.exceptions.Timeout):
        requests.get(srv.url_for(VERSION, IMAGE), timeout=0.3)
    started = time.monotonic()
    srv.close()
    assert time.monotonic() - started < 3


def test_command_line_prints_urls_and_stops_on_sigterm(tmp_path: Path) -> None:
    script = Path(__file__).with_name("release_server.py")
    cmd = [sys.executable, str(script), "--dir", str(tmp_path), "--port", "0"]
    cmd += ["--versions", VERSION, "--arches", "amd64,arm", "--print-url"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        urls = json.loads(proc.stdout.readline())
        assert set(urls) == {"release_url", "channel_url"}
        resp = requests.get(f"{urls['release_url']}/{ENCODED}/sha256sum-arm.txt", timeout=5)
        assert resp.text.splitlines()[-1].endswith("  k3s-armhf")
        resp = requests.get(f"{urls['channel_url']}/stable", allow_redirects=False, timeout=5)
        assert resp.headers["Location"].endswith(f"/tag/{VERSION}")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
