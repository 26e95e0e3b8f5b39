"""RegistryClient against real local registries: open, htpasswd (Basic) and bearer tokens."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple

import pytest

from k3bundle.bundler.cache import Cache
from k3bundle.bundler.net.fetch import FetchSettings, NotFoundError
from k3bundle.bundler.oci.credentials import docker_config_auths, parse_registry_auth
from k3bundle.bundler.oci.reference import Reference, parse_reference
from k3bundle.bundler.oci.registry import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    RegistryClient,
)
from k3bundle.installer.errors import FetchError, IntegrityError, UsageError
from tests.oci_registry import (
    PASSWORD,
    USER,
    Credentials,
    ImageLayout,
    LocalRegistry,
    PushedImages,
    corrupt_blob,
    free_port,
    push,
    push_test_images,
    raw_manifest,
    running_registry,
    write_docker_config,
)

FAST = 5.0  # seconds: oras' own retries would take 131 s
NO_CONFIG = Path("/nonexistent/k3b/config.json")


def client_for(
    reg: LocalRegistry, credentials: Optional[Credentials] = None, **options: Any
) -> RegistryClient:
    """A client that may use plain HTTP to `reg`, with no docker config unless told."""
    auth = {reg.host: credentials} if credentials else {}
    options.setdefault("docker_config", NO_CONFIG)
    return RegistryClient(insecure=[reg.host], auth=auth, sleep=lambda s: None, **options)


def first_platform(client: RegistryClient, ref: Reference) -> Any:
    """The parsed manifest of `ref`, or of its first platform when it is an index."""
    parsed = json.loads(client.get_manifest(ref).data)
    if "manifests" in parsed:
        parsed = json.loads(client.get_manifest(ref, parsed["manifests"][0]["digest"]).data)
    return parsed


@pytest.fixture(scope="module")
def basic_images(basic_registry: LocalRegistry, image_layout: ImageLayout) -> PushedImages:
    return push_test_images(image_layout, basic_registry.host, basic_registry.credentials)


@pytest.fixture(scope="module")
def token_images(token_registry: LocalRegistry, image_layout: ImageLayout) -> PushedImages:
    return push_test_images(image_layout, token_registry.host, token_registry.credentials)


@pytest.mark.parametrize(
    ("kind", "media_type"),
    [
        ("index", OCI_INDEX),
        ("docker_list", DOCKER_LIST),
        ("single", OCI_MANIFEST),
        ("docker_single", DOCKER_MANIFEST),
    ],
)
def test_each_manifest_kind_comes_back_as_the_exact_bytes_with_its_digest(
    registry: LocalRegistry, pushed_images: PushedImages, kind: str, media_type: str
) -> None:
    name = getattr(pushed_images, kind)
    fetched = client_for(registry).get_manifest(parse_reference(name))
    assert fetched.data == raw_manifest(registry.host, name.split("/", 1)[1])
    assert fetched.digest == pushed_images.digests[kind]
    assert fetched.digest == "sha256:" + hashlib.sha256(fetched.data).hexdigest()
    assert fetched.media_type == media_type


def test_a_manifest_without_media_type_takes_the_content_type(
    registry: LocalRegistry, pushed_images: PushedImages
) -> None:
    fetched = client_for(registry).get_manifest(parse_reference(pushed_images.single))
    assert "mediaType" not in json.loads(fetched.data)
    assert fetched.media_type == OCI_MANIFEST


def test_a_platform_manifest_fetched_by_digest_is_verified_and_exact(
    registry: LocalRegistry, pushed_images: PushedImages
) -> None:
    client, ref = client_for(registry), parse_reference(pushed_images.index)
    index = json.loads(client.get_manifest(ref).data)
    arm = next(m for m in index["manifests"] if m["platform"].get("variant") == "v7")
    fetched = client.get_manifest(ref, arm["digest"])
    assert (fetched.digest, len(fetched.data)) == (arm["digest"], arm["size"])
    assert json.loads(fetched.data)["layers"]


def test_a_missing_tag_is_a_not_found_error_naming_the_image(
    registry: LocalRegistry, pushed_images: PushedImages
) -> None:
    ref = parse_reference(pushed_images.index.replace(":1.0", ":9.9"))
    with pytest.raises(NotFoundError) as raised:
        client_for(registry).get_manifest(ref)
    assert "no tag 9.9" in raised.value.message
    assert ref.name in raised.value.message


def test_blobs_land_verified_in_the_cache_and_a_second_fetch_transfers_nothing(
    registry: LocalRegistry, pushed_images: PushedImages, tmp_path: Path
) -> None:
    client, cache = client_for(registry), Cache(tmp_path / "cache")
    ref = parse_reference(pushed_images.docker_list)
    manifest = first_platform(client, ref)
    for blob in [manifest["config"], *manifest["layers"]]:
        path = client.fetch_blob(ref, blob["digest"], blob["size"], cache)
        assert "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest() == blob["digest"]
    transferred = client.transferred
    blob = manifest["layers"][0]
    assert client.fetch_blob(ref, blob["digest"], blob["size"], cache) == cache.blob(
        blob["digest"][7:]
    )
    assert client.transferred == transferred > 0


def test_a_blob_corrupted_in_the_registry_is_refused_and_not_cached(
    image_layout: ImageLayout, tmp_path: Path
) -> None:
    with running_registry() as reg:
        push(image_layout.layout, image_layout.single.ref, reg.host, "x/single:1")
        client, ref = client_for(reg), parse_reference(f"{reg.host}/x/single:1")
        layer = json.loads(client.get_manifest(ref).data)["layers"][0]
        corrupt_blob(reg, layer["digest"])
        cache = Cache(tmp_path / "cache")
        with pytest.raises(IntegrityError) as raised:
            client.fetch_blob(ref, layer["digest"], layer["size"], cache)
    assert ref.name in raised.value.message
    assert layer["digest"] in raised.value.message
    assert list((tmp_path / "cache/sha256").iterdir()) == []
    assert list((tmp_path / "cache/partial").iterdir()) == []


def test_a_manifest_changed_in_the_registry_is_refused_by_tag_and_by_digest(
    image_layout: ImageLayout,
) -> None:
    with running_registry() as reg:
        digest = push(image_layout.layout, image_layout.single.ref, reg.host, "x/single:1")
        stored = reg.blob_path(digest)
        stored.write_bytes(stored.read_bytes().replace(b"{", b"{ ", 1))  # still valid JSON
        client = client_for(reg)
        for name in (f"{reg.host}/x/single:1", f"{reg.host}/x/single@{digest}"):
            with pytest.raises(IntegrityError) as raised:
                client.get_manifest(parse_reference(name))
            assert name in raised.value.message and f"expected {digest}" in raised.value.message


def test_basic_auth_registry_pulls_with_credentials(
    basic_registry: LocalRegistry, basic_images: PushedImages, tmp_path: Path
) -> None:
    client = client_for(basic_registry, (USER, PASSWORD))
    ref = parse_reference(basic_images.index)
    assert client.get_manifest(ref).digest == basic_images.digests["index"]
    layer = first_platform(client, ref)["layers"][0]
    assert client.fetch_blob(ref, layer["digest"], layer["size"], Cache(tmp_path)).is_file()


@pytest.mark.parametrize("credentials", [None, (USER, "wrong")], ids=["none", "wrong"])
@pytest.mark.parametrize("kind", ["basic", "token"])
def test_auth_registry_refuses_quickly_naming_the_image_and_the_flag(
    basic_registry: LocalRegistry,
    basic_images: PushedImages,
    token_registry: LocalRegistry,
    token_images: PushedImages,
    kind: str,
    credentials: Optional[Credentials],
) -> None:
    reg, images = (
        (basic_registry, basic_images) if kind == "basic" else (token_registry, token_images)
    )
    ref = parse_reference(images.index)
    started = time.monotonic()
    with pytest.raises(FetchError) as raised:
        RegistryClient(
            insecure=[reg.host],
            auth={reg.host: credentials} if credentials else {},
            docker_config=NO_CONFIG,
        ).get_manifest(ref)
    assert time.monotonic() - started < FAST
    assert ref.name in raised.value.message
    assert f"--registry-auth {reg.host}=" in raised.value.hint


def test_one_bearer_client_pulls_from_two_repositories_with_a_token_per_scope(
    token_registry: LocalRegistry, token_images: PushedImages, tmp_path: Path
) -> None:
    assert token_registry.token_server is not None
    client, cache = client_for(token_registry, (USER, PASSWORD)), Cache(tmp_path)
    issued = len(token_registry.token_server.issued)
    for name in (token_images.app_a, token_images.app_b, token_images.app_a):
        ref = parse_reference(name)
        layer = first_platform(client, ref)["layers"][-1]
        assert client.fetch_blob(ref, layer["digest"], layer["size"], cache).is_file()
    scopes = [s for _, scoped in token_registry.token_server.issued[issued:] for s in scoped]
    repo_a, repo_b = (
        parse_reference(n).repository for n in (token_images.app_a, token_images.app_b)
    )
    # One token per repository, kept and reused when the client comes back to app-a.
    assert scopes == [f"repository:{repo_a}:pull", f"repository:{repo_b}:pull"]


def test_credentials_come_from_the_docker_config_in_home(
    basic_registry: LocalRegistry, basic_images: PushedImages, docker_home: Path
) -> None:
    helpers = {"credsStore": "k3b-no-such-helper", "credHelpers": {"ghcr.io": "k3b-nope"}}
    write_docker_config(docker_home, {f"http://{basic_registry.host}": (USER, PASSWORD)}, helpers)
    client = RegistryClient(insecure=[basic_registry.host])
    fetched = client.get_manifest(parse_reference(basic_images.single))
    assert fetched.digest == basic_images.digests["single"]


def test_registry_auth_wins_over_the_docker_config(
    basic_registry: LocalRegistry, basic_images: PushedImages, docker_home: Path
) -> None:
    write_docker_config(docker_home, {basic_registry.host: (USER, "stale")})
    client = RegistryClient(
        insecure=[basic_registry.host], auth={basic_registry.host: (USER, PASSWORD)}
    )
    assert client.get_manifest(parse_reference(basic_images.single)).data


def test_docker_config_auths_read_hub_keys_and_skip_what_they_cannot_use(tmp_path: Path) -> None:
    path = write_docker_config(tmp_path, {"https://index.docker.io/v1/": ("me", "pw:with:colons")})
    config = json.loads(path.read_text())
    config["auths"].update(
        {"ghcr.io": {}, "quay.io": {"auth": "%%%"}, "x.io": {"auth": "bm9jb2xvbg=="}}
    )
    path.write_text(json.dumps({**config, "credsStore": "desktop"}))
    assert docker_config_auths(path) == {"docker.io": ("me", "pw:with:colons")}
    assert docker_config_auths(tmp_path / "missing.json") == {}
    path.write_text("{not json")
    with pytest.raises(UsageError):
        docker_config_auths(path)


def test_parse_registry_auth() -> None:
    assert parse_registry_auth(["ghcr.io=me:a:b", "https://Index.Docker.IO/v1/=u:p"]) == {
        "ghcr.io": ("me", "a:b"),
        "docker.io": ("u", "p"),
    }
    with pytest.raises(UsageError) as raised:
        parse_registry_auth(["ghcr.io=me-secret"])
    assert "me-secret" not in raised.value.diagnostics()  # never echo a secret


def test_connection_refused_fails_after_bounded_retries_quickly() -> None:
    host = f"127.0.0.1:{free_port()}"
    sleeps: List[float] = []
    client = RegistryClient(
        FetchSettings(retries=3), insecure=[host], docker_config=NO_CONFIG, sleep=sleeps.append
    )
    ref = parse_reference(f"{host}/x/y:1")
    started = time.monotonic()
    with pytest.raises(FetchError) as raised:
        client.get_manifest(ref)
    assert time.monotonic() - started < FAST
    assert sleeps == [0.5, 1.0, 2.0]
    assert f"giving up on {ref.name} after 4 attempts" in raised.value.message


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def test_a_server_that_never_answers_times_out(silent_server: str) -> None:
    settings = FetchSettings(connect_timeout=1, read_timeout=0.3, retries=1)
    client = RegistryClient(
        settings, insecure=[silent_server], docker_config=NO_CONFIG, sleep=lambda s: None
    )
    started = time.monotonic()
    with pytest.raises(FetchError, match=r"after 2 attempts.*Timeout"):
        client.get_manifest(parse_reference(f"{silent_server}/x/y:1"))
    assert time.monotonic() - started < FAST


@pytest.fixture
def unavailable_server() -> Iterator[Tuple[str, List[str]]]:
    """An HTTP server that answers 503 to everything: (host, paths requested)."""
    hits: List[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{httpd.server_address[1]}", hits
    httpd.shutdown()
    httpd.server_close()


def test_5xx_is_retried_a_bounded_number_of_times(
    unavailable_server: Tuple[str, List[str]],
) -> None:
    host, hits = unavailable_server
    client = RegistryClient(
        FetchSettings(retries=2), insecure=[host], docker_config=NO_CONFIG, sleep=lambda s: None
    )
    with pytest.raises(FetchError, match="after 3 attempts: HTTP 503"):
        client.get_manifest(parse_reference(f"{host}/x/y:1"))
    assert hits == ["/v2/"] * 3


def test_a_host_not_listed_as_insecure_is_tried_over_https_and_fails_clearly(
    registry: LocalRegistry, pushed_images: PushedImages
) -> None:
    ref = parse_reference(pushed_images.single)
    client = RegistryClient(docker_config=NO_CONFIG, sleep=lambda s: None)
    started = time.monotonic()
    with pytest.raises(FetchError) as raised:
        client.get_manifest(ref)
    assert time.monotonic() - started < FAST
    assert "TLS" in raised.value.message and ref.name in raised.value.message
    assert f"--insecure-registry {registry.host}" in raised.value.hint
