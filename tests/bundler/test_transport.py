"""One transport: image and chart bytes counted and shown like release files, retries reported,
Ctrl-C, rotted cache entries and a full disk, against real local servers."""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from subprocess import PIPE
from typing import Any, Iterator, List, Optional, Tuple

import pytest
import requests
from click.testing import CliRunner

from k3bundle.bundler.build_cli import build_command
from k3bundle.bundler.build_events import LogFetchEvents
from k3bundle.bundler.cache import Cache
from k3bundle.bundler.net.fetch import Download, Fetcher, FetchEvents
from k3bundle.bundler.net.transport import (
    USER_AGENT,
    BoundedSession,
    Cancel,
    Cancelled,
    FetchSettings,
    RetryLater,
    make_session,
    retry_after,
    retry_delay,
    run_parallel,
    with_retries,
)
from k3bundle.bundler.oci.reference import parse_reference
from k3bundle.bundler.oci.registry import RegistryClient
from k3bundle.installer.errors import FetchError, IntegrityError
from tests.bundler.conftest import VERSION, BuildRun
from tests.helpers import run_k3bundle
from tests.oci_registry import LocalRegistry, PushedImages
from tests.release_server import ReleaseServer, binary_content

IMAGES = "k3s-airgap-images-amd64.tar.zst"
NO_CONFIG = Path("/nonexistent/k3b/config.json")


class Recorder(FetchEvents):
    """What a client reported: (event, name, number) triples."""

    def __init__(self) -> None:
        self.seen: List[Tuple[str, str, int]] = []
        self._lock = threading.Lock()

    def _add(self, kind: str, download: Download, number: int) -> None:
        with self._lock:
            self.seen.append((kind, download.name, number))

    def started(self, download: Download, total: Optional[int], done: int) -> None:
        self._add("started", download, total or 0)

    def advanced(self, download: Download, count: int) -> None:
        self._add("advanced", download, count)

    def finished(self, download: Download, cached: bool) -> None:
        self._add("cached" if cached else "verified", download, 0)

    def count(self, kind: str) -> int:
        return sum(1 for k, _, _ in self.seen if k == kind)


def blob_sizes(client: RegistryClient, image: str) -> List[Tuple[str, int]]:
    """(digest, size) of the config and layers of a single-platform image."""
    manifest = json.loads(client.get_manifest(parse_reference(image)).data)
    return [(b["digest"], b["size"]) for b in [manifest["config"], *manifest["layers"]]]


def test_image_blobs_go_through_the_event_stream_and_are_counted(
    registry: LocalRegistry, pushed_images: PushedImages, tmp_path: Path
) -> None:
    events = Recorder()
    client = RegistryClient(
        insecure=[registry.host], docker_config=NO_CONFIG, sleep=lambda s: None, events=events
    )
    cache, ref = Cache(tmp_path / "cache"), parse_reference(pushed_images.single)
    blobs = blob_sizes(client, pushed_images.single)
    for digest, size in blobs:
        client.fetch_blob(ref, digest, size, cache)
    total = sum(size for _, size in blobs)
    assert client.transferred == total
    assert sum(n for kind, _, n in events.seen if kind == "advanced") == total
    assert events.count("started") == events.count("verified") == len(blobs)
    assert all(ref.name in name for _, name, _ in events.seen)
    for digest, size in blobs:  # the second time: from the cache, said so, nothing counted
        client.fetch_blob(ref, digest, size, cache)
    assert events.count("cached") == len(blobs)
    assert client.transferred == total


def _cli_build(server: ReleaseServer, tmp_path: Path, *args: str) -> Any:
    base = ["--release-url", server.release_url, "--channel-url", server.channel_url, "-q"]
    base += ["--cache-dir", str(tmp_path / "cache"), "--version", VERSION, "--arch", "amd64"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(tmp_path))
        patch.delenv("DOCKER_CONFIG", raising=False)
        return CliRunner().invoke(build_command, [*base, *args])


def test_build_summary_counts_the_bytes_of_pulled_images(
    server: ReleaseServer, registry: LocalRegistry, pushed_images: PushedImages, tmp_path: Path
) -> None:
    first = _cli_build(server, tmp_path, "-o", str(tmp_path / "plain"))
    assert first.exit_code == 0, first.output
    image = ("--image", pushed_images.single, "--insecure-registry", registry.host)
    second = _cli_build(server, tmp_path, "-o", str(tmp_path / "img"), "--json", *image)
    assert second.exit_code == 0, second.output
    client = RegistryClient(insecure=[registry.host], docker_config=NO_CONFIG)
    expected = sum(size for _, size in blob_sizes(client, pushed_images.single))
    assert json.loads(second.stdout)["downloaded_bytes"] == expected  # release files: cached


