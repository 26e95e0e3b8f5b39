"""Read-ahead of the bundle a host command names (installer/readahead.py): the kernel starts
reading it from its medium while Python imports the installer. Measured with util-linux's
`fincore` (how much of a file is in the page cache), after evicting the file's pages."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, List

import pytest

from k3bundle.installer import readahead
from tests.helpers import build_zipapp, make_bundle

MIB = 1 << 20


def resident(path: Path) -> int:
    """Bytes of `path` in the page cache."""
    done = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout.strip() or 0)


def evicted(path: Path) -> Path:
    """`path` with none of its pages in the page cache (written back first)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    if resident(path) != 0:  # tmpfs, for one, keeps every page
        pytest.skip(f"the page cache keeps {path} whatever is asked: read-ahead cannot be seen")
    return path


def nowait_reads(path: Path) -> bool:
    """Whether RWF_NOWAIT reads work on `path`'s filesystem (readahead's cache probe)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.pread(fd, 4096, 0)
        return os.preadv(fd, [bytearray(4096)], 0, os.RWF_NOWAIT) > 0
    except OSError:
        return False
    finally:
        os.close(fd)


def settled(path: Path, at_least: int, seconds: float = 5.0) -> int:
    """The bytes of `path` in the page cache once at least `at_least` are (`seconds` at most)."""
    deadline = time.monotonic() + seconds
    while resident(path) < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
    return resident(path)


def test_the_first_ahead_bytes_of_a_named_file_are_read_not_the_whole_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readahead, "AHEAD", 8 * MIB)
    bundle = tmp_path / "bundle.tar"
    bundle.write_bytes(os.urandom(64 * MIB))
    evicted(bundle)
    thread = readahead.start(["install", str(bundle), "--root", str(tmp_path), "--arch", "amd64"])
    assert thread is not None
    thread.join(5)
    # and no more than the kernel's own read-ahead after it: the rest stays on the medium
    assert 8 * MIB <= settled(bundle, 8 * MIB) <= 32 * MIB


def test_only_the_commands_that_read_a_bundle_read_ahead(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.tar"
    bundle.write_bytes(b"x" * 4096)
    for argv in (
        ["status"],
        ["rollback", str(bundle)],
        [],
        ["--version"],
        ["inspect", str(bundle)],
    ):
        assert readahead.start(argv) is None, argv
    for argv in (
        ["verify", str(bundle)],
        ["-v", "verify", str(bundle)],
        ["install", str(bundle), "-q"],
    ):
        thread = readahead.start(argv)
        assert thread is not None, argv
        thread.join(5)


def test_a_fifo_a_device_a_folder_or_a_missing_path_is_passed_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    opened: List[str] = []
    real_open = os.open

    def recording_open(path: Any, *args: Any, **kwargs: Any) -> int:
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording_open)
    names = [str(fifo), "/dev/null", str(tmp_path), str(tmp_path / "missing"), "\0bad"]
    worker = threading.Thread(target=readahead.advise, args=(names,), daemon=True)
    worker.start()
    worker.join(5)
    assert not worker.is_alive(), "advise hung on a name"
    assert opened == []  # none of them was ever opened


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An unsigned 12 MiB bundle."""
    folder = tmp_path_factory.mktemp("bundle")
    built = make_bundle(folder, arches=("amd64",), image_size=12 * MIB, image_format="tar")
    return built.files[0]


def step_reads(command: List[str], bundle: Path, tmp_path: Path, evict: bool = True) -> int:
    """How many STEP-sized reads from offset 0 `command` made (strace) with `bundle` out of the
    page cache: the read-ahead's first step. The installer's own reads are 1 MiB at most."""
    logs = tmp_path / "strace"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir()
    if evict:
        evicted(bundle)
    # -ff: a log per thread, so no call is split by another thread's into unfinished/resumed
    argv = ["strace", "-ff", "-qq", "-e", "trace=pread64", "-o", str(logs / "log"), *command]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert str(bundle) in command
    text = "".join(log.read_text() for log in logs.iterdir())
    return len(re.findall(rf"pread64\(\d+, .*, {readahead.STEP}, 0\)", text))


def test_verify_and_install_read_ahead_from_the_command_line_and_the_zipapp(
    bundle: Path, tmp_path: Path
) -> None:
    pyz = build_zipapp(tmp_path)
    cli = [sys.executable, "-m", "k3bundle.bundler"]
    zipapp = [sys.executable, "-I", str(pyz)]
    verify = ["verify", str(bundle), "--allow-unsigned", "-q"]
    install = ["install", str(bundle), "--allow-unsigned", "--root", str(tmp_path / "root")]
    install += ["--arch", "amd64", "-q"]
    assert step_reads([*cli, *verify], bundle, tmp_path) == 1
    assert step_reads([*zipapp, *verify], bundle, tmp_path) == 1
    assert step_reads([*cli, *install], bundle, tmp_path) == 1
    if nowait_reads(bundle):  # all of it is in the page cache now: no step is read again
        assert step_reads([*cli, *verify], bundle, tmp_path, evict=False) == 0
    # inspect reads the manifest alone: nothing ahead
    assert step_reads([*cli, "inspect", str(bundle)], bundle, tmp_path) == 0
