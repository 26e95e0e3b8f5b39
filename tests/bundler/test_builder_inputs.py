"""Hostile builder inputs (issue 9): digests, credentials, redirects, size bounds, malformed JSON.

Every test talks to a real server on 127.0.0.1 (tests/bundler/crafted.py) that answers what an
attacker's registry, token server, mirror or chart repository would, and asserts the one-line
error, exit code 8, and that nothing was written where it must not be.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from k3bundle.bundler.cache import Cache
from k3bundle.bundler.net.fetch import Download, Fetcher, FetchSettings
from k3bundle.bundler.net.limits import MAX_TEXT
from k3bundle.bundler.oci.reference import parse_reference
from k3bundle.bundler.oci.registry import OCI_INDEX, OCI_MANIFEST, RegistryClient
from k3bundle.bundler.payloads.charts import ChartSpec, fetch_chart
from k3bundle.bundler.payloads.images import pull
from k3bundle.installer.errors import FetchError, K3BundleError
from tests.bundler.crafted import Answer, CraftedServer, digest_of, json_answer, self_signed

CONFIG = json.dumps({"os": "linux", "architecture": "amd64", "rootfs": {}}).encode()
LAYER = b"layer bytes " * 100
SETTINGS = FetchSettings(retries=0, connect_timeout=5, read_timeout=5)
USER, PASSWORD = "alice", "pa55word"


def one_line(error: K3BundleError) -> str:
    """The error's message, checked to be one line with exit code 8."""
    assert error.exit_code == 8, error
    assert "\n" not in error.message, error.message
    return error.message


def manifest(config: Any = None, layers: Any = None) -> Dict[str, Any]:
    """An OCI image manifest; by default a well-formed one for CONFIG and LAYER."""
    return {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config or {"digest": digest_of(CONFIG), "size": len(CONFIG)},
        "layers": layers
        if layers is not None
        else [{"digest": digest_of(LAYER), "size": len(LAYER)}],
    }


def serve_image(server: CraftedServer, doc: Any, blobs: bool = True) -> None:
    """/v2/ open, evil/app:1.0 → `doc`, and CONFIG and LAYER as blobs."""
    server.routes["/v2/"] = Answer(200, b"{}")
    server.routes["/v2/evil/app/manifests/1.0"] = json_answer(doc, OCI_MANIFEST)
    if blobs:
        for data in (CONFIG, LAYER):
            server.routes[f"/v2/evil/app/blobs/{digest_of(data)}"] = Answer(200, data)


def client(server: CraftedServer, tmp_path: Path, **options: Any) -> RegistryClient:
    """A client for `server` (plain HTTP unless it is TLS), with no docker config."""
    insecure = [] if server.scheme == "https" else [server.host]
    return RegistryClient(
        SETTINGS,
        insecure=insecure,
        docker_config=tmp_path / "none.json",
        sleep=lambda s: None,
        **options,
    )


def cache_files(cache: Path) -> List[str]:
    """Every file in the cache's content and partial folders."""
    return sorted(p.name for d in ("sha256", "partial") for p in (cache / d).iterdir())


@pytest.fixture
def crafted() -> Iterator[CraftedServer]:
    with CraftedServer() as server:
        yield server


@pytest.fixture
def sentinel(tmp_path: Path) -> Path:
    """A file outside the cache, standing in for the builder's signing key."""
    path = tmp_path / "site.key"
    path.write_bytes(b"-----BEGIN PRIVATE KEY----- secret")
    return path


# --- digests never become paths ---------------------------------------------------------------

TRAVERSAL = "sha256:" + "./" * 25 + "../../site.key"  # from cache/sha256/ to tmp_path/site.key
HOSTILE_DIGESTS = [
    TRAVERSAL,
    "sha256:" + "a" * 64 + "\n",
    "sha256:" + "A" * 64,
    "sha512:" + "a" * 64,
    "sha256:" + "a" * 63,
    42,
]


