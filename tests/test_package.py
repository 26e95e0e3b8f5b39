"""The distribution is a real package: licence metadata, and an sdist whose tests run from it.

The sdist is built with setuptools' backend in-process (no isolated build, so nothing is
downloaded), unpacked, and its whole suite collected and a few tests run from the unpacked tree:
that proves the helpers and fixtures are in it. The whole suite from the sdist would double CI
time; `make test` runs it from the checkout.
"""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from k3bundle.installer.cli_parser import VERSION

ROOT = Path(__file__).resolve().parent.parent
SKIP = shutil.ignore_patterns(
    ".git", ".venv", ".typecheck", ".hypothesis", "*cache*", "__pycache__", "*.egg-info", "dist",
    "build", "demo", "demo-root", ".bench",
)  # fmt: skip
NEEDED = (
    "LICENSE", "README.md", "Makefile", ".ci/run", "pyproject.toml", "MANIFEST.in",
    "tests/conftest.py", "tests/helpers.py", "tests/oci_registry.py", "tests/release_server.py",
    "tests/bundler/conftest.py", "manifests/bundle.schema.json", "bench/install_vs_tar.py",
)  # fmt: skip


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist built from a copy of the checkout (the build writes egg-info beside it)."""
    work = tmp_path_factory.mktemp("sdist")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=SKIP)
    script = f"from setuptools import build_meta; print(build_meta.build_sdist({str(work)!r}))"
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=source, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return work / done.stdout.strip().splitlines()[-1]


def test_sdist_carries_the_licence_and_its_spdx_expression(sdist: Path) -> None:
    with tarfile.open(sdist) as archive:
        top = archive.getnames()[0].split("/", 1)[0]
        names = {name.split("/", 1)[-1] for name in archive.getnames()}
        pkg_info = archive.extractfile(f"{top}/PKG-INFO")
        assert pkg_info is not None
        metadata = email.message_from_bytes(pkg_info.read())
    assert top == f"k3bundle-{VERSION}"
    assert not [name for name in NEEDED if name not in names]
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert metadata["Version"] == VERSION
    assert "Typing :: Typed" in (metadata.get_all("Classifier") or [])
    assert "Apache License" in (ROOT / "LICENSE").read_text()


def test_the_suite_collects_and_runs_from_the_unpacked_sdist(sdist: Path, tmp_path: Path) -> None:
    with tarfile.open(sdist) as archive:
        archive.extractall(tmp_path, filter="data")
    tree = tmp_path / f"k3bundle-{VERSION}"
    pytest_args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    collected = subprocess.run(
        [*pytest_args, "--collect-only"], cwd=tree, capture_output=True, text=True, check=False
    )
    assert collected.returncode == 0, collected.stdout[-3000:]
    subset = ["tests/bundler/test_spec.py", "tests/bundler/test_conventions.py", "-k",
              "spec or site_config or precedence"]  # fmt: skip
    ran = subprocess.run(
        [*pytest_args, *subset], cwd=tree, capture_output=True, text=True, check=False
    )
    assert ran.returncode == 0, ran.stdout[-3000:]
    assert " passed" in ran.stdout.splitlines()[-1]
