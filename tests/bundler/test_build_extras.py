"""`k3bundle build` with extra images and Helm charts, end to end against real local servers.

A logging registry holds the standard test images and an OCI chart, a classic chart repository is
served by http.server, and the stand-in k3s release comes from tests/bundler/conftest.py. HOME is
a tmp folder in every build, so no real ~/.docker/config.json is read.
"""

from __future__ import annotations

import functools
import hashlib
import json
import stat
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Tuple

import pytest
import yaml
from click.testing import CliRunner

from k3bundle.bundler.build_cli import build_command
from k3bundle.bundler.payloads.extras import parse_images
from k3bundle.installer.errors import K3BundleError
from k3bundle.installer.format.verify import inspect_bundle
from tests.bundler.conftest import VERSION, bundle_path
from tests.bundler.test_charts import Repo, push_chart
from tests.bundler.test_images import LoggedRegistry
from tests.helpers import run_k3bundle
from tests.oci_registry import (
    PASSWORD,
    USER,
    ImageLayout,
    LocalRegistry,
    PushedImages,
    push,
    push_test_images,
    raw_manifest,
    running_registry,
    write_docker_config,
)
from tests.release_server import ReleaseServer

DATA = "var/lib/rancher/k3s"
ARCHES = ("amd64", "arm64")


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log on the test output."""


def build(
    server: ReleaseServer, home: Path, cache: Path, dist: Path, *args: str
) -> Tuple[int, str]:
    """`k3bundle build ARGS` in-process with HOME=`home`: (exit code, output + error line)."""
    base = ["--release-url", server.release_url, "--channel-url", server.channel_url, "-q"]
    base += ["--cache-dir", str(cache), "-o", str(dist)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(home))
        patch.delenv("DOCKER_CONFIG", raising=False)
        result = CliRunner().invoke(build_command, [*base, *args])
    if isinstance(result.exception, K3BundleError):  # what bundler.cli.main does at the edge
        return result.exception.exit_code, f"{result.output}Error: {result.exception.diagnostics()}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def registry_sizes(host: str, repo_tag: str, arch: str) -> Tuple[str, int]:
    """(manifest digest, manifest + config + layer bytes) of `arch` as the registry has it."""
    top = json.loads(raw_manifest(host, repo_tag))
    digest = next(m["digest"] for m in top["manifests"] if m["platform"]["architecture"] == arch)
    raw = raw_manifest(host, f"{repo_tag.split(':')[0]}@{digest}")
    doc = json.loads(raw)
    return digest, len(raw) + doc["config"]["size"] + sum(x["size"] for x in doc["layers"])


# --- module fixtures: a registry, a chart repository and one build ---------------------------


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoggedRegistry]:
    """A logging registry for this module."""
    with LoggedRegistry(tmp_path_factory.mktemp("logged-registry")) as running:
        yield running


@pytest.fixture(scope="module")
def images(logged: LoggedRegistry, image_layout: ImageLayout) -> PushedImages:
    """The standard images (and the OCI chart web 1.2.3) on the logging registry."""
    push_chart(logged.host, "web", "1.2.3")
    return push_test_images(image_layout, logged.host)


@pytest.fixture(scope="module")
def chart_repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Repo]:
    """A classic chart repository holding app 0.1.0, served on 127.0.0.1."""
    root = tmp_path_factory.mktemp("charts-web")
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    (root / "stable").mkdir()
    repo = Repo(root / "stable", f"http://127.0.0.1:{server.server_address[1]}/stable")
    repo.add("app", "0.1.0")
    yield repo
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def spec_file(
    images: PushedImages, chart_repo: Repo, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A spec listing four images (index, Docker list, shared-layer pair) and two charts."""
    doc = {
        "apiVersion": "k3bundle/v1",
        "kind": "Bundle",
        "k3s": {"version": VERSION, "arches": list(ARCHES)},
        "images": [images.index, images.docker_list, images.app_a, images.app_b],
        "charts": [
            {
                "repo": chart_repo.url,
                "name": "app",
                "version": "0.1.0",
                "namespace": "apps",
                "values": {"replicaCount": 2},
            },
            {"repo": f"oci://{images.host}/charts", "name": "web", "version": "1.2.3"},
        ],
    }
    path = tmp_path_factory.mktemp("spec") / "bundle.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def built(
    release_server: ReleaseServer,
    images: PushedImages,
    spec_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """The output folder of one build from `spec_file`; its cache is next to it."""
    work = tmp_path_factory.mktemp("built")
    (work / "home").mkdir()
    code, output = build(
        release_server,
        work / "home",
        work / "cache",
        work / "dist",
        "-f",
        str(spec_file),
        "--insecure-registry",
        images.host,
    )
    assert code == 0, output
    return work / "dist"


