"""An image archive this build writes is hashed once: its sha256 and its chunk digests are taken
in the same pass as its bytes go to disk, and the bundle writer copies it without reading it
again, neither for a chunk pass nor for a whole re-hash. The installer still checks the copied
bytes chunk by chunk, so bytes that changed after that pass give a refused bundle, never a wrong
file."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import List

import pytest

from k3bundle.bundler import writer
from k3bundle.bundler.payloads.images import _HashingWriter
from k3bundle.installer.errors import IntegrityError
from k3bundle.installer.format import Chunks, Entry, Manifest
from k3bundle.installer.format.verify import verify_bundle
from k3bundle.installer.progress import Progress

CHUNK = 1 << 16  # the smallest chunk the format allows
DATA = os.urandom(5 * CHUNK + 777)  # six chunks, the last one short


def _slices(data: bytes) -> List[str]:
    return [hashlib.sha256(data[i : i + CHUNK]).hexdigest() for i in range(0, len(data), CHUNK)]


def _write(path: Path, data: bytes) -> Entry:
    """`data` written to `path` through the archive writer's hashing file, in odd pieces."""
    with open(path, "wb") as raw:
        out = _HashingWriter(raw, CHUNK)
        view, step = memoryview(data), 1
        while view:
            out.write(bytes(view[:step]))
            view, step = view[step:], step * 3 + 1
    written = out.written(path)
    return Entry("amd64/k3bundle-images-amd64.tar", written.size, written.sha256, "images",
                 arch="amd64", chunks=written.chunks)  # fmt: skip


def test_the_hashing_file_takes_the_whole_sha256_and_every_chunk_in_one_pass(
    tmp_path: Path,
) -> None:
    entry = _write(tmp_path / "a.tar", DATA)
    assert entry.size == len(DATA) == (tmp_path / "a.tar").stat().st_size
    assert entry.sha256 == hashlib.sha256(DATA).hexdigest()
    assert entry.chunks == Chunks(CHUNK, tuple(_slices(DATA)))
    small = io.BytesIO()
    one = _HashingWriter(small, CHUNK)
    one.write(DATA[:CHUNK])  # exactly one chunk: no chunk digests (only larger files get them)
    assert one.written(tmp_path / "x").chunks is None


def _bundle(tmp_path: Path, entry: Entry, local: Path) -> Path:
    binary = tmp_path / "k3s"
    binary.write_bytes(b"k3s stand-in")
    k3s = Entry("amd64/k3s", 12, hashlib.sha256(b"k3s stand-in").hexdigest(), "k3s-binary",
                0o755, "amd64")  # fmt: skip
    manifest = Manifest("v1.31.4+k3s1", ("amd64",), (k3s, entry))
    files = {k3s.path: binary, entry.path: local}
    out = writer.write_bundle(tmp_path / "b.tar", manifest, files, fresh=set(files), chunk=CHUNK)
    return out.files[0]


def test_the_writer_copies_a_same_pass_chunked_archive_without_reading_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = tmp_path / "a.tar"
    entry = _write(local, DATA)
    chunk_passes: List[int] = []
    rehashed: List[str] = []
    hash_chunks = writer.hash_chunks  # type: ignore[attr-defined]
    add = writer._InputChecks.add

    def chunk_pass(*args: object, **kwargs: object) -> object:
        chunk_passes.append(1)
        return hash_chunks(*args, **kwargs)  # type: ignore[arg-type]

    def recording(self: writer._InputChecks, e: Entry, path: Path, fd: int) -> None:
        rehashed.append(e.path)
        add(self, e, path, fd)

    monkeypatch.setattr(writer, "hash_chunks", chunk_pass)
    monkeypatch.setattr(writer._InputChecks, "add", recording)
    bundle = _bundle(tmp_path, entry, local)
    assert chunk_passes == [] and rehashed == []
    summary = verify_bundle(str(bundle), [], str(tmp_path / "noroot"), True, Progress())
    assert entry.path in {f["path"] for f in summary["files"]}


def test_bytes_changed_after_the_pass_give_a_bundle_the_installer_refuses(
    tmp_path: Path,
) -> None:
    local = tmp_path / "a.tar"
    entry = _write(local, DATA)
    local.write_bytes(DATA[: 3 * CHUNK] + b"\0" + DATA[3 * CHUNK + 1 :])  # chunk 3 changed
    bundle = _bundle(tmp_path, entry, local)
    with pytest.raises(IntegrityError) as caught:
        verify_bundle(str(bundle), [], str(tmp_path / "noroot"), True, Progress())
    assert "a.tar" in caught.value.message or "k3bundle-images-amd64.tar" in caught.value.message
