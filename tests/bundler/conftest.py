"""Fixtures for the builder's tests: a stand-in k3s release served on 127.0.0.1, and a build runner.

The release and its server live for the whole session (generating and serving them is the slow
part); every test gets the server back with no faults armed and empty hit records.
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest
from click.testing import CliRunner

from k3bundle.bundler.build_cli import build_command
from k3bundle.installer.errors import K3BundleError
from k3bundle.installer.format.verify import inspect_bundle
from tests.helpers import KeyFiles, make_keys
from tests.release_server import ReleaseServer, generate_release

VERSION = "v1.31.4+k3s1"
RC_VERSION = "v1.32.4-rc1+k3s1"
AMD64_ONLY = "v1.30.2+k3s1"
IMAGE_SIZE = 64 * 1024
CHANNELS = {"stable": VERSION, "latest": VERSION, "testing": RC_VERSION, "v1.31": VERSION}
BuildRun = Callable[..., Tuple[int, str]]
_scratch_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def release_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """VERSION (every arch and image format); RC_VERSION and AMD64_ONLY (amd64, zst only)."""
    root = tmp_path_factory.mktemp("releases")
    generate_release(root, VERSION, image_size=IMAGE_SIZE)
    generate_release(root, RC_VERSION, ("amd64",), IMAGE_SIZE, ("tar.zst",))
    generate_release(root, AMD64_ONLY, ("amd64",), IMAGE_SIZE, ("tar.zst",))
    return root


@pytest.fixture(scope="session")
def release_server(release_root: Path) -> Iterator[ReleaseServer]:
    """One server for the session; tests take it through `server`."""
    with ReleaseServer(release_root, CHANNELS) as running:
        yield running


@pytest.fixture
def server(release_server: ReleaseServer) -> Iterator[ReleaseServer]:
    """The shared server with no faults armed, empty hit records and the standard channels."""
    release_server.clear_faults()
    release_server.reset_hits()
    release_server.channels = dict(CHANNELS)
    yield release_server
    release_server.clear_faults()


@pytest.fixture
def scratch_version(release_root: Path) -> str:
    """A fresh amd64-only release (zst) that this test may rewrite without affecting others."""
    version = f"v1.29.{next(_scratch_numbers)}+k3s1"
    generate_release(release_root, version, ("amd64",), IMAGE_SIZE, ("tar.zst",))
    return version


@pytest.fixture(scope="session")
def signer(tmp_path_factory: pytest.TempPathFactory) -> KeyFiles:
    """The key signed builds use."""
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def run_build(server: ReleaseServer, tmp_path: Path) -> BuildRun:
    """`k3bundle build ARGS` in-process against the local server: (exit code, output + error).

    Defaults: --cache-dir tmp_path/cache, -o tmp_path/dist, -q; later ARGS override them.
    """

    def run(*args: str) -> Tuple[int, str]:
        base = ["--release-url", server.release_url, "--channel-url", server.channel_url]
        base += ["--cache-dir", str(tmp_path / "cache"), "-o", str(tmp_path / "dist"), "-q"]
        result = CliRunner().invoke(build_command, [*base, *args])
        if isinstance(result.exception, K3BundleError):
            # What bundler.cli.main does at the edge.
            return (
                result.exception.exit_code,
                f"{result.output}Error: {result.exception.diagnostics()}",
            )
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result.exit_code, result.output

    return run


def bundle_path(dist: Path) -> Path:
    """The one bundle in an output folder: NAME.tar or, when split, NAME.tar.000."""
    found = sorted(dist.glob("*.tar")) + sorted(dist.glob("*.tar.000"))
    assert len(found) == 1, f"expected one bundle in {dist}, found {found}"
    return found[0]


@pytest.fixture
def find_bundle() -> Callable[[Path], Path]:
    """The one bundle in an output folder."""
    return bundle_path


@pytest.fixture
def manifest_of() -> Callable[[Path], Dict[str, Any]]:
    """Read the manifest summary (inspect --json's dict) of the one bundle in an output folder."""
    return lambda dist: inspect_bundle(str(bundle_path(dist)))


@pytest.fixture
def unverified_in_cache() -> Callable[[Path], List[str]]:
    """Names in CACHE/sha256/ whose content does not hash to the name (must always be empty)."""

    def check(cache: Path) -> List[str]:
        folder = cache / "sha256"
        blobs = sorted(folder.iterdir()) if folder.is_dir() else []
        return [p.name for p in blobs if hashlib.sha256(p.read_bytes()).hexdigest() != p.name]

    return check