@pytest.fixture
def unavailable_registry() -> Iterator[str]:
    """A host:port that answers 503 (Retry-After: 0) to everything."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(503)
            self.send_header("Retry-After", "0")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_registry_retries_are_reported_with_verbose(
    server: ReleaseServer, unavailable_registry: str, tmp_path: Path
) -> None:
    host = unavailable_registry
    result = run_k3bundle(
        "build", "-v", "--release-url", server.release_url, "--version", VERSION,
        "--arch", "amd64", "--cache-dir", str(tmp_path / "cache"), "-o", str(tmp_path / "d"),
        "--image", f"{host}/x/y:1", "--insecure-registry", host, "--retries", "2",
        env={"HOME": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 8, result.stderr
    lines = [x for x in result.stderr.splitlines() if x.startswith("retrying")]
    assert lines == [
        f"retrying http://{host}/v2/ in 0.0s (attempt {n} failed: HTTP 503 from {host}/v2/)"
        for n in (1, 2)
    ]


def test_log_events_print_a_progress_line_every_period_when_not_a_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    now = [0.0]
    events = LogFetchEvents(verbose=False, clock=lambda: now[0])
    download = Download("http://127.0.0.1/f", "0" * 64, "f")
    for _ in range(3):
        now[0] += 6.0
        events.advanced(download, 1 << 20)
    assert capsys.readouterr().err.splitlines() == ["downloaded 2.0 MiB so far (170.7 KiB/s)"]


@pytest.mark.parametrize(
    ("header", "wait"),
    [
        ("7", 7.0),
        ("Wed, 02 Dec 2026 00:00:30 GMT", 30.0),  # an HTTP-date, 30 s after "now"
        ("Tue, 01 Dec 2026 23:00:00 GMT", 0.0),  # already past: no wait
        ("soon", None),  # malformed: our own backoff applies
        (None, None),
    ],
)
def test_retry_after_is_read_in_both_of_its_forms(
    header: Optional[str], wait: Optional[float]
) -> None:
    response = requests.Response()
    if header is not None:
        response.headers["Retry-After"] = header
    now = email.utils.parsedate_to_datetime("Wed, 02 Dec 2026 00:00:00 GMT").timestamp()
    assert retry_after(response, lambda: now) == wait


def _wait_for_request(server: ReleaseServer, name: str, limit: float = 20.0) -> None:
    """Return once `server` was asked for `name`, and its first bytes had time to arrive."""
    deadline = time.monotonic() + limit
    while not server.hits_for(name):
        assert time.monotonic() < deadline, f"nobody asked for {name}"
        time.sleep(0.02)
    time.sleep(0.5)


def test_ctrl_c_stops_a_stalled_build_at_once_keeps_the_partial_and_the_rerun_resumes(
    server: ReleaseServer, tmp_path: Path
) -> None:
    server.fault(IMAGES, "stall", seconds=60, after=20000)  # then silence, well within --timeout
    args = [
        "build", "--release-url", server.release_url, "--version", VERSION, "--arch", "amd64",
        "--cache-dir", str(tmp_path / "cache"), "-o", str(tmp_path / "dist"), "--timeout", "120",
    ]  # fmt: skip
    env = {**os.environ, "HOME": str(tmp_path)}
    command = [sys.executable, "-m", "k3bundle.bundler", *args]
    build = subprocess.Popen(command, env=env, stdout=PIPE, stderr=PIPE, text=True)
    try:
        _wait_for_request(server, IMAGES)
        sent = time.monotonic()
        build.send_signal(signal.SIGINT)
        _, err = build.communicate(timeout=15)
        took = time.monotonic() - sent
    finally:
        build.kill()
    assert build.returncode == 130, err
    assert took < 2.0
    assert err.splitlines()[-1].startswith("Error: interrupted (Ctrl-C); partial downloads")
    partials = list((tmp_path / "cache" / "partial").glob("*.part"))
    assert [p.stat().st_size for p in partials] == [20000]  # kept, whole, for the next build
    server.reset_hits()
    again = run_k3bundle(*args, env={"HOME": str(tmp_path)})
    assert again.returncode == 0, again.stderr
    assert server.hits_for(IMAGES) == [("GET", "bytes=20000-")]
    assert not partials[0].exists()


class Silent:
    """A TCP server on 127.0.0.1 that accepts connections, reads nothing and never answers."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted: List[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # closed by close()
            while True:
                self.accepted.append(self.listener.accept()[0])

    def wait_accepted(self, limit: float = 10.0) -> None:
        """Block until a client is connected (and so waiting for an answer)."""
        deadline = time.monotonic() + limit
        while not self.accepted:
            assert time.monotonic() < deadline, "nobody connected"
            time.sleep(0.02)
        time.sleep(0.3)  # the request is sent; the client now waits for the headers

    def close(self) -> None:
        """Stop listening and drop every connection."""
        self.listener.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def silent() -> Iterator[Silent]:
    """A server that accepts and never answers."""
    running = Silent()
    yield running
    running.close()


