"""The Fetcher against a fault-injecting server: resume, restart, retry, give up, never cache junk.

Most cases run the Fetcher in-process with a tiny backoff and a fake sleep so they stay fast; the
last few run `k3bundle build` end to end with --retries and a short --timeout.
"""

from __future__ import annotations

import hashlib
import re
import socket
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

from k3bundle.bundler.cache import Cache
from k3bundle.bundler.net.fetch import Download, Fetcher, FetchEvents, FetchSettings, NotFoundError
from k3bundle.installer.errors import FetchError, IntegrityError
from tests.helpers import run_k3bundle
from tests.release_server import ReleaseServer

VERSION = "v1.31.4+k3s1"
IMAGES = "k3s-airgap-images-amd64.tar.zst"
SIZE = 64 * 1024
Unverified = Callable[[Path], List[str]]


class RecordingEvents(FetchEvents):
    """Remembers what the Fetcher reported."""

    def __init__(self) -> None:
        self.started_at: List[int] = []
        self.finished_cached: List[bool] = []
        self.retries: List[Tuple[str, float]] = []

    def started(self, download: Download, total: Optional[int], done: int) -> None:
        self.started_at.append(done)

    def finished(self, download: Download, cached: bool) -> None:
        self.finished_cached.append(cached)

    def retrying(self, download: Download, reason: str, delay: float) -> None:
        self.retries.append((reason, delay))


class Harness:
    """A Fetcher on a tmp cache with a fake sleep, and the file it is asked for."""

    def __init__(self, server: ReleaseServer, cache_dir: Path, **settings: Any) -> None:
        defaults: Dict[str, Any] = {"backoff": 0.01, "retries": 3, "read_timeout": 2.0}
        self.server, self.cache_dir = server, cache_dir
        self.sleeps: List[float] = []
        self.events = RecordingEvents()
        self.fetcher = Fetcher(
            Cache(cache_dir),
            FetchSettings(**{**defaults, **settings}),
            self.events,
            sleep=self.sleeps.append,
        )

    def download(self, name: str = IMAGES, version: str = VERSION) -> Download:
        """The Download of a served file, with its true sha256."""
        data = (self.server.root / version / name).read_bytes()
        return Download(self.server.url_for(version, name), hashlib.sha256(data).hexdigest(), name)

    def content(self, name: str = IMAGES, version: str = VERSION) -> bytes:
        """The bytes the server holds for `name`."""
        return (self.server.root / version / name).read_bytes()

    def partials(self) -> List[str]:
        """Files left in partial/."""
        return sorted(p.name for p in (self.cache_dir / "partial").iterdir())

    def blobs(self) -> List[str]:
        """Names in sha256/."""
        return sorted(p.name for p in (self.cache_dir / "sha256").iterdir())


@pytest.fixture
def harness(server: ReleaseServer, tmp_path: Path) -> Harness:
    """Fetcher defaults: 3 retries, 0.01 s backoff, 2 s read timeout."""
    return Harness(server, tmp_path / "cache")


def ranges(server: ReleaseServer, name: str = IMAGES) -> List[Optional[str]]:
    """The Range header of every request for `name`, in order."""
    return [rng for _, rng in server.hits_for(name)]


# --- resume and restart ---------------------------------------------------------------------


def test_dropped_connection_is_resumed_with_a_range_request(
    harness: Harness, server: ReleaseServer, unverified_in_cache: Unverified
) -> None:
    server.fault(IMAGES, "drop", after=20_000)
    path = harness.fetcher.fetch(harness.download())
    assert path.read_bytes() == harness.content()
    assert ranges(server) == [None, "bytes=20000-"]
    assert [h.status for h in server.log] == [200, 206]
    assert harness.events.started_at == [0, 20_000]
    assert harness.fetcher.transferred == SIZE  # no byte was fetched twice
    assert harness.partials() == [] and unverified_in_cache(harness.cache_dir) == []


def test_connection_reset_mid_body_is_retried_and_verified(
    harness: Harness, server: ReleaseServer, unverified_in_cache: Unverified
) -> None:
    server.fault(IMAGES, "drop", after=20_000, reset=True)
    path = harness.fetcher.fetch(harness.download())
    assert path.read_bytes() == harness.content()
    # An RST may discard bytes still in flight, so the retry resumes at most where it was cut.
    second = ranges(server)[1]
    assert second is None or int(second[len("bytes=") : -1]) <= 20_000
    assert len(harness.sleeps) == 1
    assert unverified_in_cache(harness.cache_dir) == []


def test_server_ignoring_range_restarts_from_zero_and_still_verifies(
    harness: Harness, server: ReleaseServer, unverified_in_cache: Unverified
) -> None:
    server.fault(IMAGES, "drop", after=30_000)
    server.fault(IMAGES, "ignore-range")
    path = harness.fetcher.fetch(harness.download())
    assert path.read_bytes() == harness.content()
    assert ranges(server) == [None, "bytes=30000-"]
    assert [h.status for h in server.log] == [200, 200]  # full body the second time
    assert harness.events.started_at == [0, 0]
    assert unverified_in_cache(harness.cache_dir) == []


