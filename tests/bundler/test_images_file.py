"""Image list files: `--images-file` (also K3BUNDLE_IMAGES_FILE) and the spec's `imagesFile`, in
the format of k3s's k3s-images.txt; bad lines are refused naming FILE:LINE before any download."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml

from k3bundle.bundler.payloads.image_list import read_images_file
from k3bundle.bundler.spec import load_spec
from k3bundle.installer.errors import UsageError
from k3bundle.installer.format.verify import inspect_bundle
from tests.bundler.conftest import VERSION, bundle_path
from tests.bundler.test_build_extras import build, images, logged  # noqa: F401 (fixtures)
from tests.oci_registry import PushedImages
from tests.release_server import ReleaseServer

# What k3s publishes as k3s-images.txt, with the comments and blank lines a site adds.
K3S_STYLE = """\
# images for the site
docker.io/rancher/klipper-helm:v0.9.3-build20241008

docker.io/rancher/mirrored-coredns-coredns:1.11.3   # DNS
\tdocker.io/rancher/local-path-provisioner:v0.0.30\t
   # indented comment
docker.io/rancher/mirrored-pause:3.6\r
"""


def test_reads_one_reference_a_line_skipping_blank_lines_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "k3s-images.txt"
    path.write_bytes(b"\xef\xbb\xbf" + K3S_STYLE.encode())  # a BOM, as Windows editors write
    assert read_images_file(path) == [
        "docker.io/rancher/klipper-helm:v0.9.3-build20241008",
        "docker.io/rancher/mirrored-coredns-coredns:1.11.3",
        "docker.io/rancher/local-path-provisioner:v0.0.30",
        "docker.io/rancher/mirrored-pause:3.6",
    ]


def test_an_empty_or_comment_only_file_lists_nothing(tmp_path: Path) -> None:
    path = tmp_path / "none.txt"
    path.write_text("\n# nothing yet\n\n")
    assert read_images_file(path) == []


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("nginx:1.27 redis:7", "one image reference a line"),
        ("nginx#1.27", "bad repository name"),  # '#' starts a comment only after whitespace
        ("Registry.Example.com/UPPER/app:1", "bad repository name"),
        ("nginx:", "bad tag"),
    ],
)
def test_a_bad_line_is_refused_naming_file_line_and_text(
    tmp_path: Path, line: str, why: str
) -> None:
    path = tmp_path / "list.txt"
    path.write_text(f"# site images\nnginx:1.27\n{line}\n")
    with pytest.raises(UsageError) as raised:
        read_images_file(path)
    assert raised.value.message.startswith(f"{path}:3: {line!r}: ")
    assert why in raised.value.message
    assert "one image reference a line" in (raised.value.hint or "")


def test_unreadable_binary_and_huge_files_are_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"cannot read the images file .*missing\.txt"):
        read_images_file(tmp_path / "missing.txt")
    (tmp_path / "binary.txt").write_bytes(b"nginx:1.27\n\xff\xfe\n")
    with pytest.raises(UsageError, match="is not UTF-8 text"):
        read_images_file(tmp_path / "binary.txt")
    (tmp_path / "huge.txt").write_bytes(b"#" * (4 * 1024 * 1024 + 1))
    with pytest.raises(UsageError, match="larger than 4 MiB"):
        read_images_file(tmp_path / "huge.txt")


def _spec(tmp_path: Path, **fields: Any) -> Path:
    doc: Dict[str, Any] = {"apiVersion": "k3bundle/v1", "kind": "Bundle", "k3s": {}}
    doc.update(fields)
    path = tmp_path / "spec" / "bundle.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    return path


def test_spec_images_file_is_relative_to_the_spec_and_may_be_a_list(tmp_path: Path) -> None:
    one = load_spec(_spec(tmp_path, imagesFile="lists/site.txt"))
    assert one.images_files == ((tmp_path / "spec" / "lists" / "site.txt").resolve(),)
    two = load_spec(_spec(tmp_path, imagesFile=["a.txt", "../b.txt"]))
    assert two.images_files == (
        (tmp_path / "spec" / "a.txt").resolve(),
        (tmp_path / "b.txt").resolve(),
    )


def test_spec_images_file_of_the_wrong_type_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as raised:
        load_spec(_spec(tmp_path, imagesFile=42))
    assert "imagesFile" in raised.value.message and "(line" in raised.value.message


def _names(dist: Path) -> List[str]:
    return sorted(item["name"] for item in inspect_bundle(str(bundle_path(dist)))["images"])


def test_files_flags_and_spec_images_combine_without_duplicates(
    release_server: ReleaseServer,
    images: PushedImages,  # noqa: F811
    tmp_path: Path,
) -> None:
    (tmp_path / "spec" / "lists").mkdir(parents=True)
    (tmp_path / "spec" / "lists" / "site.txt").write_text(
        f"# from the spec's imagesFile\n{images.index}\n{images.app_a}  # app a\n"
    )
    extra = tmp_path / "extra.txt"
    extra.write_text(f"{images.app_a}\n\n{images.app_b}\n")  # app_a again: listed once
    spec = _spec(
        tmp_path,
        k3s={"version": VERSION, "arches": ["amd64"]},
        images=[images.index],
        imagesFile="lists/site.txt",
    )
    (tmp_path / "home").mkdir()
    code, output = build(
        release_server, tmp_path / "home", tmp_path / "cache", tmp_path / "dist",
        "-f", str(spec), "--images-file", str(extra), "--image", images.docker_list,
        "--insecure-registry", images.host,
    )  # fmt: skip
    assert code == 0, output
    expected = [images.index, images.app_a, images.app_b, images.docker_list]
    assert _names(tmp_path / "dist") == sorted(expected)


def test_k3bundle_images_file_in_the_environment_works_like_the_flag(
    release_server: ReleaseServer,
    images: PushedImages,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    one, two = tmp_path / "one.txt", tmp_path / "two.txt"
    one.write_text(f"{images.app_b}\n")
    two.write_text(f"{images.app_a}\n")
    monkeypatch.setenv("K3BUNDLE_IMAGES_FILE", f"{one}{os.pathsep}{two}")  # as PATH lists files
    (tmp_path / "home").mkdir()
    code, output = build(
        release_server, tmp_path / "home", tmp_path / "cache", tmp_path / "dist",
        "--version", VERSION, "--arch", "amd64", "--insecure-registry", images.host,
    )  # fmt: skip
    assert code == 0, output
    assert _names(tmp_path / "dist") == sorted([images.app_a, images.app_b])


def test_a_bad_line_stops_the_build_before_anything_is_fetched_or_written(
    release_server: ReleaseServer, tmp_path: Path
) -> None:
    listed = tmp_path / "list.txt"
    listed.write_text("nginx:1.27\n\nnot an image\n")
    release_server.reset_hits()
    (tmp_path / "home").mkdir()
    code, output = build(
        release_server, tmp_path / "home", tmp_path / "cache", tmp_path / "dist",
        "--version", VERSION, "--arch", "amd64", "--images-file", str(listed),
    )  # fmt: skip
    assert code == 2, output
    assert f"Error: {listed}:3: 'not an image': one image reference a line" in output
    assert "Traceback" not in output
    assert not (tmp_path / "dist").exists() and not (tmp_path / "cache").exists()
    assert not release_server.hits