def by_path(summary: Mapping[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Manifest file entries by path."""
    return {f["path"]: f for f in summary["files"]}


# --- what the bundle holds --------------------------------------------------------------------


def test_manifest_lists_image_archives_per_arch_charts_and_helmchart_manifests(
    built: Path,
) -> None:
    files = by_path(inspect_bundle(str(bundle_path(built))))
    for arch in ARCHES:
        entry = files[f"{arch}/k3bundle-images-{arch}.tar.zst"]
        assert (entry["kind"], entry["arch"], entry["mode"]) == ("images", arch, "0644")
    for name, version in (("app", "0.1.0"), ("web", "1.2.3")):
        chart = files[f"charts/{name}-{version}.tgz"]
        assert (chart["kind"], chart["arch"], chart["mode"]) == ("chart", None, "0644")
        manifest = files[f"manifests/k3bundle-{name}.yaml"]
        assert (manifest["kind"], manifest["arch"], manifest["mode"]) == (
            "helmchart-manifest",
            None,
            "0600",
        )
    assert files["charts/web-1.2.3.tgz"]["source"]["url"].startswith("oci://")


def test_manifest_summarises_images_and_charts(built: Path, images: PushedImages) -> None:
    summary = inspect_bundle(str(bundle_path(built)))
    found = {item["name"]: item for item in summary["images"]}
    repos = {
        images.index: ("index", "test/hello:1.0"),
        images.docker_list: ("docker_list", "test/hello-docker:1.0"),
        images.app_a: ("app_a", "test/app-a:1.0"),
        images.app_b: ("app_b", "test/app-b:1.0"),
    }
    assert sorted(found) == sorted(repos)
    for name, (key, repo_tag) in repos.items():
        item = found[name]
        assert item["digest"] == images.digests[key]
        assert item["arches"] == list(ARCHES)
        expected = sum(registry_sizes(images.host, repo_tag, arch)[1] for arch in ARCHES)
        assert item["size"] == expected
    assert summary["charts"] == [
        {"name": "app", "version": "0.1.0", "namespace": "apps"},
        {"name": "web", "version": "1.2.3", "namespace": "default"},
    ]


def test_inspect_text_and_json_show_images_and_charts(built: Path, images: PushedImages) -> None:
    bundle = str(bundle_path(built))
    text = run_k3bundle("inspect", bundle)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    image_line = next(line for line in lines if line.startswith(f"image:         {images.index}"))
    assert "(amd64,arm64, " in image_line and "KiB" in image_line
    assert f"               digest {images.digests['index']}" in lines
    assert "chart:         app 0.1.0 -> namespace apps" in lines
    assert "chart:         web 1.2.3 -> namespace default" in lines
    as_json = run_k3bundle("inspect", bundle, "--json")
    assert as_json.returncode == 0, as_json.stderr
    doc = json.loads(as_json.stdout)
    first = next(item for item in doc["images"] if item["name"] == images.index)
    assert first["digest"] == images.digests["index"] and first["arches"] == list(ARCHES)
    assert first["size"] > 0
    assert {(c["name"], c["version"], c["namespace"]) for c in doc["charts"]} == {
        ("app", "0.1.0", "apps"),
        ("web", "1.2.3", "default"),
    }


def test_install_places_image_archive_charts_and_helmchart_manifests(
    built: Path, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    done = run_k3bundle(
        "install", str(bundle_path(built)), "--allow-unsigned", "--root", str(root), "-q",
        "--arch", "arm64",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    placed = root / DATA / "agent/images/k3bundle-images-arm64.tar.zst"
    assert stat.S_IMODE(placed.stat().st_mode) == 0o644
    assert not (root / DATA / "agent/images/k3bundle-images-amd64.tar.zst").exists()
    bundled = {f["path"]: f["sha256"] for f in inspect_bundle(str(bundle_path(built)))["files"]}
    assert (
        hashlib.sha256(placed.read_bytes()).hexdigest()
        == bundled["arm64/k3bundle-images-arm64.tar.zst"]
    )
    for name, version in (("app", "0.1.0"), ("web", "1.2.3")):
        chart = root / DATA / f"server/static/charts/{name}-{version}.tgz"
        assert stat.S_IMODE(chart.stat().st_mode) == 0o644
        assert (
            hashlib.sha256(chart.read_bytes()).hexdigest()
            == bundled[f"charts/{name}-{version}.tgz"]
        )
        manifest = root / DATA / f"server/manifests/k3bundle-{name}.yaml"
        assert stat.S_IMODE(manifest.stat().st_mode) == 0o600
    helmchart = yaml.safe_load((root / DATA / "server/manifests/k3bundle-app.yaml").read_text())
    assert helmchart["kind"] == "HelmChart"
    assert helmchart["metadata"] == {"name": "app", "namespace": "kube-system"}
    assert helmchart["spec"]["chart"] == "https://%{KUBERNETES_API}%/static/charts/app-0.1.0.tgz"
    assert helmchart["spec"]["targetNamespace"] == "apps"
    assert yaml.safe_load(helmchart["spec"]["valuesContent"]) == {"replicaCount": 2}


def test_rebuild_pulls_no_blob_and_gives_a_byte_identical_bundle(
    built: Path,
    release_server: ReleaseServer,
    logged: LoggedRegistry,
    images: PushedImages,
    spec_file: Path,
) -> None:
    work = built.parent
    since = logged.mark()
    code, output = build(
        release_server, work / "home", work / "cache", work / "again", "-f", str(spec_file),
        "--insecure-registry", images.host,
    )  # fmt: skip
    assert code == 0, output
    assert logged.blob_gets(since) == []
    first, second = bundle_path(built), bundle_path(work / "again")
    assert first.name == second.name
    assert first.read_bytes() == second.read_bytes()


# --- subprocess, offline ------------------------------------------------------------------------


def test_offline_rebuild_with_the_registry_gone_works_from_the_cache(
    release_server: ReleaseServer, image_layout: ImageLayout, tmp_path: Path
) -> None:
    (tmp_path / "home").mkdir()
    env = {"HOME": str(tmp_path / "home")}
    common = ["--version", VERSION, "--arch", "amd64", "--release-url", release_server.release_url]
    common += ["--cache-dir", str(tmp_path / "cache"), "-q"]
    with running_registry() as gone:
        push(image_layout.layout, image_layout.multi.ref, gone.host, "off/hello:1.0")
        push_chart(gone.host, "offchart", "0.2.0")
        common += ["--image", f"{gone.host}/off/hello:1.0", "--insecure-registry", gone.host]
        common += ["--chart", f"oci://{gone.host}/charts/offchart:0.2.0"]
        online = run_k3bundle("build", *common, "-o", str(tmp_path / "online"), env=env)
        assert online.returncode == 0, online.stderr
    offline = run_k3bundle("build", *common, "--offline", "-o", str(tmp_path / "offline"), env=env)
    assert offline.returncode == 0, offline.stderr
    first, second = bundle_path(tmp_path / "online"), bundle_path(tmp_path / "offline")
    assert first.read_bytes() == second.read_bytes()
    files = by_path(inspect_bundle(str(second)))
    assert files["amd64/k3bundle-images-amd64.tar.zst"]["kind"] == "images"
    assert files["charts/offchart-0.2.0.tgz"]["kind"] == "chart"


def test_offline_build_of_an_image_never_pulled_names_it(
    release_server: ReleaseServer, images: PushedImages, built: Path, tmp_path: Path
) -> None:
    cache = built.parent / "cache"
    code, output = build(
        release_server, tmp_path, cache, tmp_path / "dist", "--version", VERSION,
        "--arch", "amd64", "--offline", "--image", images.single,
        "--insecure-registry", images.host,
    )  # fmt: skip
    assert code == 8, output
    assert f"--offline: the manifest 1.0 of image {images.single} is not in the cache" in output


# --- auth -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def basic_image(basic_registry: LocalRegistry, image_layout: ImageLayout) -> str:
    """The single-platform image, pushed to the Basic-auth registry."""
    repo_tag = "auth/single:1.0"
    push(image_layout.layout, "single", basic_registry.host, repo_tag, credentials=(USER, PASSWORD))
    return f"{basic_registry.host}/{repo_tag}"


@pytest.fixture(scope="module")
def token_image(token_registry: LocalRegistry, image_layout: ImageLayout) -> str:
    """The multi-arch image, pushed to the bearer-token registry."""
    repo_tag = "tok/hello:1.0"
    push(image_layout.layout, "hello", token_registry.host, repo_tag, credentials=(USER, PASSWORD))
    return f"{token_registry.host}/{repo_tag}"


def image_build(
    server: ReleaseServer, tmp_path: Path, image: str, *args: str, arch: str = "amd64"
) -> Tuple[int, str]:
    """Build one image for `arch` into tmp_path with HOME=tmp_path/home."""
    home = tmp_path / "home"
    home.mkdir(parents=True, exist_ok=True)
    host = image.split("/", 1)[0]
    return build(
        server, home, tmp_path / "cache", tmp_path / "dist", "--version", VERSION,
        "--arch", arch, "--image", image, "--insecure-registry", host, *args,
    )  # fmt: skip


def image_names(dist: Path) -> List[str]:
    """The image names in the bundle's summary."""
    return [item["name"] for item in inspect_bundle(str(bundle_path(dist)))["images"]]


def test_basic_auth_registry_with_registry_auth_flag_builds(
    release_server: ReleaseServer, basic_image: str, tmp_path: Path
) -> None:
    host = basic_image.split("/", 1)[0]
    code, output = image_build(
        release_server, tmp_path, basic_image, "--registry-auth", f"{host}={USER}:{PASSWORD}"
    )
    assert code == 0, output
    assert image_names(tmp_path / "dist") == [basic_image]


def test_basic_auth_registry_without_credentials_fails_naming_the_image(
    release_server: ReleaseServer, basic_image: str, tmp_path: Path
) -> None:
    code, output = image_build(release_server, tmp_path, basic_image)
    assert code == 8
    assert f"access denied to {basic_image} without credentials" in output
    assert "--registry-auth" in output
    assert not (tmp_path / "dist").exists() or not list((tmp_path / "dist").glob("*.tar"))


def test_basic_auth_registry_with_wrong_password_fails_naming_the_image(
    release_server: ReleaseServer, basic_image: str, tmp_path: Path
) -> None:
    host = basic_image.split("/", 1)[0]
    code, output = image_build(
        release_server, tmp_path, basic_image, "--registry-auth", f"{host}={USER}:wrong"
    )
    assert code == 8
    assert f"access denied to {basic_image} with the credentials found" in output


@pytest.mark.parametrize("how", ["flag", "docker-config"])
def test_bearer_token_registry_builds_with_credentials(
    release_server: ReleaseServer, token_image: str, tmp_path: Path, how: str
) -> None:
    host = token_image.split("/", 1)[0]
    args: List[str] = []
    if how == "flag":
        args = ["--registry-auth", f"{host}={USER}:{PASSWORD}"]
    else:
        write_docker_config(tmp_path / "home", {host: (USER, PASSWORD)})
    code, output = image_build(release_server, tmp_path, token_image, *args, arch="arm64")
    assert code == 0, output
    summary = inspect_bundle(str(bundle_path(tmp_path / "dist")))
    assert [i["name"] for i in summary["images"]] == [token_image]
    assert "arm64/k3bundle-images-arm64.tar.zst" in by_path(summary)


def test_bearer_token_registry_without_credentials_fails_naming_the_image(
    release_server: ReleaseServer, token_image: str, tmp_path: Path
) -> None:
    code, output = image_build(release_server, tmp_path, token_image)
    assert code == 8
    assert f"access denied to {token_image}" in output


# --- platforms and names ----------------------------------------------------------------------


def test_image_without_a_requested_arch_fails_naming_image_and_platforms(
    release_server: ReleaseServer, images: PushedImages, tmp_path: Path
) -> None:
    code, output = image_build(
        release_server, tmp_path, images.app_a, "--arch", "arm", arch="amd64"
    )
    assert code == 8
    assert f"image {images.app_a} has no linux/arm platform" in output
    assert "linux/amd64, linux/arm64" in output


def test_single_platform_image_for_another_arch_fails_clearly(
    release_server: ReleaseServer, images: PushedImages, tmp_path: Path
) -> None:
    code, output = image_build(release_server, tmp_path, images.single, arch="arm64")
    assert code == 8
    assert f"image {images.single} is a single-platform image for linux/amd64" in output


@pytest.mark.parametrize(
    ("given", "name", "warned"),
    [
        ("nginx", "docker.io/library/nginx:latest", True),
        ("nginx:1.27", "docker.io/library/nginx:1.27", False),
        ("index.docker.io/bitnami/redis:7", "docker.io/bitnami/redis:7", False),
        ("ghcr.io/org/app:1.2", "ghcr.io/org/app:1.2", False),
        ("127.0.0.1:5000/test/hello", "127.0.0.1:5000/test/hello:latest", True),
        ("localhost/app:2", "localhost/app:2", False),
    ],
)
def test_image_names_are_normalised_as_docker_does(given: str, name: str, warned: bool) -> None:
    warnings: List[str] = []
    refs = parse_images([given, given], warnings.append)
    assert [r.name for r in refs] == [name]
    assert bool(warnings) == warned
    if warned:
        assert name in warnings[0] and "pin a tag or digest" in warnings[0]


def test_build_writes_gz_and_plain_tar_image_archives_when_asked(
    release_server: ReleaseServer, images: PushedImages, tmp_path: Path
) -> None:
    for images_format, suffix in (("gz", ".tar.gz"), ("tar", ".tar")):
        out = tmp_path / images_format
        code, output = image_build(
            release_server, out, images.index, "--images-format", images_format
        )
        assert code == 0, output
        files = by_path(inspect_bundle(str(bundle_path(out / "dist"))))
        assert files[f"amd64/k3bundle-images-amd64{suffix}"]["kind"] == "images"


# --- the release and the extras are fetched at the same time --------------------------------

AIRGAP = "k3s-airgap-images-amd64.tar.zst"


def test_the_images_are_pulled_and_written_while_the_release_still_downloads(
    server: ReleaseServer, images: PushedImages, release_root: Path, tmp_path: Path
) -> None:
    server.fault(AIRGAP, "stall", seconds=2.0, after=1000)  # the release's long transfer
    code, output = image_build(server, tmp_path, images.single)
    assert code == 0, output
    cached = {p.name: p.stat().st_mtime for p in (tmp_path / "cache" / "sha256").iterdir()}
    release = {
        hashlib.sha256(f.read_bytes()).hexdigest() for f in (release_root / VERSION).iterdir()
    }
    blobs = [mtime for name, mtime in cached.items() if name not in release]
    assert blobs, "no image blob was cached"
    airgap_done = cached[hashlib.sha256((release_root / VERSION / AIRGAP).read_bytes()).hexdigest()]
    # every blob was in the cache well before the stalled release file's last byte
    assert max(blobs) < airgap_done - 1.0


def test_a_release_file_that_fails_while_images_are_pulled_is_the_error_reported(
    server: ReleaseServer, images: PushedImages, tmp_path: Path
) -> None:
    server.fault(AIRGAP, "corrupt", times=-1)
    code, output = image_build(server, tmp_path, images.single)
    errors = [line for line in output.splitlines() if line.startswith("Error: ")]
    assert code == 4 and len(errors) == 1, output
    assert "checksum mismatch for" in errors[0] and AIRGAP in errors[0]
    assert not (tmp_path / "dist").exists() or not list((tmp_path / "dist").iterdir())


def test_an_image_that_fails_cancels_the_release_download_at_once(
    server: ReleaseServer, basic_image: str, release_root: Path, tmp_path: Path
) -> None:
    server.fault(AIRGAP, "stall", seconds=30.0, after=1000)
    started = time.monotonic()
    code, output = image_build(server, tmp_path, basic_image)  # no credentials: refused
    assert time.monotonic() - started < 15.0  # not held until the stalled transfer ends
    errors = [line for line in output.splitlines() if line.startswith("Error: ")]
    assert code == 8 and len(errors) == 1, output
    assert f"access denied to {basic_image} without credentials" in errors[0]
    assert not (tmp_path / "dist").exists() or not list((tmp_path / "dist").iterdir())
    # what the release had fetched waits as a resumable partial, named by upstream's sha256
    release = {
        hashlib.sha256(f.read_bytes()).hexdigest() for f in (release_root / VERSION).iterdir()
    }
    partials = [p.name for p in (tmp_path / "cache" / "partial").glob("*.part")]
    assert all(name[:-5] in release for name in partials)
