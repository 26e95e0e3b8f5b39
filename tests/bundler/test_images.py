"""Extra images: platform selection, pulls from a real registry, and the per-arch OCI archive.

The registry here logs every request, so tests can count blob GETs (a shared layer is fetched
once); a corrupted blob is tested on a registry of its own.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
import zstandard

from k3bundle.bundler.cache import Cache
from k3bundle.bundler.net.fetch import FetchSettings
from k3bundle.bundler.oci.reference import parse_reference
from k3bundle.bundler.oci.registry import Fetched, RegistryClient
from k3bundle.bundler.payloads.images import (
    NAME_ANNOTATION,
    REF_ANNOTATION,
    PulledImage,
    layout_index,
    pull,
    pull_all,
    select_manifest,
    write_archive,
)
from k3bundle.installer.errors import FetchError, IntegrityError
from tests.oci_registry import (
    DOCKER_MANIFEST,
    OCI_MANIFEST,
    ImageLayout,
    LocalRegistry,
    PushedImages,
    corrupt_blob,
    push,
    push_test_images,
    raw_manifest,
    running_registry,
)

_BLOB_GET = re.compile(r'"GET /v2/\S+/blobs/(sha256:[0-9a-f]{64}) HTTP')


class LoggedRegistry(LocalRegistry):
    """A registry of its own (never the shared CI one) that writes an access log."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, reuse=False)

    def _config(self) -> Dict[str, Any]:
        config = super()._config()
        config["log"]["accesslog"] = {"disabled": False}
        return config

    def __enter__(self) -> LoggedRegistry:
        self.start()
        return self

    def mark(self) -> int:
        """The current end of the log, for `blob_gets(since=...)`."""
        log = self.root / "registry.log"
        return log.stat().st_size if log.exists() else 0

    def blob_gets(self, since: int = 0) -> List[str]:
        """Digests of the blob GETs logged after offset `since`, in order."""
        with open(self.root / "registry.log", "rb") as log:
            log.seek(since)
            text = log.read().decode(errors="replace")
        return _BLOB_GET.findall(text)


def platform_digest(host: str, repo_tag: str, arch: str, variant: Optional[str] = None) -> str:
    """The digest of `arch`'s manifest as the registry holds it (skopeo as the oracle)."""
    raw = raw_manifest(host, repo_tag)
    doc = json.loads(raw)
    if "manifests" not in doc:
        return f"sha256:{hashlib.sha256(raw).hexdigest()}"
    for entry in doc["manifests"]:
        platform = entry["platform"]
        if platform["architecture"] == arch and platform.get("variant") == variant:
            return str(entry["digest"])
    raise KeyError(f"{repo_tag} has no {arch}")


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoggedRegistry]:
    """A logging registry for this module."""
    with LoggedRegistry(tmp_path_factory.mktemp("logged-registry")) as running:
        yield running


@pytest.fixture(scope="module")
def images(logged: LoggedRegistry, image_layout: ImageLayout) -> PushedImages:
    """The standard images, pushed to the logging registry."""
    return push_test_images(image_layout, logged.host)


def client_for(host: str, tmp_path: Path) -> RegistryClient:
    """A client that talks plain HTTP to `host`, reads no docker config and never sleeps."""
    settings = FetchSettings(retries=1, backoff=0.01, read_timeout=10.0)
    return RegistryClient(
        settings, [host], docker_config=tmp_path / "no-config.json", sleep=lambda _: None
    )


def pull_one(ref: str, arch: str, tmp_path: Path, cache: Optional[Cache] = None) -> PulledImage:
    """Pull `ref` for `arch` into tmp_path/cache (or `cache`)."""
    parsed = parse_reference(ref)
    return pull(
        client_for(parsed.registry, tmp_path), parsed, arch, cache or Cache(tmp_path / "cache")
    )


# --- select_manifest (pure) ---------------------------------------------------------------


def index_of(*platforms: str) -> Dict[str, Any]:
    """An index whose entries are "os/arch[/variant]", with digests naming the platform."""
    manifests = []
    for text in platforms:
        os_name, arch, *variant = text.split("/")
        platform = {"os": os_name, "architecture": arch}
        if variant:
            platform["variant"] = variant[0]
        manifests.append({"digest": f"sha256:{text}", "platform": platform})
    return {"manifests": manifests}


