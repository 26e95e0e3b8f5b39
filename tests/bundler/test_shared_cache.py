"""Builds sharing one --cache-dir: atomic admission, one writer per partial file, both succeed."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List

from k3bundle.bundler.cache import Cache
from tests.bundler.conftest import VERSION, bundle_path
from tests.oci_registry import PushedImages
from tests.release_server import ReleaseServer, image_name

HEX = hashlib.sha256(b"shared content").hexdigest()
HOLDER = """
import sys, time
from pathlib import Path
from k3bundle.bundler.cache import Cache
with Cache(Path(sys.argv[1])).downloading(sys.argv[2]) as partial:
    partial.write_bytes(b"half of it")
    print(partial, flush=True)
    time.sleep(60)
"""


def start_holder(cache: Path) -> subprocess.Popen[str]:
    """Another process that holds the partial download of HEX (and waits to be killed)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(cache), HEX], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == str(Cache(cache).partial(HEX))
    return holder


def test_a_partial_held_by_another_process_is_left_alone_and_taken_over_once_it_dies(
    tmp_path: Path,
) -> None:
    cache = Cache(tmp_path / "cache")
    holder = start_holder(tmp_path / "cache")
    try:
        with cache.downloading(HEX) as private:
            assert private != cache.partial(HEX) and private.parent == cache.root / "partial"
            private.write_bytes(b"mine")
        assert not private.exists()  # a private partial never outlives its download
        assert cache.partial(HEX).read_bytes() == b"half of it"  # the holder's bytes untouched
    finally:
        holder.kill()  # a crash: the OS drops its lock, no stale lock file can block us
        holder.wait()
    with cache.downloading(HEX) as shared:
        assert shared == cache.partial(HEX) and shared.read_bytes() == b"half of it"
    assert list((cache.root / "locks").iterdir()) == []


def test_admitting_content_another_build_already_admitted_keeps_one_verified_copy(
    tmp_path: Path,
) -> None:
    cache = Cache(tmp_path / "cache")
    first = cache.store(HEX, b"shared content")
    again = cache.store(HEX, b"shared content")
    assert first == again and first.read_bytes() == b"shared content"
    assert list((cache.root / "partial").iterdir()) == []


def build_process(
    server: ReleaseServer, cache: Path, out: Path, image: str, host: str
) -> List[str]:
    """The command line of one build into `out` with the shared `cache`."""
    return [
        sys.executable,
        "-m",
        "k3bundle.bundler",
        "build",
        "--version",
        VERSION,
        "--arch",
        "amd64",
        "--arch",
        "arm64",
        "--release-url",
        server.release_url,
        "--channel-url",
        server.channel_url,
        "--cache-dir",
        str(cache),
        "-o",
        str(out),
        "-q",
        "--image",
        image,
        "--insecure-registry",
        host,
    ]


def test_two_concurrent_builds_into_one_cache_both_succeed_with_identical_bundles(
    server: ReleaseServer,
    pushed_images: PushedImages,
    tmp_path: Path,
    unverified_in_cache: Callable[[Path], List[str]],
) -> None:
    # Both builds start their transfers while the server holds back its answers, so they
    # download the same files into the same cache at the same time.
    for name in (image_name("amd64"), image_name("arm64")):
        server.fault(name, "stall", times=2, seconds=1.0, before_headers=True)
    cache, env = tmp_path / "cache", {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}
    runs = [
        subprocess.Popen(
            build_process(
                server, cache, tmp_path / f"dist{n}", pushed_images.index, pushed_images.host
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for n in (1, 2)
    ]
    started = time.monotonic()
    results = [(run.wait(120), run.communicate()) for run in runs]
    assert [code for code, _ in results] == [0, 0], results
    assert time.monotonic() - started < 60
    first, second = bundle_path(tmp_path / "dist1"), bundle_path(tmp_path / "dist2")
    assert first.name == second.name and first.read_bytes() == second.read_bytes()
    assert unverified_in_cache(cache) == []
    assert list((cache / "partial").iterdir()) == [] and list((cache / "locks").iterdir()) == []
    # both transfers really overlapped: each stalled file was asked for by both builds
    assert len(server.hits_for(image_name("amd64"))) >= 2
