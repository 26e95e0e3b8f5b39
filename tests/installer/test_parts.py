"""Reading a split bundle: parts streamed in order, each part checked, damaged parts named."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import pytest

from k3bundle.installer import cli as installer_cli
from k3bundle.installer.errors import FormatError, IntegrityError
from k3bundle.installer.format.hashing import HashPool, PartJob, Segment
from k3bundle.installer.format.manifest import parse
from k3bundle.installer.format.parts import MAX_INDEX_BYTES, resolve_parts
from k3bundle.installer.format.sources import BundleSource
from tests.helpers import KeyFiles, make_bundle, make_keys, run_k3bundle

SPLIT = 100_000
# Larger than every payload file (200 kB) but smaller than the whole bundle (~400 kB).
BIG_SPLIT = 250_000


@pytest.fixture
def key(tmp_path: Path) -> KeyFiles:
    return make_keys(tmp_path / "keys")


def _parts(folder: Path) -> List[Path]:
    return sorted(folder.glob("bundle.tar.[0-9][0-9][0-9]"))


def _split_bundle(tmp_path: Path, key: KeyFiles, split: int = SPLIT) -> Path:
    make_bundle(tmp_path / "out", signer=key, split=split)
    assert len(_parts(tmp_path / "out")) >= 2
    return tmp_path / "out"


def _verify(first: Path, key: KeyFiles) -> subprocess.CompletedProcess[str]:
    """`verify` through the installer's CLI in this process (the subprocess adds only startup)."""
    args = ["verify", str(first), "--pubkey", str(key.public)]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = installer_cli.main(args, prog="k3bundle")
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_damaged_part_is_refused_naming_that_part(tmp_path: Path, key: KeyFiles) -> None:
    folder = _split_bundle(tmp_path, key)
    _flip(folder / "bundle.tar.001", SPLIT // 2)
    done = _verify(folder / "bundle.tar.000", key)
    assert done.returncode == 4
    assert "bundle part bundle.tar.001 is damaged" in done.stderr
    assert "Copy bundle.tar.001 again" in done.stderr


def test_damage_outside_any_member_is_caught_by_the_part_hash(
    tmp_path: Path, key: KeyFiles
) -> None:
    folder = _split_bundle(tmp_path, key)
    last = _parts(folder)[-1]
    _flip(last, last.stat().st_size - 1)  # in the tar's end-of-archive zero padding
    done = _verify(folder / "bundle.tar.parts.json", key)
    assert done.returncode == 4
    assert f"bundle part {last.name} is damaged" in done.stderr


def test_missing_part_is_refused_naming_it_before_anything_is_read(
    tmp_path: Path, key: KeyFiles
) -> None:
    folder = _split_bundle(tmp_path, key)
    (folder / "bundle.tar.002").unlink()
    first = folder / "bundle.tar.000"
    first.write_bytes(b"x" * first.stat().st_size)  # reading it would fail as "not a tar"
    done = _verify(first, key)
    assert done.returncode == 4
    assert "bundle part bundle.tar.002 is missing" in done.stderr
    assert "not a tar" not in done.stderr


def test_truncated_part_is_refused_naming_it(tmp_path: Path, key: KeyFiles) -> None:
    folder = _split_bundle(tmp_path, key)
    with open(folder / "bundle.tar.001", "r+b") as handle:
        handle.truncate(SPLIT - 1000)
    done = _verify(folder / "bundle.tar.000", key)
    assert done.returncode == 4
    assert "bundle.tar.001" in done.stderr
    assert f"the index says {SPLIT}" in done.stderr


def test_missing_parts_index_is_refused_naming_it(tmp_path: Path, key: KeyFiles) -> None:
    folder = _split_bundle(tmp_path, key)
    (folder / "bundle.tar.parts.json").unlink()
    with pytest.raises(IntegrityError, match=r"bundle\.tar\.parts\.json is missing") as caught:
        BundleSource(str(folder / "bundle.tar.000"))
    assert caught.value.exit_code == 4


def test_any_part_or_the_index_resolves_to_the_same_parts(tmp_path: Path, key: KeyFiles) -> None:
    folder = _split_bundle(tmp_path, key)
    names = [p.name for p in _parts(folder)]
    for given in ("bundle.tar.000", "bundle.tar.001", "bundle.tar.parts.json"):
        parts = resolve_parts(folder / given)
        assert parts is not None
        assert [p.path.name for p in parts] == names
    assert resolve_parts(folder / "bundle.tar") is None


def test_parts_read_as_one_stream_give_the_same_members_as_one_tar(
    tmp_path: Path, key: KeyFiles
) -> None:
    folder = _split_bundle(tmp_path, key)
    whole = make_bundle(tmp_path / "whole", signer=key).files[0]
    read = {}
    for bundle in (whole, folder / "bundle.tar.000"):
        with BundleSource(str(bundle)) as source:
            header = source.read_header()
            manifest = parse(header.manifest)
            read[bundle.name] = (
                header,
                [(entry.path, stream.read()) for entry, stream in source.payload(manifest)],
            )
    assert read["bundle.tar"] == read["bundle.tar.000"]
    assert len(read["bundle.tar"][1]) == 4


def _segment_bytes(segments: List[Segment]) -> bytes:
    out = b""
    for file, offset, length in segments:
        assert isinstance(file, Path)
        with open(file, "rb") as handle:
            handle.seek(offset)
            out += handle.read(length)
    return out


def test_members_of_parts_are_taken_in_place_across_part_boundaries(
    tmp_path: Path, key: KeyFiles
) -> None:
    """With a pool, members are copied from the parts in place, even one that spans two parts,
    and every part is still hashed whole."""
    folder = _split_bundle(tmp_path, key)
    whole = make_bundle(tmp_path / "whole", signer=key).files[0]
    with BundleSource(str(whole)) as source:
        manifest = parse(source.read_header().manifest)
        expected = {entry.path: stream.read() for entry, stream in source.payload(manifest)}
    taken, spanning = {}, 0
    with BundleSource(str(folder / "bundle.tar.000")) as source, HashPool() as pool:
        manifest = parse(source.read_header().manifest)
        for entry, stream in source.payload(manifest, pool):
            segments = stream.extent()
            assert segments is not None
            spanning += len({file for file, _, _ in segments}) > 1
            taken[entry.path] = _segment_bytes(segments)
        pool.finish()
        part_jobs = [job for job in pool.jobs if isinstance(job, PartJob)]
    assert taken == expected
    assert spanning >= 1
    assert len(part_jobs) == len(_parts(folder)) and all(job.sha256 for job in part_jobs)


def _all_files(folder: Path) -> List[Path]:
    return [Path(d, f) for d, _, files in os.walk(folder) for f in files]


def test_parts_are_never_deleted_by_failing_or_succeeding_runs(
    tmp_path: Path, key: KeyFiles
) -> None:
    folder = _split_bundle(tmp_path, key)
    before = sorted(p.name for p in folder.iterdir())
    root = tmp_path / "root"
    good = run_k3bundle(
        "install",
        str(folder / "bundle.tar.000"),
        "--pubkey",
        str(key.public),
        "--root",
        str(root),
        "--arch",
        "amd64",
        "--no-start",
    )
    assert good.returncode == 0, good.stderr
    assert _verify(folder / "bundle.tar.parts.json", key).returncode == 0
    _flip(folder / "bundle.tar.001", SPLIT // 2)
    assert _verify(folder / "bundle.tar.000", key).returncode == 4
    bad = run_k3bundle(
        "install",
        str(folder / "bundle.tar.000"),
        "--pubkey",
        str(key.public),
        "--root",
        str(tmp_path / "root2"),
        "--arch",
        "amd64",
    )
    assert bad.returncode == 4
    assert sorted(p.name for p in folder.iterdir()) == before


def test_install_streams_parts_without_joining_them_on_disk(tmp_path: Path, key: KeyFiles) -> None:
    folder = _split_bundle(tmp_path, key, BIG_SPLIT)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    done = run_k3bundle(
        "install",
        str(folder / "bundle.tar.000"),
        "--pubkey",
        str(key.public),
        "--root",
        str(tmp_path / "root"),
        "--arch",
        "amd64",
        env={"TMPDIR": str(scratch), "TMP": str(scratch), "TEMP": str(scratch)},
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "root" / "usr/local/bin/k3s").is_file()
    sizes = {str(p): p.lstat().st_size for p in _all_files(tmp_path)}
    assert max(sizes.values()) <= BIG_SPLIT, max(sizes, key=lambda p: sizes[p])
    assert sum(p.stat().st_size for p in _parts(folder)) > BIG_SPLIT


# --- a hostile parts index (issue 9): FormatError (exit 3), never another exception ---------


def _index(folder: Path) -> Dict[str, Any]:
    doc: Dict[str, Any] = json.loads((folder / "bundle.tar.parts.json").read_text())
    return doc


def _part_field(key: str, value: Any) -> Callable[[Dict[str, Any]], Any]:
    def mutate(doc: Dict[str, Any]) -> Any:
        doc["parts"][0][key] = value
        return doc

    return mutate


HOSTILE_INDEXES: Dict[str, Tuple[Callable[[Dict[str, Any]], Any], str]] = {
    "a-list": (lambda doc: [doc], "malformed"),
    "parts-object": (lambda doc: {**doc, "parts": {}}, "'parts'"),
    "no-parts": (lambda doc: {**doc, "parts": []}, "lists 0 parts"),
    "part-not-object": (lambda doc: {**doc, "parts": [1]}, "is not an object"),
    "name-a-path": (_part_field("name", "../bundle.tar.000"), "not 'bundle.tar.000'"),
    "name-absolute": (_part_field("name", "/etc/shadow"), "not 'bundle.tar.000'"),
    "name-out-of-order": (_part_field("name", "bundle.tar.001"), "not 'bundle.tar.000'"),
    "name-int": (_part_field("name", 0), "'name'"),
    "size-string": (_part_field("size", "100000"), "'size'"),
    "size-bool": (_part_field("size", True), "'size'"),
    "size-negative": (_part_field("size", -1), "negative"),
    "size-huge": (_part_field("size", 1 << 62), "maximum"),
    "sha-upper": (_part_field("sha256", "A" * 64), "'sha256'"),
    "sha-list": (_part_field("sha256", []), "'sha256'"),
}


@pytest.mark.parametrize(
    ("mutate", "expected"), HOSTILE_INDEXES.values(), ids=HOSTILE_INDEXES.keys()
)
def test_hostile_parts_index_is_refused_as_malformed(
    tmp_path: Path, key: KeyFiles, mutate: Callable[[Dict[str, Any]], Any], expected: str
) -> None:
    folder = _split_bundle(tmp_path, key)
    index = folder / "bundle.tar.parts.json"
    index.write_text(json.dumps(mutate(_index(folder))))
    with pytest.raises(FormatError) as caught:
        BundleSource(str(folder / "bundle.tar.000"))
    assert expected in caught.value.message and caught.value.exit_code == 3
    result = _verify(folder / "bundle.tar.000", key)
    assert result.returncode == 3 and "Traceback" not in result.stderr


def test_deeply_nested_parts_index_is_refused_without_recursing(
    tmp_path: Path, key: KeyFiles
) -> None:
    folder = _split_bundle(tmp_path, key)
    (folder / "bundle.tar.parts.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(FormatError, match="nests deeper"):
        BundleSource(str(folder / "bundle.tar.000"))


def test_parts_index_over_one_mib_is_refused_before_it_is_read_whole(
    tmp_path: Path, key: KeyFiles
) -> None:
    folder = _split_bundle(tmp_path, key)
    index = folder / "bundle.tar.parts.json"
    with open(index, "r+b") as handle:  # 1 GiB, sparse: reading it whole would take 1 GiB
        handle.truncate(1 << 30)
    with pytest.raises(FormatError, match=f"larger than {MAX_INDEX_BYTES} bytes"):
        BundleSource(str(folder / "bundle.tar.000"))