@pytest.mark.parametrize(
    ("arch", "expected"),
    [("amd64", "linux/amd64"), ("arm64", "linux/arm64/v8"), ("arm", "linux/arm/v7")],
)
def test_select_manifest_picks_the_linux_entry_of_each_k3s_arch(arch: str, expected: str) -> None:
    index = index_of(
        "windows/amd64", "linux/amd64", "linux/arm/v6", "linux/arm/v7", "linux/arm64/v8"
    )
    assert select_manifest(index, arch, "img")["digest"] == f"sha256:{expected}"


def test_select_manifest_prefers_arm_v7_over_v6_whatever_the_order() -> None:
    for order in (("linux/arm/v6", "linux/arm/v7"), ("linux/arm/v7", "linux/arm/v6")):
        assert select_manifest(index_of(*order), "arm", "img")["digest"] == "sha256:linux/arm/v7"


def test_select_manifest_falls_back_to_arm_v6_and_to_arm64_without_variant() -> None:
    assert select_manifest(index_of("linux/arm/v6"), "arm", "i")["digest"] == "sha256:linux/arm/v6"
    assert select_manifest(index_of("linux/arm64"), "arm64", "i")["digest"] == "sha256:linux/arm64"


def test_select_manifest_without_the_platform_names_the_image_and_what_it_has() -> None:
    index = index_of("linux/amd64", "linux/s390x", "windows/arm64")
    with pytest.raises(FetchError) as caught:
        select_manifest(index, "arm64", "docker.io/library/app:1.0")
    message = caught.value.message
    assert "docker.io/library/app:1.0" in message
    assert "linux/arm64" in message
    assert "linux/amd64, linux/s390x, windows/arm64" in message


# --- pull against the registry ------------------------------------------------------------


def test_pull_of_an_oci_index_takes_the_arch_manifest_and_caches_its_blobs(
    images: PushedImages, tmp_path: Path
) -> None:
    pulled = pull_one(images.index, "arm64", tmp_path)
    assert pulled.manifest.digest == platform_digest(images.host, "test/hello:1.0", "arm64")
    assert pulled.index_digest == images.digests["index"]
    assert pulled.platform == {"architecture": "arm64", "os": "linux"}
    assert pulled.manifest.media_type == OCI_MANIFEST
    cache = Cache(tmp_path / "cache")
    for digest, size in pulled.blobs:
        path = cache.lookup(digest.split(":", 1)[1])
        assert path is not None and path.stat().st_size == size
    config = json.loads((tmp_path / "cache/sha256" / pulled.blobs[0][0][7:]).read_bytes())
    assert config["architecture"] == "arm64"


def test_pull_of_a_docker_manifest_list_takes_the_docker_manifest_of_the_arch(
    images: PushedImages, tmp_path: Path
) -> None:
    pulled = pull_one(images.docker_list, "amd64", tmp_path)
    assert pulled.manifest.media_type == DOCKER_MANIFEST
    assert pulled.manifest.digest == platform_digest(images.host, "test/hello-docker:1.0", "amd64")
    assert pulled.index_digest == images.digests["docker_list"]


def test_pull_of_arm_takes_the_v7_entry(images: PushedImages, tmp_path: Path) -> None:
    pulled = pull_one(images.index, "arm", tmp_path)
    assert pulled.platform == {"architecture": "arm", "os": "linux", "variant": "v7"}
    assert pulled.manifest.digest == platform_digest(images.host, "test/hello:1.0", "arm", "v7")


def test_pull_of_a_manifest_without_media_type_uses_the_content_type(
    images: PushedImages, tmp_path: Path
) -> None:
    assert "mediaType" not in json.loads(raw_manifest(images.host, "test/single:1.0"))
    pulled = pull_one(images.single, "amd64", tmp_path)
    assert pulled.manifest.media_type == OCI_MANIFEST
    assert pulled.manifest.digest == images.digests["single"] == pulled.index_digest
    assert pulled.platform == {"os": "linux", "architecture": "amd64"}


@pytest.mark.parametrize("which", ["single", "docker_single"])
def test_pull_of_a_single_platform_image_for_another_arch_is_refused(
    images: PushedImages, tmp_path: Path, which: str
) -> None:
    name = getattr(images, which)
    with pytest.raises(FetchError) as caught:
        pull_one(name, "arm64", tmp_path)
    message = caught.value.message
    assert name in message
    assert "single-platform image for linux/amd64" in message
    assert "not linux/arm64" in message