@pytest.mark.parametrize("digest", HOSTILE_DIGESTS, ids=repr)
@pytest.mark.parametrize("where", ["config", "layer"])
def test_a_descriptor_digest_that_is_not_sha256_hex_is_refused_before_any_file_is_touched(
    crafted: CraftedServer, tmp_path: Path, sentinel: Path, digest: Any, where: str
) -> None:
    assert len(TRAVERSAL) == len("sha256:") + 64  # the length check it used to pass
    bad = {"digest": digest, "size": 10}
    doc = manifest(config=bad) if where == "config" else manifest(layers=[bad])
    serve_image(crafted, doc)
    cache = Cache(tmp_path / "cache")
    with pytest.raises(FetchError) as caught:
        pull(
            client(crafted, tmp_path),
            parse_reference(f"{crafted.host}/evil/app:1.0"),
            "amd64",
            cache,
        )
    assert "is not a sha256 digest" in one_line(caught.value)
    assert sentinel.read_bytes() == b"-----BEGIN PRIVATE KEY----- secret"
    assert not (tmp_path / "site.key.part").exists()
    assert all(len(name) == 64 for name in (p.name for p in (tmp_path / "cache/sha256").iterdir()))
    assert not any("/blobs/" in path for path in crafted.paths())  # no blob was even asked for


def test_an_index_entry_digest_with_dot_segments_is_refused(
    crafted: CraftedServer, tmp_path: Path, sentinel: Path
) -> None:
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"digest": TRAVERSAL, "size": 10, "platform": {"os": "linux", "architecture": "amd64"}}
        ],
    }
    crafted.routes["/v2/"] = Answer(200, b"{}")
    crafted.routes["/v2/evil/app/manifests/1.0"] = json_answer(index, OCI_INDEX)
    with pytest.raises(FetchError) as caught:
        pull(
            client(crafted, tmp_path),
            parse_reference(f"{crafted.host}/evil/app:1.0"),
            "amd64",
            Cache(tmp_path / "c"),
        )
    assert "index entry for amd64" in one_line(caught.value)
    assert crafted.paths() == ["/v2/", "/v2/evil/app/manifests/1.0"]
    assert sentinel.read_bytes().startswith(b"-----BEGIN")


@pytest.mark.parametrize(
    "key", ["../../site.key", "a" * 63, "A" * 64, "a" * 64 + "\n", "a" * 64 + "/x"]
)
def test_the_cache_refuses_any_key_that_is_not_64_lowercase_hex(tmp_path: Path, key: str) -> None:
    cache = Cache(tmp_path / "cache")
    for use in (cache.blob, cache.lookup, cache.partial, cache.claim):
        with pytest.raises(FetchError, match="refusing cache key"):
            use(key)
    with pytest.raises(FetchError, match="refusing cache key"):
        cache.store(key, b"x")


# --- credentials stay with their host -----------------------------------------------------------