def test_cancel_wakes_a_worker_waiting_for_headers_from_a_server_that_never_answers(
    silent: Silent, tmp_path: Path
) -> None:
    fetcher = Fetcher(Cache(tmp_path / "cache"), FetchSettings(read_timeout=300, retries=3))
    download = Download(f"http://127.0.0.1:{silent.port}/k3s", "a" * 64, "k3s")
    outcome: List[BaseException] = []

    def fetch() -> None:
        try:
            run_parallel(fetcher.fetch, [download], 1, fetcher.cancel)
        except BaseException as exc:  # the worker's error, handed on by run_parallel
            outcome.append(exc)

    caller = threading.Thread(target=fetch, daemon=True)
    caller.start()
    silent.wait_accepted()
    woken = time.monotonic()
    fetcher.cancel.set()  # what Ctrl-C does
    caller.join(10)
    # Not abandoned: the worker itself came back (a read timeout would take 300 s), without a
    # retry, as Cancelled.
    assert not caller.is_alive() and time.monotonic() - woken < 5
    assert len(outcome) == 1 and isinstance(outcome[0], Cancelled)
    assert len(silent.accepted) == 1


def test_ctrl_c_stops_a_build_whose_server_never_sends_headers_and_keeps_the_partial(
    server: ReleaseServer, tmp_path: Path
) -> None:
    server.fault(IMAGES, "stall", seconds=60, before_headers=True)  # accepted, never answered
    server.fault("k3s", "stall", seconds=60, after=40)  # and one stalled mid-body
    args = [
        "build", "--release-url", server.release_url, "--version", VERSION, "--arch", "amd64",
        "--cache-dir", str(tmp_path / "cache"), "-o", str(tmp_path / "dist"), "--timeout", "120",
    ]  # fmt: skip
    env = {**os.environ, "HOME": str(tmp_path)}
    command = [sys.executable, "-m", "k3bundle.bundler", *args]
    build = subprocess.Popen(command, env=env, stdout=PIPE, stderr=PIPE, text=True)
    try:
        _wait_for_request(server, IMAGES)
        _wait_for_request(server, "k3s")
        sent = time.monotonic()
        build.send_signal(signal.SIGINT)
        _, err = build.communicate(timeout=15)
        took = time.monotonic() - sent
    finally:
        build.kill()
    assert build.returncode == 130, err
    assert took < 2.0
    assert err.splitlines()[-1].startswith("Error: interrupted (Ctrl-C); partial downloads")
    partials = list((tmp_path / "cache" / "partial").glob("*.part"))
    assert [p.stat().st_size for p in partials] == [40]  # kept for the next build to resume
    assert not list((tmp_path / "dist").glob("*.tar"))


def test_one_retry_loop_serves_release_files_and_registries_alike() -> None:
    calls: List[int] = []
    reported: List[Tuple[int, str, float]] = []

    def once() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise RetryLater("HTTP 503", 0.0)
        if len(calls) == 2:
            raise requests.ConnectionError("reset")
        return "done"

    settings = FetchSettings(retries=2, backoff=0.0)
    result = with_retries(
        once, settings, Cancel(), lambda *a: reported.append(a), lambda n, r: FetchError(r)
    )
    assert result == "done" and len(calls) == 3
    assert [(n, r) for n, r, _ in reported] == [(1, "HTTP 503"), (2, "ConnectionError: reset")]
    fetch_src = Path(sys.modules[Fetcher.__module__].__file__ or "").read_text()
    session_src = Path(sys.modules[RegistryClient.__mro__[1].__module__].__file__ or "")
    for source in (fetch_src, session_src.read_text()):
        assert "with_retries(" in source and "for attempt in" not in source