def test_pull_of_an_index_without_the_arch_names_the_platforms_it_has(
    images: PushedImages, tmp_path: Path
) -> None:
    with pytest.raises(FetchError) as caught:
        pull_one(images.app_a, "arm", tmp_path)
    assert images.app_a in caught.value.message
    assert "linux/amd64, linux/arm64" in caught.value.message


def test_two_images_sharing_a_base_layer_fetch_it_once(
    logged: LoggedRegistry, images: PushedImages, tmp_path: Path
) -> None:
    refs = [parse_reference(images.app_a), parse_reference(images.app_b)]
    since = logged.mark()
    pulled = pull_all(
        lambda: client_for(images.host, tmp_path),
        refs,
        ["amd64", "arm64"],
        Cache(tmp_path / "cache"),
        jobs=4,
    )
    assert [(p.ref, p.arch) for p in pulled] == [
        (refs[0], "amd64"),
        (refs[0], "arm64"),
        (refs[1], "amd64"),
        (refs[1], "arm64"),
    ]
    gets = logged.blob_gets(since)
    wanted = {digest for p in pulled for digest, _ in p.blobs}
    assert sorted(gets) == sorted(wanted)  # every blob exactly once
    a, b = pulled[0], pulled[2]
    shared = {d for d, _ in a.blobs[1:]} & {d for d, _ in b.blobs[1:]}
    assert len(shared) == 1 and gets.count(shared.pop()) == 1


def test_pull_with_a_warm_cache_gets_no_blob(
    logged: LoggedRegistry, images: PushedImages, tmp_path: Path
) -> None:
    cache = Cache(tmp_path / "cache")
    first = pull_one(images.index, "amd64", tmp_path, cache)
    since = logged.mark()
    again = pull_one(images.index, "amd64", tmp_path, cache)
    assert again == first
    assert logged.blob_gets(since) == []


def test_corrupted_blob_is_refused_naming_the_image_and_nothing_is_cached(
    image_layout: ImageLayout, tmp_path: Path
) -> None:
    with running_registry() as broken:
        push(image_layout.layout, image_layout.single.ref, broken.host, "bad/single:1.0")
        layer = image_layout.single.manifest()["layers"][0]["digest"]
        corrupt_blob(broken, layer)
        with pytest.raises(IntegrityError) as caught:
            pull_one(f"{broken.host}/bad/single:1.0", "amd64", tmp_path)
    assert f"{broken.host}/bad/single:1.0" in caught.value.message
    assert layer in caught.value.message
    assert not (tmp_path / "cache/sha256" / layer.split(":", 1)[1]).exists()
    assert list((tmp_path / "cache/partial").iterdir()) == []


# --- write_archive -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pulled(
    images: PushedImages, tmp_path_factory: pytest.TempPathFactory
) -> Tuple[Cache, List[PulledImage]]:
    """hello (OCI index), hello-docker, app-a and app-b for amd64, in one cache."""
    folder = tmp_path_factory.mktemp("pulled")
    refs = [images.index, images.docker_list, images.app_a, images.app_b]
    cache = Cache(folder / "cache")
    client = client_for(images.host, folder)
    return cache, [pull(client, parse_reference(ref), "amd64", cache) for ref in refs]


def members(path: Path) -> Dict[str, bytes]:
    """{name: bytes} of a plain or zstd tar, checking that no name repeats."""
    data = path.read_bytes()
    if path.name.endswith(".zst"):
        data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    found: Dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for info in tar.getmembers():
            assert info.name not in found, f"{info.name} twice"
            assert (info.uid, info.gid, info.mtime) == (0, 0, 0)
            handle = tar.extractfile(info)
            found[info.name] = handle.read() if handle else b""
    return found