# --- retries --------------------------------------------------------------------------------


def test_http_500_is_retried_after_backoff_then_succeeds(
    harness: Harness, server: ReleaseServer
) -> None:
    server.fault(IMAGES, "status", status=500)
    path = harness.fetcher.fetch(harness.download())
    assert path.read_bytes() == harness.content()
    assert [h.status for h in server.log] == [500, 200]
    assert harness.sleeps == [0.01]
    assert harness.events.retries == [("HTTP 500", 0.01)]


def test_backoff_doubles_between_attempts(harness: Harness, server: ReleaseServer) -> None:
    server.fault(IMAGES, "status", times=3, status=503)
    harness.fetcher.fetch(harness.download())
    assert harness.sleeps == [0.01, 0.02, 0.04]


def test_429_retry_after_is_honoured(harness: Harness, server: ReleaseServer) -> None:
    server.fault(IMAGES, "status", status=429, retry_after=1)
    path = harness.fetcher.fetch(harness.download())
    assert path.read_bytes() == harness.content()
    assert harness.sleeps == [1.0]


@pytest.mark.parametrize("before_headers", [False, True])
def test_stalled_response_times_out_and_the_retry_succeeds(
    server: ReleaseServer, tmp_path: Path, unverified_in_cache: Unverified, before_headers: bool
) -> None:
    harness = Harness(server, tmp_path / "cache", read_timeout=0.3)
    server.fault(IMAGES, "stall", seconds=3, before_headers=before_headers)
    path = harness.fetcher.fetch(harness.download())
    assert path.read_bytes() == harness.content()
    assert len(server.hits_for(IMAGES)) == 2
    assert len(harness.sleeps) == 1
    assert unverified_in_cache(harness.cache_dir) == []


def test_permanent_404_fails_at_once_without_retries(
    harness: Harness, server: ReleaseServer
) -> None:
    missing = Download(server.url_for(VERSION, "k3s-riscv64"), "c" * 64, "k3s-riscv64")
    with pytest.raises(NotFoundError) as caught:
        harness.fetcher.fetch(missing)
    assert caught.value.exit_code == 8
    assert f"not found: {missing.url} (HTTP 404)" in str(caught.value)
    assert len(server.hits_for("k3s-riscv64")) == 1
    assert harness.sleeps == []
    assert harness.blobs() == []


def test_retries_exhausted_names_the_url_and_the_attempt_count(
    server: ReleaseServer, tmp_path: Path, unverified_in_cache: Unverified
) -> None:
    harness = Harness(server, tmp_path / "cache", retries=2)
    server.fault(IMAGES, "drop", times=-1, after=1000)
    download = harness.download()
    with pytest.raises(FetchError) as caught:
        harness.fetcher.fetch(download)
    assert f"giving up on {download.url} after 3 attempts" in str(caught.value)
    assert len(server.hits_for(IMAGES)) == 3
    assert harness.sleeps == [0.01, 0.02]
    assert harness.blobs() == [] and unverified_in_cache(harness.cache_dir) == []
    # What did arrive is kept for a later resume, outside the verified store.
    assert harness.partials() == [f"{download.sha256}.part"]


def test_a_kept_partial_is_resumed_by_the_next_run(
    server: ReleaseServer, tmp_path: Path, unverified_in_cache: Unverified
) -> None:
    first = Harness(server, tmp_path / "cache", retries=0)
    server.fault(IMAGES, "drop", after=5000)
    with pytest.raises(FetchError):
        first.fetcher.fetch(first.download())
    server.reset_hits()
    second = Harness(server, tmp_path / "cache")
    assert second.fetcher.fetch(second.download()).read_bytes() == second.content()
    assert ranges(server) == ["bytes=5000-"]
    assert second.fetcher.transferred == SIZE - 5000
    assert unverified_in_cache(second.cache_dir) == []


# --- integrity and the cache ----------------------------------------------------------------


