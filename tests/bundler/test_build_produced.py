"""The build pipeline's shape: producers return one result type, run in order, and an image
archive this build wrote is hashed exactly once (while it was written), never again."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path
from typing import Any, List

import pytest

from k3bundle.bundler import build as build_module
from k3bundle.bundler import writer
from k3bundle.bundler.payloads.context import BuildContext
from k3bundle.bundler.payloads.produced import Produced, combined
from k3bundle.installer.format import KIND_IMAGES, KIND_K3S_BINARY, Entry
from tests.bundler.conftest import bundle_path
from tests.bundler.test_build_extras import build, images, logged  # noqa: F401 (fixtures)
from tests.oci_registry import PushedImages
from tests.release_server import ReleaseServer

ARCHES = ("amd64", "arm64")


def _manifest_and_members(bundle: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    with tarfile.open(bundle) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
    return json.loads(members["k3bundle.json"]), members


@pytest.mark.parametrize("images_format", ["zst", "gz", "tar"])
def test_image_archive_is_hashed_while_written_and_not_read_again_by_the_writer(
    release_server: ReleaseServer,
    images: PushedImages,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    images_format: str,
) -> None:
    rehashed: List[str] = []
    add = writer._InputChecks.add

    def recording(self: writer._InputChecks, entry: Entry, local: Path, fd: int) -> None:
        rehashed.append(entry.path)
        add(self, entry, local, fd)

    monkeypatch.setattr(writer._InputChecks, "add", recording)
    (tmp_path / "home").mkdir()
    code, output = build(
        release_server, tmp_path / "home", tmp_path / "cache", tmp_path / "dist",
        "--version", "v1.31.4+k3s1", "--arch", "amd64", "--arch", "arm64",
        "--images-format", images_format, "--image", images.index, "--image", images.app_a,
        "--insecure-registry", images.host,
    )  # fmt: skip
    assert code == 0, output
    manifest, members = _manifest_and_members(bundle_path(tmp_path / "dist"))
    archives = [f for f in manifest["files"] if f["kind"] == KIND_IMAGES]
    assert sorted(f["arch"] for f in archives) == list(ARCHES)
    for item in archives:
        data = members[item["path"]]
        assert item["sha256"] == hashlib.sha256(data).hexdigest()  # an independent hash
        assert item["size"] == len(data)
        assert item["path"] not in rehashed  # the writer did not read it a second time
    # the k3s files came from the (cold) cache's fresh downloads: not re-read either
    assert not [p for p in rehashed if p.endswith(("/k3s", "/k3s-arm64"))]


def test_a_warm_rebuild_re_verifies_cached_inputs_but_not_the_archive_it_wrote(
    release_server: ReleaseServer,
    images: PushedImages,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    args = ["--version", "v1.31.4+k3s1", "--arch", "amd64", "--image", images.index]
    args += ["--insecure-registry", images.host]
    (tmp_path / "home").mkdir()
    first = build(release_server, tmp_path / "home", tmp_path / "cache", tmp_path / "one", *args)
    assert first[0] == 0, first[1]
    rehashed: List[str] = []
    add = writer._InputChecks.add

    def recording(self: writer._InputChecks, entry: Entry, local: Path, fd: int) -> None:
        rehashed.append(entry.path)
        add(self, entry, local, fd)

    monkeypatch.setattr(writer._InputChecks, "add", recording)
    code, output = build(
        release_server, tmp_path / "home", tmp_path / "cache", tmp_path / "two", *args
    )
    assert code == 0, output
    # the cached k3s files may have rotted since they were verified: checked again
    assert sorted(rehashed) == ["amd64/k3s", "amd64/k3s-airgap-images-amd64.tar.zst"]
    assert (tmp_path / "one" / "SHA256SUMS").read_bytes() == (
        tmp_path / "two" / "SHA256SUMS"
    ).read_bytes()


def test_a_producer_added_to_the_pipeline_sees_what_earlier_ones_made(
    release_server: ReleaseServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: List[List[str]] = []

    def spy(ctx: BuildContext, earlier: Produced) -> Produced:
        seen.append([e.path for e in earlier.entries])
        assert ctx.version == "v1.31.4+k3s1" and ctx.work.is_dir()
        return Produced()

    monkeypatch.setattr(build_module, "PRODUCERS", (*build_module.PRODUCERS, spy))
    (tmp_path / "home").mkdir()
    code, output = build(
        release_server, tmp_path / "home", tmp_path / "cache", tmp_path / "dist",
        "--version", "v1.31.4+k3s1", "--arch", "amd64",
    )  # fmt: skip
    assert code == 0, output
    assert seen == [["amd64/k3s", "amd64/k3s-airgap-images-amd64.tar.zst"]]


def test_combined_keeps_entry_order_files_summaries_and_fresh_paths(tmp_path: Path) -> None:
    one, two = Produced(), Produced()
    binary = Entry("amd64/k3s", 1, "a" * 64, KIND_K3S_BINARY, 0o755, "amd64")
    archive = Entry("amd64/x.tar", 1, "b" * 64, KIND_IMAGES, 0o644, "amd64")
    one.add(binary, tmp_path / "k3s")
    two.add(archive, tmp_path / "x.tar", fresh=True)
    two.metadata["images"] = [{"name": "x"}]
    both = combined([one, two])
    assert [e.path for e in both.entries] == ["amd64/k3s", "amd64/x.tar"]
    assert both.files == {"amd64/k3s": tmp_path / "k3s", "amd64/x.tar": tmp_path / "x.tar"}
    assert both.fresh == {"amd64/x.tar"} and both.metadata == {"images": [{"name": "x"}]}
