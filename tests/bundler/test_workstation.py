"""Every workstation: the build gives the same bytes where Linux-only calls are missing or refuse
(macOS, Windows), on every supported Python, keeps its cache where each OS expects it, and a
rename that fails at the end leaves the previous build whole."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

from tests.bundler.conftest import VERSION, BuildRun
from tests.helpers import KeyFiles, make_bundle
from tests.release_server import ReleaseServer

LINUX_ONLY = ("sendfile", "copy_file_range", "pread", "preadv")
SPLIT = "40K"  # the amd64 build is ~130 KiB: several parts
# Runs the CLI as on Windows: the calls that Python's os module lacks there are deleted first.
WITHOUT_LINUX_CALLS = f"""
import os
for name in {LINUX_ONLY!r}:
    if hasattr(os, name):
        delattr(os, name)
from k3bundle.bundler.entry import main
main()
"""


def digests(folder: Path) -> Dict[str, str]:
    """Every file in `folder` by name → its sha256."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def remove_linux_calls(monkeypatch: pytest.MonkeyPatch) -> List[int]:
    """Delete the calls Windows lacks; the list counts the seeks the fallback makes instead."""
    for name in LINUX_ONLY:
        monkeypatch.delattr(os, name, raising=False)
    seeks: List[int] = []
    real_lseek = os.lseek

    def counting_lseek(fd: int, position: int, how: int) -> int:
        seeks.append(position)
        return real_lseek(fd, position, how)

    monkeypatch.setattr(os, "lseek", counting_lseek)
    return seeks


def build_args(signer: KeyFiles, output: Path, cache: Path) -> List[str]:
    """A signed, split amd64 build into `output` with its own cache."""
    sign = ["--sign-key", str(signer.private), "--split", SPLIT]
    return [
        "--version",
        VERSION,
        "--arch",
        "amd64",
        *sign,
        "-o",
        str(output),
        "--cache-dir",
        str(cache),
    ]


def test_writer_without_sendfile_copy_file_range_pread_preadv_writes_the_same_bytes(
    signer: KeyFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    normal = make_bundle(tmp_path / "normal", signer=signer, split=100_000)
    seeks = remove_linux_calls(monkeypatch)
    bare = make_bundle(tmp_path / "bare", signer=signer, split=100_000)
    assert seeks, "the seek+read fallback did not run"
    assert len(normal.files) > 2
    assert [p.name for p in bare.files] == [p.name for p in normal.files]
    assert [p.read_bytes() for p in bare.files] == [p.read_bytes() for p in normal.files]
    assert bare.sha256s == normal.sha256s


def test_signed_split_build_in_a_process_without_linux_calls_is_byte_identical(
    run_build: BuildRun, server: ReleaseServer, signer: KeyFiles, tmp_path: Path
) -> None:
    code, output = run_build(*build_args(signer, tmp_path / "normal", tmp_path / "cache1"))
    assert code == 0, output
    base = ["--release-url", server.release_url, "--channel-url", server.channel_url, "-q"]
    args = [*base, *build_args(signer, tmp_path / "bare", tmp_path / "cache2")]
    command = [sys.executable, "-c", WITHOUT_LINUX_CALLS, "build", *args]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    normal = digests(tmp_path / "normal")
    assert any(name.endswith(".tar.001") for name in normal)
    assert "SHA256SUMS" in normal
    assert digests(tmp_path / "bare") == normal


def test_build_where_sendfile_refuses_regular_files_as_on_macos_is_byte_identical(
    run_build: BuildRun, signer: KeyFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, output = run_build(*build_args(signer, tmp_path / "normal", tmp_path / "cache"))
    assert code == 0, output
    refused: List[int] = []

    def macos_sendfile(*args: Any) -> int:
        refused.append(1)
        raise OSError(errno.ENOTSOCK, "Socket operation on non-socket")

    monkeypatch.delattr(os, "copy_file_range", raising=False)  # macOS has none
    monkeypatch.setattr(os, "sendfile", macos_sendfile, raising=False)
    code, output = run_build(*build_args(signer, tmp_path / "macos", tmp_path / "cache"))
    assert code == 0, output
    assert refused, "sendfile was never tried"
    assert digests(tmp_path / "macos") == digests(tmp_path / "normal")