def _rot(path: Path) -> None:
    """Flip one byte in the middle of `path`, as a failing disk might."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_rotted_release_file_is_evicted_and_the_next_build_fetches_it_again(
    run_build: BuildRun, server: ReleaseServer, tmp_path: Path
) -> None:
    args = ("--version", VERSION, "--arch", "amd64")
    code, output = run_build(*args, "-o", str(tmp_path / "first"))
    assert code == 0, output
    sha256 = hashlib.sha256(binary_content(VERSION, "amd64")).hexdigest()
    binary = tmp_path / "cache" / "sha256" / sha256
    _rot(binary)
    code, output = run_build(*args, "-o", str(tmp_path / "second"))
    assert code == 4, output
    assert f"{binary} changed since it was verified" in output
    assert "evicted from the cache, so the next build fetches it again" in output
    assert not binary.exists()
    server.reset_hits()
    code, output = run_build(*args, "-o", str(tmp_path / "second"))
    assert code == 0, output
    assert [method for method, _ in server.hits_for("k3s")] == ["GET"]
    assert hashlib.sha256(binary.read_bytes()).hexdigest() == sha256


def test_a_rotted_image_blob_is_evicted_and_pulled_again(
    server: ReleaseServer, registry: LocalRegistry, pushed_images: PushedImages, tmp_path: Path
) -> None:
    image = ("--image", pushed_images.single, "--insecure-registry", registry.host)
    first = _cli_build(server, tmp_path, "-o", str(tmp_path / "first"), *image)
    assert first.exit_code == 0, first.output
    client = RegistryClient(insecure=[registry.host], docker_config=NO_CONFIG)
    digest, _ = blob_sizes(client, pushed_images.single)[-1]  # a layer
    blob = tmp_path / "cache" / "sha256" / digest[7:]
    _rot(blob)
    second = _cli_build(server, tmp_path, "-o", str(tmp_path / "second"), *image)
    assert isinstance(second.exception, IntegrityError)
    assert f"the cache entry {blob} (blob {digest}) no longer matched" in second.exception.message
    assert "evicted" in second.exception.message and not blob.exists()
    third = _cli_build(server, tmp_path, "-o", str(tmp_path / "second"), *image)
    assert third.exit_code == 0, third.output
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == digest[7:]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 32 KiB tmpfs (smaller than the airgap images), unmounted afterwards; root only."""
    point = tmp_path / "small"
    point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(point)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield point
    subprocess.run(["umount", str(point)], capture_output=True, check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: mounts a tmpfs")
@pytest.mark.parametrize("full", ["cache", "output"])
def test_a_full_disk_names_the_file_says_free_some_space_and_leaves_no_partial(
    server: ReleaseServer, small_disk: Path, tmp_path: Path, full: str
) -> None:
    cache = small_disk if full == "cache" else tmp_path / "cache"
    dist = small_disk if full == "output" else tmp_path / "dist"
    result = run_k3bundle(
        "build", "--release-url", server.release_url, "--version", VERSION, "--arch", "amd64",
        "--cache-dir", str(cache), "-o", str(dist), "-q", env={"HOME": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 7, result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    where = f"{small_disk}/partial/" if full == "cache" else f"{dist}/k3s-"
    assert error[0].startswith(f"Error: cannot write {where}"), result.stderr
    assert error[0].endswith(": No space left on device")
    assert "free some space" in result.stderr
    assert "Traceback" not in result.stderr
    left = [p for p in small_disk.rglob("*") if p.is_file() and p.stat().st_size > 16 << 10]
    assert left == []  # nothing keeps the disk full


def test_retry_delay_is_backoff_less_a_random_share_or_what_the_server_asked() -> None:
    settings = FetchSettings(backoff=1.0, max_backoff=30.0, jitter=0.5)
    assert retry_delay(settings, 2, None, lambda: 0.0) == 4.0
    assert retry_delay(settings, 2, None, lambda: 1.0) == 2.0  # never below half the backoff
    assert retry_delay(settings, 10, None, lambda: 0.0) == 30.0  # capped
    assert retry_delay(settings, 0, 7.0, lambda: 1.0) == 7.0  # Retry-After, untouched
    assert retry_delay(settings, 0, 3600.0, lambda: 1.0) == 30.0
    assert {retry_delay(settings, 3, None) for _ in range(20)} != {8.0}  # spread at random


def test_release_files_and_registries_share_one_session_class() -> None:
    session = make_session()
    assert isinstance(session, BoundedSession)
    assert session.headers["User-Agent"] == USER_AGENT
    assert session.headers["Accept-Encoding"] == "identity"