@pytest.fixture
def tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A certificate for 127.0.0.1 that requests trusts (REQUESTS_CA_BUNDLE)."""
    pair = self_signed(tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pair[0]))
    return pair


def test_an_https_registry_cannot_send_the_password_to_a_plain_http_realm(
    tmp_path: Path, tls: Any
) -> None:
    with CraftedServer(tls) as registry, CraftedServer() as thief:
        challenge = (
            f'Bearer realm="http://{thief.host}/token",service="x",scope="repository:evil/app:pull"'
        )
        registry.routes["/v2/"] = Answer(401, b"{}", {"Www-Authenticate": challenge})
        registry.routes["/v2/evil/app/manifests/1.0"] = Answer(
            401, b"{}", {"Www-Authenticate": challenge}
        )
        thief.routes["/token"] = json_answer({"token": "t"})
        talker = client(registry, tmp_path, auth={registry.host: (USER, PASSWORD)})
        with pytest.raises(FetchError) as caught:
            talker.get_manifest(parse_reference(f"{registry.host}/evil/app:1.0"))
        assert "is plain HTTP" in one_line(caught.value)
        assert thief.seen == []  # not a single request: no password, no token
        assert all("Authorization" not in seen.headers for seen in registry.seen)


def test_an_https_token_realm_on_another_host_gets_the_credentials_and_the_token_works(
    tmp_path: Path, tls: Any
) -> None:
    basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    with CraftedServer(tls) as registry, CraftedServer(tls) as auth_host:
        challenge = f'Bearer realm="{auth_host.url}/token",service="reg"'

        def gated(headers: Dict[str, str]) -> Answer:
            if headers.get("Authorization") != "Bearer good-token":
                return Answer(401, b"{}", {"Www-Authenticate": challenge})
            return json_answer(manifest(), OCI_MANIFEST)

        registry.routes["/v2/"] = Answer(401, b"{}", {"Www-Authenticate": challenge})
        registry.routes["/v2/evil/app/manifests/1.0"] = gated
        auth_host.routes["/token"] = lambda h: json_answer(
            {"token": "good-token" if h.get("Authorization") == basic else "anonymous"}
        )
        talker = client(registry, tmp_path, auth={registry.host: (USER, PASSWORD)})
        fetched = talker.get_manifest(parse_reference(f"{registry.host}/evil/app:1.0"))
    assert json.loads(fetched.data)["layers"][0]["size"] == len(LAYER)
    assert [s.headers.get("Authorization") for s in auth_host.seen] == [basic]


def test_a_blob_redirected_to_storage_does_not_carry_the_registrys_authorization(
    crafted: CraftedServer, tmp_path: Path
) -> None:
    basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    with CraftedServer() as storage:

        def guarded(answer: Answer) -> Any:
            def route(headers: Dict[str, str]) -> Answer:
                if headers.get("Authorization") != basic:
                    return Answer(401, b"{}", {"Www-Authenticate": 'Basic realm="reg"'})
                return answer

            return route

        crafted.routes["/v2/"] = guarded(Answer(200, b"{}"))
        crafted.routes["/v2/evil/app/manifests/1.0"] = guarded(
            json_answer(manifest(), OCI_MANIFEST)
        )
        for data in (CONFIG, LAYER):
            name = digest_of(data).split(":")[1]
            crafted.routes[f"/v2/evil/app/blobs/{digest_of(data)}"] = guarded(
                Answer(307, b"", {"Location": f"{storage.url}/store/{name}"})
            )
            storage.routes[f"/store/{name}"] = Answer(200, data)
        talker = client(crafted, tmp_path, auth={crafted.host: (USER, PASSWORD)})
        cache = Cache(tmp_path / "cache")
        pulled = pull(talker, parse_reference(f"{crafted.host}/evil/app:1.0"), "amd64", cache)
    assert len(pulled.blobs) == 2 and len(storage.seen) == 2
    assert all("Authorization" not in seen.headers for seen in storage.seen)
    assert {d.split(":")[1] for d, _ in pulled.blobs} <= set(cache_files(tmp_path / "cache"))


# --- redirects --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("file:///etc/passwd", "refused redirect"),
        ("ftp://127.0.0.1/x", "refused redirect"),
        ("/loop", "more than 10 redirects"),
    ],
)
def test_release_downloads_follow_http_redirects_only_and_a_bounded_number(
    crafted: CraftedServer, tmp_path: Path, location: str, expected: str
) -> None:
    crafted.routes["/loop"] = Answer(302, b"", {"Location": location})
    cache = Cache(tmp_path / "cache")
    fetcher = Fetcher(cache, SETTINGS, sleep=lambda s: None)
    url = f"{crafted.url}/loop"
    for attempt in (
        lambda: fetcher.get_text(url),
        lambda: fetcher.fetch(Download(url, "a" * 64, "k3s")),
    ):
        with pytest.raises(FetchError) as caught:
            attempt()
        message = one_line(caught.value)
        assert expected in message and url in message
    assert cache_files(tmp_path / "cache") == []
    assert len(crafted.seen) <= 2 * 11


# --- size bounds --------------------------------------------------------------------------------


def endless() -> Iterator[bytes]:
    """A body that never ends (until the client hangs up)."""
    while True:
        yield b"0" * 65536


def test_a_checksum_file_larger_than_its_bound_is_refused_without_reading_it_all(
    crafted: CraftedServer, tmp_path: Path
) -> None:
    crafted.routes["/sha256sum-amd64.txt"] = Answer(200, endless)
    fetcher = Fetcher(Cache(tmp_path / "cache"), SETTINGS)
    url = f"{crafted.url}/sha256sum-amd64.txt"
    with pytest.raises(FetchError) as caught:
        fetcher.get_text(url)
    assert f"{url} sent more than {MAX_TEXT} bytes" in one_line(caught.value)


def test_an_endless_release_download_stops_at_its_bound_and_leaves_nothing(
    crafted: CraftedServer, tmp_path: Path
) -> None:
    crafted.routes["/k3s"] = Answer(200, endless)
    cache = Cache(tmp_path / "cache")
    url = f"{crafted.url}/k3s"
    with pytest.raises(FetchError) as caught:
        Fetcher(cache, SETTINGS).fetch(Download(url, "a" * 64, "k3s", max_size=1 << 20))
    assert f"{url} sent more than {1 << 20} bytes" in one_line(caught.value)
    assert cache_files(tmp_path / "cache") == []


def test_a_blob_longer_than_its_descriptor_stops_and_is_not_cached(
    crafted: CraftedServer, tmp_path: Path
) -> None:
    serve_image(crafted, manifest())
    crafted.routes[f"/v2/evil/app/blobs/{digest_of(LAYER)}"] = Answer(200, endless)
    cache = Cache(tmp_path / "cache")
    with pytest.raises(FetchError) as caught:
        pull(
            client(crafted, tmp_path),
            parse_reference(f"{crafted.host}/evil/app:1.0"),
            "amd64",
            cache,
        )
    assert f"sent more than {len(LAYER)} bytes" in one_line(caught.value)
    assert digest_of(LAYER).split(":")[1] not in cache_files(tmp_path / "cache")
    assert not [p for p in cache_files(tmp_path / "cache") if p.endswith(".part")]


def test_a_manifest_larger_than_4_mib_is_refused(crafted: CraftedServer, tmp_path: Path) -> None:
    serve_image(crafted, manifest())
    crafted.routes["/v2/evil/app/manifests/1.0"] = Answer(
        200, endless, {"Content-Type": OCI_MANIFEST}
    )
    with pytest.raises(FetchError) as caught:
        client(crafted, tmp_path).get_manifest(parse_reference(f"{crafted.host}/evil/app:1.0"))
    assert f"sent more than {4 << 20} bytes" in one_line(caught.value)


def test_a_yaml_alias_bomb_in_a_chart_index_is_refused_at_once(
    crafted: CraftedServer, tmp_path: Path
) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]" for n in range(1, 10)]
    crafted.routes["/charts/index.yaml"] = Answer(
        200, ("\n".join(lines) + "\nentries: *a9\n").encode()
    )
    cache = Cache(tmp_path / "cache")
    spec = ChartSpec(f"{crafted.url}/charts", "app", "1.0.0")
    started = time.monotonic()
    with pytest.raises(FetchError) as caught:
        fetch_chart(spec, Fetcher(cache, SETTINGS), client(crafted, tmp_path), cache)
    assert time.monotonic() - started < 5
    assert "anchors and aliases are not accepted" in one_line(caught.value)
    assert cache_files(tmp_path / "cache") == []


def test_a_chart_index_pointing_at_a_file_url_is_refused(
    crafted: CraftedServer, tmp_path: Path
) -> None:
    index = {
        "apiVersion": "v1",
        "entries": {
            "app": [{"version": "1.0.0", "digest": "a" * 64, "urls": ["file:///etc/passwd"]}]
        },
    }
    crafted.routes["/charts/index.yaml"] = Answer(200, json.dumps(index).encode())
    cache = Cache(tmp_path / "cache")
    with pytest.raises(FetchError) as caught:
        fetch_chart(
            ChartSpec(f"{crafted.url}/charts", "app", "1.0.0"),
            Fetcher(cache, SETTINGS),
            client(crafted, tmp_path),
            cache,
        )
    assert "'file:///etc/passwd' is not an http(s) URL" in one_line(caught.value)


# --- malformed answers are one-line errors, never tracebacks ----------------------------------

MALFORMED: Dict[str, Any] = {
    "manifest-is-a-list": [manifest()],
    "layers-not-a-list": manifest(layers={"digest": digest_of(LAYER)}),
    "size-is-a-string": manifest(layers=[{"digest": digest_of(LAYER), "size": "12"}]),
    "size-is-negative": manifest(layers=[{"digest": digest_of(LAYER), "size": -1}]),
    "size-is-a-bool": manifest(layers=[{"digest": digest_of(LAYER), "size": True}]),
    "layer-is-a-string": manifest(layers=["sha256:" + "a" * 64]),
    "index-entry-without-digest": {
        "mediaType": OCI_INDEX,
        "manifests": [{"platform": {"os": "linux", "architecture": "amd64"}}],
    },
    "index-manifests-not-a-list": {"mediaType": OCI_INDEX, "manifests": {"a": 1}},
    "deeply-nested": json.loads("[" * 100 + "]" * 100),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_manifest_is_a_one_line_fetch_error(
    crafted: CraftedServer, tmp_path: Path, case: str
) -> None:
    serve_image(crafted, MALFORMED[case])
    with pytest.raises(FetchError) as caught:
        pull(
            client(crafted, tmp_path),
            parse_reference(f"{crafted.host}/evil/app:1.0"),
            "amd64",
            Cache(tmp_path / "c"),
        )
    assert crafted.host in one_line(caught.value) and "evil/app" in caught.value.message


REALM = 'Bearer realm="{realm}"'


@pytest.mark.parametrize(
    ("challenge", "token_answer", "expected"),
    [
        ('Bearer service="x"', None, "named no realm"),
        ('Bearer realm="{realm}"', json_answer({"expires_in": 300}), "without a usable token"),
        ('Bearer realm="{realm}"', json_answer(["token"]), "without a usable token"),
        (REALM, json_answer({"token": "a\r\nX-Evil: 1"}), "without a usable token"),
        ('Bearer realm="{realm}"', Answer(200, b"[" * 1000 + b"]" * 1000), "nests deeper"),
        ('Bearer realm="{realm}"', Answer(200, endless), "sent more than"),
    ],
)
def test_a_broken_bearer_challenge_or_token_answer_is_a_one_line_fetch_error(
    crafted: CraftedServer, tmp_path: Path, challenge: str, token_answer: Any, expected: str
) -> None:
    header = {"Www-Authenticate": challenge.format(realm=f"{crafted.url}/token")}
    crafted.routes["/v2/"] = Answer(401, b"{}", header)
    crafted.routes["/v2/evil/app/manifests/1.0"] = Answer(401, b"{}", header)
    if token_answer is not None:
        crafted.routes["/token"] = token_answer
    with pytest.raises(FetchError) as caught:
        client(crafted, tmp_path).get_manifest(parse_reference(f"{crafted.host}/evil/app:1.0"))
    assert expected in one_line(caught.value)


def test_an_https_registry_cannot_redirect_a_blob_to_plain_http(tmp_path: Path, tls: Any) -> None:
    with CraftedServer(tls) as registry, CraftedServer() as storage:
        serve_image(registry, manifest())
        location = f"{storage.url}/store/layer"
        registry.routes[f"/v2/evil/app/blobs/{digest_of(CONFIG)}"] = Answer(
            307, b"", {"Location": location}
        )
        storage.routes["/store/layer"] = Answer(200, CONFIG)
        cache = Cache(tmp_path / "cache")
        with pytest.raises(FetchError) as caught:
            pull(
                client(registry, tmp_path),
                parse_reference(f"{registry.host}/evil/app:1.0"),
                "amd64",
                cache,
            )
        assert "a redirect from https to plain http" in one_line(caught.value)
        assert storage.seen == []
    assert digest_of(CONFIG).split(":")[1] not in cache_files(tmp_path / "cache")


def test_build_with_a_registry_serving_a_traversal_digest_exits_8_and_packs_nothing(
    crafted: CraftedServer, run_build: Any, tmp_path: Path, sentinel: Path, release_root: Path
) -> None:
    serve_image(crafted, manifest(layers=[{"digest": TRAVERSAL, "size": 34}]))
    code, output = run_build(
        "--version",
        "v1.31.4+k3s1",
        "--arch",
        "amd64",
        "--image",
        f"{crafted.host}/evil/app:1.0",
        "--insecure-registry",
        crafted.host,
    )
    assert code == 8, output
    error = [line for line in output.splitlines() if line.startswith("Error: ")]
    assert len(error) == 1 and "is not a sha256 digest" in error[0]
    assert sentinel.read_bytes() == b"-----BEGIN PRIVATE KEY----- secret"
    assert not (tmp_path / "dist").exists() or list((tmp_path / "dist").iterdir()) == []
    # The release downloads alongside the image; the registry's error cancels it, and what it
    # had fetched waits as a resumable partial of a release file, named by upstream's sha256.
    release = {
        hashlib.sha256(f.read_bytes()).hexdigest()
        for f in (release_root / "v1.31.4+k3s1").iterdir()
    }
    partials = [p for p in (tmp_path / "cache").rglob("*") if p.name.endswith(".part")]
    assert all(p.parent.name == "partial" and p.name[:-5] in release for p in partials)
