"""The real containerd proof: bundled image archives import under their full names and digests.

A bundle with extra images (an OCI index, a Docker manifest list and two images sharing a base
layer) is built for amd64 and arm64 (and arm), installed with --root for each architecture, and
every placed k3bundle-images-* archive is imported into a real containerd the way k3s does it
(`ctr -n k8s.io images import --platform linux/ARCH`, zstd piped). containerd must then hold
exactly the bundled names, each with the registry's manifest digest for that platform, also for
architectures other than this machine's. The gz and plain tar variants are imported once too.
"""

from __future__ import annotations

import gzip
import json
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import pytest
from click.testing import CliRunner

from k3bundle.bundler.build_cli import build_command
from k3bundle.installer import cli as installer_cli
from tests import containerd
from tests.containerd import Containerd
from tests.oci_registry import PushedImages, raw_manifest
from tests.release_server import ReleaseServer, generate_release

pytestmark = pytest.mark.skipif(
    not containerd.available(), reason="containerd, ctr and zstd are needed"
)

VERSION = "v1.31.4+k3s1"
IMAGES_DIR = "var/lib/rancher/k3s/agent/images"
_VARIANT = {"arm": "v7"}


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReleaseServer]:
    """A tiny stand-in k3s release (every arch, every image format) on 127.0.0.1."""
    root = tmp_path_factory.mktemp("release")
    generate_release(root, VERSION, ("amd64", "arm64", "arm"), 4096, ("tar.zst", "tar.gz", "tar"))
    with ReleaseServer(root, {"stable": VERSION}) as running:
        yield running


def registry_digest(host: str, name: str, arch: str) -> str:
    """The digest of `arch`'s manifest in the index `name` points at, read with skopeo."""
    repo_tag = name.split("/", 1)[1]
    doc = json.loads(raw_manifest(host, repo_tag))
    for entry in doc["manifests"]:
        platform = entry["platform"]
        if platform["architecture"] == arch and platform.get("variant") == _VARIANT.get(arch):
            return str(entry["digest"])
    raise KeyError(f"{name} has no linux/{arch}")


def build_and_install(
    release: ReleaseServer,
    folder: Path,
    names: Sequence[str],
    arches: Sequence[str],
    images_format: str,
    insecure: str,
) -> Dict[str, Path]:
    """Build a bundle of `names` for `arches`, install it per arch: {arch: placed archive}."""
    args = ["--version", VERSION, "--release-url", release.release_url, "-q"]
    args += ["--cache-dir", str(folder / "cache"), "-o", str(folder / "dist")]
    args += ["--images-format", images_format, "--insecure-registry", insecure]
    args += [f"--arch={arch}" for arch in arches] + [f"--image={name}" for name in names]
    result = CliRunner().invoke(build_command, args)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    bundle = next((folder / "dist").glob("*.tar"))
    placed = {}
    for arch in arches:
        root = folder / f"root-{arch}"
        argv = ["install", str(bundle), "--allow-unsigned", "--root", str(root), "-q"]
        assert installer_cli.main([*argv, "--arch", arch]) == 0
        found = sorted((root / IMAGES_DIR).glob("k3bundle-images-*"))
        assert [p.name for p in found] == [
            f"k3bundle-images-{arch}.{images_format_ext(images_format)}"
        ]
        placed[arch] = found[0]
    return placed


def images_format_ext(images_format: str) -> str:
    """The archive's extension for --images-format."""
    return {"zst": "tar.zst", "gz": "tar.gz", "tar": "tar"}[images_format]


def import_all(
    folder: Path, archive: Path, arch: str, via: Optional[bytes] = None
) -> Dict[str, str]:
    """Import one archive into a fresh containerd for linux/`arch`; what it then holds."""
    with Containerd(folder) as running:
        if via is not None:  # ctr cannot read gzip itself; k3s decompresses before importing
            platform = "linux/arm/v7" if arch == "arm" else f"linux/{arch}"
            running.ctr(
                "images", "import", "--snapshotter", "native", "--platform", platform, "-",
                stdin=via,
            )  # fmt: skip
        else:
            running.import_archive(archive, arch)
        return running.images()


def expected(images: PushedImages, names: Sequence[str], arch: str) -> Dict[str, str]:
    """{full name: the registry's manifest digest for linux/`arch`}."""
    return {name: registry_digest(images.host, name, arch) for name in names}


def short_folder(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A folder with a short path: containerd's socket path must stay under 108 bytes."""
    if len(str(tmp_path_factory.getbasetemp())) <= 60:
        return tmp_path_factory.mktemp(name)
    return Path(tempfile.mkdtemp(prefix=f"k3b-{name}-", dir="/tmp"))


@pytest.fixture(scope="module")
def ctr_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where the containerd instances of this module keep root, state and socket."""
    folder = short_folder(tmp_path_factory, "ctrd")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_zst_archives_import_with_full_names_and_registry_digests_per_arch(
    release: ReleaseServer,
    pushed_images: PushedImages,
    tmp_path: Path,
    ctr_root: Path,
) -> None:
    names = [
        pushed_images.index,
        pushed_images.docker_list,
        pushed_images.app_a,
        pushed_images.app_b,
    ]
    arches: Tuple[str, ...] = ("amd64", "arm64")
    placed = build_and_install(release, tmp_path, names, arches, "zst", pushed_images.host)
    for arch in arches:
        held = import_all(ctr_root / f"zst-{arch}", placed[arch], arch)
        assert held == expected(pushed_images, names, arch)
    assert expected(pushed_images, names, "amd64") != expected(pushed_images, names, "arm64")


@pytest.mark.parametrize(("images_format", "arch"), [("gz", "arm"), ("tar", "arm64")])
def test_gz_and_plain_tar_archives_import_too(
    release: ReleaseServer,
    pushed_images: PushedImages,
    tmp_path: Path,
    ctr_root: Path,
    images_format: str,
    arch: str,
) -> None:
    names: List[str] = [pushed_images.index, pushed_images.docker_list]
    placed = build_and_install(release, tmp_path, names, (arch,), images_format, pushed_images.host)
    archive = placed[arch]
    via = gzip.decompress(archive.read_bytes()) if images_format == "gz" else None
    held = import_all(ctr_root / f"{images_format}-{arch}", archive, arch, via)
    assert held == expected(pushed_images, names, arch)
