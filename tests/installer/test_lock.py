"""One writer per root: a lock for every command that changes a host, and races that agree.

The installer runs as real processes (`python -m k3bundle.installer`), several at a time
against one root; the lock holder in some tests is a plain process holding `flock`.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from tests.helpers import KeyFiles, installed, make_bundle, make_keys, run_installer, snapshot

LOCK = "var/lib/k3bundle/lock"
NEW_VERSION = "v1.32.0+k3s1"
PAIRS = 12  # pairs of concurrent runs per test; each pair is two real installer processes


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory, signer: KeyFiles) -> Tuple[Path, Path]:
    """Two bundles of different k3s versions whose every file differs."""
    folder = tmp_path_factory.mktemp("bundles")
    old = make_bundle(folder / "old", ("amd64",), signer, image_size=2_000_000)
    new = make_bundle(folder / "new", ("amd64",), signer, image_size=2_000_000, version=NEW_VERSION)
    return old.files[0], new.files[0]


def installer(*args: str) -> subprocess.CompletedProcess[str]:
    """The installer as a real process."""
    return subprocess.run(
        [sys.executable, "-m", "k3bundle.installer", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def install_args(bundle: Path, root: Path, signer: KeyFiles) -> List[str]:
    """An install of BUNDLE into ROOT that may go up or down in version."""
    trust = ["--pubkey", str(signer.public), "--arch", "amd64", "--allow-downgrade"]
    return ["install", str(bundle), "--root", str(root), *trust]


@pytest.fixture
def held(tmp_path: Path) -> Iterator[Path]:
    """A root whose lock another process holds until the test ends."""
    root = tmp_path / "root"
    (root / LOCK).parent.mkdir(parents=True)
    (root / LOCK).touch()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(root / LOCK)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    yield root
    holder.kill()
    holder.wait()


HOLD = """
import fcntl, sys, time
handle = open(sys.argv[1], "r+")
fcntl.flock(handle, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(60)
"""


def test_no_wait_refuses_at_once_and_names_the_holder(
    held: Path, bundles: Tuple[Path, Path], signer: KeyFiles
) -> None:
    before = snapshot(held)
    result = installer(*install_args(bundles[0], held, signer), "--no-wait")
    assert result.returncode == 7
    assert "another k3bundle (pid " in result.stderr and "is changing" in result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(held) == before


@pytest.mark.parametrize("command", [["uninstall"], ["rollback"], ["recover"]])
def test_every_changing_command_takes_the_lock(held: Path, command: List[str]) -> None:
    result = installer(*command, "--root", str(held), "--no-wait")
    assert result.returncode == 7 and "is changing" in result.stderr


def test_status_during_a_change_says_so_and_changes_nothing(held: Path) -> None:
    before = snapshot(held)
    result = installer("status", "--root", str(held), "--json")
    assert "python" in json.loads(result.stdout)["running"]
    assert "is changing" in result.stderr
    assert snapshot(held) == before


def test_a_waiting_install_says_it_waits_and_runs_when_the_lock_is_free(
    tmp_path: Path, bundles: Tuple[Path, Path], signer: KeyFiles
) -> None:
    root = tmp_path / "root"
    (root / LOCK).parent.mkdir(parents=True)
    handle = open(root / LOCK, "a+")  # noqa: SIM115 - held across the child's start
    fcntl.flock(handle, fcntl.LOCK_EX)
    child = subprocess.Popen(
        [sys.executable, "-m", "k3bundle.installer", *install_args(bundles[0], root, signer)],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stderr is not None
    assert "waiting for another k3bundle" in child.stderr.readline()
    time.sleep(0.3)
    assert not (root / "usr/local/bin/k3s").exists(), "it waited"
    handle.close()
    assert child.wait(timeout=60) == 0
    assert (root / "usr/local/bin/k3s").exists()


def test_a_refused_first_install_leaves_no_lock_file_behind(
    tmp_path: Path, bundles: Tuple[Path, Path]
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    other = make_keys(tmp_path / "other")
    result = run_installer(*install_args(bundles[0], root, other))
    assert result.returncode == 5
    assert snapshot(root) == {}


def test_lock_file_stays_untouched_by_a_run_that_changes_nothing(
    tmp_path: Path, bundles: Tuple[Path, Path], signer: KeyFiles
) -> None:
    root = tmp_path / "root"
    installed(bundles[0], root, signer)
    before = snapshot(root)
    stamp = os.stat(root / LOCK).st_mtime_ns
    installed(bundles[0], root, signer)
    assert snapshot(root) == before and os.stat(root / LOCK).st_mtime_ns == stamp


def agreed(root: Path) -> Dict[str, Any]:
    """status, record and files agree: status is intact and names the recorded bundle."""
    result = installer("status", "--root", str(root), "--json")
    summary: Dict[str, Any] = json.loads(result.stdout)
    assert result.returncode == 0 and summary["intact"], (result.stdout, result.stderr)
    record = json.loads((root / "var/lib/k3bundle/record.json").read_text())
    assert summary["bundle_id"] == record["bundle_id"]
    binary = (root / "usr/local/bin/k3s").read_text()
    assert summary["k3s_version"] in binary  # the binary on disk is the recorded bundle's
    return summary


def never_blames_the_bundle(result: subprocess.CompletedProcess[str]) -> None:
    """A run in a race exits 0 and says nothing about the bundle being damaged."""
    assert result.returncode == 0, result.stderr
    for word in ("copy the bundle again", "Traceback", "mismatch", "truncated"):
        assert word not in result.stderr, result.stderr


@pytest.mark.slow
def test_many_pairs_of_concurrent_installs_always_agree(
    tmp_path: Path, bundles: Tuple[Path, Path], signer: KeyFiles
) -> None:
    root = tmp_path / "root"
    installed(bundles[0], root, signer)
    with ThreadPoolExecutor(2) as pool:
        for attempt in range(PAIRS):
            runs = [
                pool.submit(installer, *install_args(bundle, root, signer))
                for bundle in (bundles[attempt % 2], bundles[(attempt + 1) % 2])
            ]
            for run in runs:
                never_blames_the_bundle(run.result())
            agreed(root)


@pytest.mark.slow
def test_status_racing_an_upgrade_never_recovers_it_or_breaks_it(
    tmp_path: Path, bundles: Tuple[Path, Path], signer: KeyFiles
) -> None:
    root = tmp_path / "root"
    installed(bundles[0], root, signer)
    with ThreadPoolExecutor(4) as pool:
        for attempt in range(PAIRS):
            upgrade = pool.submit(
                installer, *install_args(bundles[(attempt + 1) % 2], root, signer)
            )
            looks = [pool.submit(installer, "status", "--root", str(root)) for _ in range(3)]
            never_blames_the_bundle(upgrade.result())
            for look in looks:
                seen = look.result()
                assert seen.returncode in (0, 9) and "Traceback" not in seen.stderr, seen.stderr
            assert agreed(root)["k3s_version"] in (NEW_VERSION, "v1.31.4+k3s1")