def test_corrupt_body_is_refused_and_nothing_is_cached(
    harness: Harness, server: ReleaseServer
) -> None:
    server.fault(IMAGES, "corrupt")
    download = harness.download()
    with pytest.raises(IntegrityError) as caught:
        harness.fetcher.fetch(download)
    corrupted = bytearray(harness.content())
    corrupted[SIZE // 2] ^= 0xFF
    actual = hashlib.sha256(corrupted).hexdigest()
    message = str(caught.value)
    assert download.url in message and download.sha256 in message and actual in message
    assert caught.value.exit_code == 4
    assert harness.blobs() == [] and harness.partials() == []


def test_a_cached_file_is_not_downloaded_again(harness: Harness, server: ReleaseServer) -> None:
    harness.fetcher.fetch(harness.download())
    again = harness.fetcher.fetch(harness.download())
    assert again.read_bytes() == harness.content()
    assert len(server.hits_for(IMAGES)) == 1
    assert harness.events.finished_cached == [False, True]


def test_fetch_all_downloads_each_content_once(harness: Harness, server: ReleaseServer) -> None:
    images, binary = harness.download(), harness.download("k3s")
    twin = Download(images.url.replace("%2B", "+"), images.sha256, images.name)
    paths = harness.fetcher.fetch_all([images, binary, twin])
    assert set(paths) == {images.sha256, binary.sha256}
    assert len(server.hits_for(IMAGES)) == 1
    assert sorted(harness.blobs()) == sorted(paths)


def test_offline_fetch_of_an_uncached_file_names_it(server: ReleaseServer, tmp_path: Path) -> None:
    harness = Harness(server, tmp_path / "cache", offline=True)
    with pytest.raises(FetchError, match=f"--offline: {IMAGES} .* is not in the cache"):
        harness.fetcher.fetch(harness.download())
    assert server.log == []


# --- small text files (checksum files) ------------------------------------------------------


def test_checksum_file_is_retried_after_a_dropped_connection(
    harness: Harness, server: ReleaseServer
) -> None:
    server.fault("sha256sum-amd64.txt", "drop", after=10)
    text = harness.fetcher.get_text(server.url_for(VERSION, "sha256sum-amd64.txt"))
    assert text == harness.content("sha256sum-amd64.txt").decode()
    assert len(server.hits_for("sha256sum-amd64.txt")) == 2


def test_checksum_file_is_retried_after_503(harness: Harness, server: ReleaseServer) -> None:
    server.fault("sha256sum-amd64.txt", "status", status=503, retry_after=1)
    text = harness.fetcher.get_text(server.url_for(VERSION, "sha256sum-amd64.txt"))
    assert IMAGES in text
    assert harness.sleeps == [1.0]


def test_unreachable_server_gives_a_fetch_error_naming_the_url(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/download/{VERSION}/sha256sum-amd64.txt"
    sleeps: List[float] = []
    fetcher = Fetcher(Cache(tmp_path), FetchSettings(retries=1, backoff=0.01), sleep=sleeps.append)
    with pytest.raises(FetchError, match=re.escape(f"giving up on {url} after 2 attempts")):
        fetcher.get_text(url)
    assert sleeps == [0.01]


# --- end to end: `k3bundle build` with faults -----------------------------------------------


def build(
    server: ReleaseServer, tmp_path: Path, *args: str, version: str = VERSION
) -> Tuple[int, str, Path]:
    """`k3bundle build` in a subprocess for amd64 of `version`; (exit code, stderr, cache)."""
    cache = tmp_path / "cache"
    done = run_k3bundle(
        "build",
        *("--version", version, "--arch", "amd64", "--cache-dir", str(cache)),
        *("-o", str(tmp_path / "dist"), "--release-url", server.release_url, "-q"),
        *args,
    )
    return done.returncode, done.stderr, cache


def test_build_resumes_a_dropped_download_end_to_end(
    server: ReleaseServer, tmp_path: Path, unverified_in_cache: Unverified
) -> None:
    server.fault(IMAGES, "drop", after=40_000)
    code, stderr, cache = build(server, tmp_path, "--retries", "2", "--timeout", "2")
    assert code == 0, stderr
    assert ranges(server) == [None, "bytes=40000-"]
    assert len(list((cache / "sha256").iterdir())) == 2
    assert unverified_in_cache(cache) == []


def test_build_gives_up_after_its_retries_with_exit_8(
    server: ReleaseServer, tmp_path: Path, unverified_in_cache: Unverified
) -> None:
    server.fault(IMAGES, "status", times=-1, status=503)
    code, stderr, cache = build(server, tmp_path, "--retries", "1", "--timeout", "1")
    assert code == 8
    url = server.url_for(VERSION, IMAGES)
    assert f"Error: giving up on {url} after 2 attempts: HTTP 503" in stderr
    assert len(server.hits_for(IMAGES)) == 2
    assert unverified_in_cache(cache) == []
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").iterdir())


def test_build_refuses_a_corrupt_download_with_exit_4(
    server: ReleaseServer, tmp_path: Path, unverified_in_cache: Unverified
) -> None:
    server.fault(IMAGES, "corrupt", offset=123)
    code, stderr, cache = build(server, tmp_path, "--retries", "0")
    assert code == 4
    good = (server.root / VERSION / IMAGES).read_bytes()
    bad = bytearray(good)
    bad[123] ^= 0xFF
    expected, actual = (hashlib.sha256(b).hexdigest() for b in (good, bytes(bad)))
    assert f"checksum mismatch for {server.url_for(VERSION, IMAGES)}" in stderr
    assert f"expected sha256 {expected}, got {actual}" in stderr
    assert not (cache / "sha256" / expected).exists() and not (cache / "sha256" / actual).exists()
    assert list((cache / "partial").iterdir()) == []
    assert unverified_in_cache(cache) == []
