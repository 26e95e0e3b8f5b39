"""The fast path: kernel copies into staged files, hashed behind the copy by a pool of workers."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from k3bundle.installer.errors import IntegrityError
from k3bundle.installer.format import hashing
from k3bundle.installer.format.copying import COPY_CHUNK, copy_range
from k3bundle.installer.format.hashing import HashJob, HashPool
from k3bundle.installer.format.manifest import Entry
from k3bundle.installer.format.verify import verify_bundle
from k3bundle.installer.host import destination
from k3bundle.installer.progress import Progress
from tests.helpers import install_amd64, installed, make_bundle, make_keys, make_payload, snapshot

DATA = os.urandom(3 * COPY_CHUNK + 12345)  # several copy steps and a ragged end


def entry_for(data: bytes, path: str = "amd64/k3s") -> Entry:
    """The manifest entry `data` would have."""
    return Entry(path, len(data), hashlib.sha256(data).hexdigest(), "k3s-binary", 0o755, "amd64")


def copied(tmp_path: Path, source: Path, offset: int = 0, size: int = len(DATA)) -> bytes:
    """copy_range `size` bytes of `source` at `offset` into a fresh file; its bytes."""
    target = tmp_path / "copy"
    published: List[int] = []
    src = os.open(source, os.O_RDONLY)
    dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        copy_range(src, offset, size, dst, published.append)
    finally:
        os.close(src)
        os.close(dst)
    assert published and published[-1] == size
    assert published == sorted(published)
    return target.read_bytes()


@pytest.fixture
def shm() -> Iterator[Path]:
    """A folder on tmpfs, another filesystem than tmp_path (as a USB stick is for /var)."""
    base = Path("/dev/shm")
    if not base.is_dir() or os.stat(base).st_dev == os.stat(tempfile.gettempdir()).st_dev:
        pytest.skip("no tmpfs at /dev/shm apart from the temp folder's filesystem")
    folder = Path(tempfile.mkdtemp(dir=base, prefix="k3bundle-test-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_copy_range_copies_a_region_exactly(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.write_bytes(b"header" + DATA + b"trailer")
    assert copied(tmp_path, source, offset=6) == DATA


def test_copy_range_across_filesystems_copies_exactly(tmp_path: Path, shm: Path) -> None:
    source = shm / "source"
    source.write_bytes(DATA)
    assert copied(tmp_path, source) == DATA


def test_copy_range_falls_back_to_reads_and_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unsupported(*args: object) -> int:
        raise OSError(errno.ENOSYS, "not here")

    monkeypatch.setattr(os, "copy_file_range", unsupported, raising=False)
    monkeypatch.setattr(os, "sendfile", unsupported)
    source = tmp_path / "source"
    source.write_bytes(DATA)
    assert copied(tmp_path, source) == DATA


def test_copy_range_raises_eof_when_the_source_ends_early(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.write_bytes(DATA[:1000])
    with pytest.raises(EOFError):
        copied(tmp_path, source, size=2000)


def test_hash_job_follows_a_file_as_it_is_written(tmp_path: Path) -> None:
    staged = tmp_path / "staged"
    staged.write_bytes(b"")
    with HashPool() as pool:
        job = pool.add(HashJob(entry_for(DATA), "b.tar", [(staged, 0, len(DATA))], 0))
        with open(staged, "ab", buffering=0) as out:
            for start in range(0, len(DATA), 1 << 20):
                out.write(DATA[start : start + (1 << 20)])
                job.publish(min(len(DATA), start + (1 << 20)))
        pool.finish()
    assert job.error is None and job.hashed == len(DATA)


def test_hash_job_names_the_member_whose_bytes_differ(tmp_path: Path) -> None:
    staged = tmp_path / "staged"
    staged.write_bytes(DATA[:-1] + b"\0")
    with HashPool() as pool, pytest.raises(IntegrityError) as raised:
        pool.add(HashJob(entry_for(DATA), "b.tar", [(staged, 0, len(DATA))], len(DATA)))
        pool.finish()
    assert "amd64/k3s in b.tar is corrupted" in str(raised.value)
    assert hashlib.sha256(DATA).hexdigest() in str(raised.value)


def test_pool_reports_every_hashed_byte_and_the_first_error_in_order(tmp_path: Path) -> None:
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_bytes(DATA)
    bad.write_bytes(DATA[:100])  # shorter than its entry says: truncated
    seen: List[int] = []
    with HashPool(seen.append) as pool, pytest.raises(IntegrityError) as raised:
        pool.add(HashJob(entry_for(DATA, "a"), "b.tar", [(good, 0, len(DATA))], len(DATA)))
        pool.add(HashJob(entry_for(DATA, "b"), "b.tar", [(bad, 0, len(DATA))], len(DATA)))
        pool.add(HashJob(entry_for(DATA, "c"), "b.tar", [(good, 0, len(DATA))], len(DATA)))
        pool.finish()
    assert "b.tar is truncated inside b" in str(raised.value)
    assert sum(seen) == 2 * len(DATA) + 100


def test_a_job_that_fails_unexpectedly_fails_the_pool_and_never_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = tmp_path / "good"
    good.write_bytes(DATA)

    def broken(*args: object) -> int:
        raise MemoryError("out of memory")

    monkeypatch.setattr(hashing._SegmentReader, "readinto", broken)
    with HashPool(workers=2) as pool, pytest.raises(IntegrityError, match="could not hash a"):
        for name in ("a", "b", "c"):  # more jobs than workers: the workers must survive
            pool.add(HashJob(entry_for(DATA, name), "b.tar", [(good, 0, len(DATA))], len(DATA)))
        pool.finish()
    assert all(job.error is not None for job in pool.jobs)


def test_closing_the_pool_stops_jobs_still_waiting_for_bytes(tmp_path: Path) -> None:
    staged = tmp_path / "staged"
    staged.write_bytes(b"")
    pool = HashPool()
    job = pool.add(
        HashJob(entry_for(DATA), "b.tar", [(staged, 0, len(DATA))], 0)
    )  # nothing ever published
    closer = threading.Thread(target=pool.close)
    closer.start()
    closer.join(10)
    assert not closer.is_alive() and job.done.is_set() and job.hashed == 0


def test_closing_the_pool_stops_a_long_job_within_a_chunk(tmp_path: Path) -> None:
    big = tmp_path / "big"
    with open(big, "wb") as out:
        out.truncate(1 << 30)  # 1 GiB, sparse: hashing all of it would take most of a second
    pool = HashPool(workers=1)
    entry = Entry("big", 1 << 30, "0" * 64, "images", 0o644, "amd64")
    job = pool.add(HashJob(entry, "b.tar", [(big, 0, 1 << 30)], 1 << 30))
    while job.hashed == 0 and not job.done.wait(0.001):
        pass
    pool.close()
    assert job.done.is_set() and 0 < job.hashed < 1 << 30 and job.error is None


def test_install_checks_the_staged_copy_not_only_the_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy that goes wrong on the way (a bad disk, a bad cable) is caught before any rename."""
    signer = make_keys(tmp_path)
    bundle = make_bundle(tmp_path, ("amd64",), signer).files[0]
    root = tmp_path / "root"
    root.mkdir()
    before = snapshot(root)

    def flipping_copy(src: int, offset: int, size: int, dst: int, published: object) -> None:
        copy_range(src, offset, size, dst, lambda n: None)
        os.pwrite(dst, b"\xff", size // 2)
        published(size)  # type: ignore[operator]

    monkeypatch.setattr(destination, "copy_range", flipping_copy)
    result = install_amd64(bundle, root, signer)
    assert result.returncode == 4, result.stderr
    assert "is corrupted" in result.stderr and "signed manifest says" in result.stderr
    assert snapshot(root) == before


def test_install_from_a_bundle_on_another_filesystem(tmp_path: Path, shm: Path) -> None:
    signer = make_keys(tmp_path)
    bundle = make_bundle(shm, ("amd64",), signer, image_size=3_000_000).files[0]
    root = tmp_path / "root"
    installed(bundle, root, signer)
    payload = make_payload(tmp_path / "expected", ("amd64",), image_size=3_000_000)
    local, _ = payload["amd64/k3s-airgap-images-amd64.tar.zst"]
    placed = root / "var/lib/rancher/k3s/agent/images/k3s-airgap-images-amd64.tar.zst"
    assert placed.read_bytes() == local.read_bytes()


@pytest.fixture
def small_root(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs as the root: a real filesystem that fills up in the middle of a copy."""
    root = tmp_path / "small-root"
    root.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(root)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield root
    finally:
        subprocess.run(["umount", str(root)], check=False)


def test_a_disk_that_fills_up_during_the_copy_changes_nothing(
    tmp_path: Path, small_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    signer = make_keys(tmp_path)
    bundle = make_bundle(tmp_path, ("amd64",), signer, image_size=3_000_000).files[0]
    (small_root / "etc").mkdir()
    (small_root / "etc" / "hostname").write_text("node-1\n")
    before = snapshot(small_root)
    real_statvfs = os.statvfs

    class Roomy:  # the free-space check would refuse first; let the copy meet the full disk
        f_frsize, f_bavail = 4096, 1 << 30

    monkeypatch.setattr(
        os, "statvfs", lambda path: Roomy() if "small-root" in str(path) else real_statvfs(path)
    )
    result = install_amd64(bundle, small_root, signer)
    assert result.returncode == 7, result.stderr
    assert "cannot copy /var/lib/rancher/k3s/agent/images/" in result.stderr
    assert "No space left on device" in result.stderr
    assert snapshot(small_root) == before


def _traced_install(tmp_path: Path, *args: str) -> List[str]:
    """strace (fsync and renames, paths shown) of a whole install with ARGS, as lines."""
    if shutil.which("strace") is None:
        pytest.skip("strace is missing")
    signer = make_keys(tmp_path)
    bundle = make_bundle(tmp_path, ("amd64",), signer, image_size=3_000_000).files[0]
    trace, root = tmp_path / "trace", tmp_path / "root"
    argv = [sys.executable, "-m", "k3bundle.installer", "install", str(bundle), "--root", str(root)]
    argv += ["--pubkey", str(signer.public), "--arch", "amd64", "-q", *args]
    strace = ["strace", "-f", "-qq", "-y", "-o", str(trace)]
    done = subprocess.run(
        [*strace, "-e", "trace=fsync,rename,renameat,renameat2", *argv],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 and "ptrace" in done.stderr:
        pytest.skip("strace cannot trace here")
    assert done.returncode == 0, done.stderr
    return trace.read_text().splitlines()


_STAGED_FSYNC = re.compile(r"fsync\(\d+<([^>]*\.k3bundle-tmp)>")
_STAGED_RENAME = re.compile(r'rename\w*\(.*?"([^"]*\.k3bundle-tmp)"')


def test_sync_flushes_every_staged_file_before_it_is_renamed_into_place(tmp_path: Path) -> None:
    lines = _traced_install(tmp_path, "--sync")
    flushed: Dict[str, int] = {}
    renamed: Dict[str, int] = {}
    for number, line in enumerate(lines):
        for pattern, seen in ((_STAGED_FSYNC, flushed), (_STAGED_RENAME, renamed)):
            match = pattern.search(line)
            if match:
                seen.setdefault(match.group(1), number)
    files = {path for path in renamed if not os.path.islink(_final(path))}  # links: no data
    assert len(files) >= 7  # the binary, the images, the unit, its env, scripts, the record
    assert files <= set(flushed), files - set(flushed)
    assert all(flushed[path] < renamed[path] for path in files)


def _final(staged: str) -> str:
    """/x/.name.k3bundle-tmp -> /x/name."""
    folder, name = os.path.split(staged)
    return os.path.join(folder, name[1 : -len(".k3bundle-tmp")])


def test_under_root_dir_nothing_is_flushed_unless_asked(tmp_path: Path) -> None:
    lines = _traced_install(tmp_path)
    assert any(_STAGED_RENAME.search(line) for line in lines)
    assert not [line for line in lines if _STAGED_FSYNC.search(line)]


def test_verify_hashes_every_member_in_the_pool_and_counts_every_byte(tmp_path: Path) -> None:
    signer = make_keys(tmp_path)
    output = make_bundle(tmp_path, ("amd64", "arm64"), signer, image_size=2_000_000)
    seen: List[int] = []

    class Count(Progress):
        def advance(self, count: int) -> None:
            seen.append(count)

    summary = verify_bundle(str(output.files[0]), [str(signer.public)], "/", False, Count())
    assert summary["verified"] is True
    assert sum(seen) == sum(f["size"] for f in summary["files"])