def test_archive_stores_a_shared_blob_once_and_every_blob_verified(
    pulled: Tuple[Cache, List[PulledImage]], tmp_path: Path
) -> None:
    cache, found = pulled
    tar = members(write_archive(tmp_path / "images.tar", found, cache, compress=False))
    blobs = {n.rsplit("/", 1)[1]: d for n, d in tar.items() if n.startswith("blobs/sha256/")}
    expected = {p.manifest.digest for p in found} | {d for p in found for d, _ in p.blobs}
    assert {f"sha256:{name}" for name in blobs} == expected
    for name, data in blobs.items():
        assert hashlib.sha256(data).hexdigest() == name
    app_a, app_b = found[2], found[3]
    shared = {d for d, _ in app_a.blobs[1:]} & {d for d, _ in app_b.blobs[1:]}
    assert len(shared) == 1
    shared_hex = shared.pop().split(":", 1)[1]
    assert [n for n in tar if n.endswith(shared_hex)] == [f"blobs/sha256/{shared_hex}"]
    assert json.loads(tar["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}


def test_archive_index_names_each_image_fully_with_its_registry_manifest_digest(
    images: PushedImages, pulled: Tuple[Cache, List[PulledImage]], tmp_path: Path
) -> None:
    cache, found = pulled
    tar = members(write_archive(tmp_path / "images.tar", found, cache, compress=False))
    index = json.loads(tar["index.json"])
    entries = {e["annotations"][NAME_ANNOTATION]: e for e in index["manifests"]}
    repos = {
        images.index: "test/hello:1.0",
        images.docker_list: "test/hello-docker:1.0",
        images.app_a: "test/app-a:1.0",
        images.app_b: "test/app-b:1.0",
    }
    assert sorted(entries) == sorted(repos)
    for name, repo_tag in repos.items():
        entry = entries[name]
        assert entry["annotations"][REF_ANNOTATION] == "1.0"
        assert entry["digest"] == platform_digest(images.host, repo_tag, "amd64")
        assert entry["platform"] == {"architecture": "amd64", "os": "linux"}
        manifest = tar[f"blobs/sha256/{entry['digest'].split(':', 1)[1]}"]
        assert len(manifest) == entry["size"]
    assert entries[images.docker_list]["mediaType"] == DOCKER_MANIFEST
    assert entries[images.index]["mediaType"] == OCI_MANIFEST


@pytest.mark.parametrize("compress", [False, True])
def test_archive_bytes_are_reproducible(
    pulled: Tuple[Cache, List[PulledImage]], tmp_path: Path, compress: bool
) -> None:
    cache, found = pulled
    suffix = ".tar.zst" if compress else ".tar"
    one = write_archive(tmp_path / f"one{suffix}", found, cache, compress)
    two = write_archive(tmp_path / f"two{suffix}", found, cache, compress)
    assert hashlib.sha256(one.read_bytes()).digest() == hashlib.sha256(two.read_bytes()).digest()
    assert not list(tmp_path.glob(".*.tmp"))


def test_zstd_archive_window_fits_the_k3s_decoder(
    pulled: Tuple[Cache, List[PulledImage]], tmp_path: Path
) -> None:
    cache, found = pulled
    path = write_archive(tmp_path / "images.tar.zst", found, cache, compress=True)
    params = zstandard.get_frame_parameters(path.read_bytes()[:18])
    assert 0 < params.window_size <= 1 << 25
    assert members(path).keys() >= {"oci-layout", "index.json"}


DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("r.example/app:1.0", [("r.example/app:1.0", "1.0")]),
        (
            f"r.example/app:1.0@{DIGEST}",
            [("r.example/app:1.0", "1.0"), (f"r.example/app@{DIGEST}", DIGEST)],
        ),
        (f"r.example/app@{DIGEST}", [(f"r.example/app@{DIGEST}", DIGEST)]),
    ],
    ids=["tag", "tag-and-digest", "digest"],
)
def test_archive_index_names_images_so_containerd_keeps_a_name_pods_resolve(
    text: str, names: List[Tuple[str, str]]
) -> None:
    manifest = Fetched(OCI_MANIFEST, "sha256:" + "cd" * 32, b"{}")
    platform = {"architecture": "amd64", "os": "linux"}
    image = PulledImage(parse_reference(text), "amd64", manifest, platform, (), DIGEST)
    index = json.loads(layout_index([image]))
    annotations = [entry["annotations"] for entry in index["manifests"]]
    assert [(a[NAME_ANNOTATION], a[REF_ANNOTATION]) for a in annotations] == names
    assert {entry["digest"] for entry in index["manifests"]} == {manifest.digest}
