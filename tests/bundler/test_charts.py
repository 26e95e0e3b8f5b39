"""Helm charts: flags and spec items, names k3s accepts, classic and OCI fetches, HelmCharts.

Charts are real .tgz files built here; a classic repository is served with http.server on
127.0.0.1, and OCI charts are pushed to the local registry laid out as `helm push` does.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple
from urllib.parse import urljoin

import pytest
import requests
import yaml

from k3bundle.bundler.cache import Cache
from k3bundle.bundler.net.fetch import Fetcher, FetchSettings
from k3bundle.bundler.oci.registry import RegistryClient
from k3bundle.bundler.payloads.charts import (
    CHART_LAYER,
    ChartSpec,
    FetchedChart,
    chart_from_spec,
    check_unique,
    fetch_chart,
    helmchart_manifest,
    oci_ref,
    oci_reference,
    parse_chart_flag,
)
from k3bundle.installer.errors import FetchError, IntegrityError, UsageError
from tests.oci_registry import (
    OCI_MANIFEST,
    LocalRegistry,
    put_manifest,
)


def chart_tgz(name: str, version: str, marker: str = "") -> bytes:
    """A tiny real chart (Chart.yaml, values.yaml, one template) as Helm packs it, reproducibly."""
    files = {
        "Chart.yaml": f"apiVersion: v2\nname: {name}\nversion: {version}\ntype: application\n",
        "values.yaml": f"greeting: hello\nmarker: {marker!r}\n",
        "templates/configmap.yaml": (
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}\n"
            "data:\n  greeting: {{ .Values.greeting | quote }}\n"
        ),
    }
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, tarfile.open(
        fileobj=gz, mode="w", format=tarfile.PAX_FORMAT
    ) as tar:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{name}/{path}")
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log on the test output."""


@pytest.fixture(scope="module")
def web_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[Path, str]]:
    """A folder served on 127.0.0.1 for the module: (folder, base URL)."""
    root = tmp_path_factory.mktemp("web")
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class Repo:
    """A classic chart repository in its own folder of the served root."""

    def __init__(self, folder: Path, url: str) -> None:
        self.folder, self.url = folder, url
        self.entries: Dict[str, List[Dict[str, Any]]] = {}

    def add(self, name: str, version: str, url: str = "", **fields: Any) -> bytes:
        """Write NAME-VERSION.tgz under charts/ and list it (relative URL unless one is given)."""
        data = chart_tgz(name, version, marker=f"{name}-{version}")
        (self.folder / "charts").mkdir(exist_ok=True)
        (self.folder / "charts" / f"{name}-{version}.tgz").write_bytes(data)
        entry: Dict[str, Any] = {
            "apiVersion": "v2",
            "name": name,
            "version": version,
            "digest": hashlib.sha256(data).hexdigest(),
            "urls": [url or f"charts/{name}-{version}.tgz"],
        }
        entry.update(fields)
        self.entries.setdefault(name, []).insert(0, entry)
        index = {"apiVersion": "v1", "entries": self.entries}
        (self.folder / "index.yaml").write_text(yaml.safe_dump(index), "utf-8")
        return data


@pytest.fixture
def repo(web_root: Tuple[Path, str], request: pytest.FixtureRequest) -> Repo:
    """An empty repository for this test."""
    root, base = web_root
    folder = root / request.node.name.replace("[", "_").replace("]", "_")
    folder.mkdir()
    return Repo(folder, f"{base}/{folder.name}")


class Tools:
    """What fetch_chart needs, on a fresh cache."""

    def __init__(self, cache_dir: Path, offline: bool = False, insecure: str = "") -> None:
        self.cache_dir = cache_dir
        self.cache = Cache(cache_dir)
        settings = FetchSettings(retries=1, backoff=0.01, read_timeout=5.0, offline=offline)
        self.fetcher = Fetcher(self.cache, settings, sleep=lambda _: None)
        self.registry = RegistryClient(
            settings,
            insecure=[insecure] if insecure else [],
            docker_config=cache_dir / "no-docker-config.json",
            sleep=lambda _: None,
        )

    def fetch(self, spec: ChartSpec) -> FetchedChart:
        """fetch_chart with these tools."""
        return fetch_chart(spec, self.fetcher, self.registry, self.cache)

    def cached(self) -> List[str]:
        """Names in sha256/ and partial/."""
        return sorted(p.name for d in ("sha256", "partial") for p in (self.cache_dir / d).iterdir())


@pytest.fixture
def tools(tmp_path: Path) -> Tools:
    """Fetch tools on tmp_path/cache."""
    return Tools(tmp_path / "cache")


# ---- flags, spec items, names -----------------------------------------------------------------


def test_chart_flag_splits_https_repository_name_and_version() -> None:
    spec = parse_chart_flag("https://charts.example.com/stable/nginx:1.2.3")
    assert (spec.repo, spec.name, spec.version) == (
        "https://charts.example.com/stable",
        "nginx",
        "1.2.3",
    )
    assert spec.namespace == "default" and spec.values == {} and spec.values_file is None
    assert spec.file_name == "nginx-1.2.3.tgz"


def test_chart_flag_keeps_registry_port_and_build_metadata() -> None:
    spec = parse_chart_flag("oci://127.0.0.1:5000/charts/mychart:0.1.0+up1")
    assert (spec.repo, spec.name, spec.version) == (
        "oci://127.0.0.1:5000/charts",
        "mychart",
        "0.1.0+up1",
    )
    assert oci_reference(spec) == "127.0.0.1:5000/charts/mychart:0.1.0_up1"


@pytest.mark.parametrize(
    ("flag", "registry", "endpoint", "repository"),
    [
        ("oci://registry/charts/web:1.0.0", "registry", "registry", "charts/web"),
        ("oci://localhost/web:1.0.0", "localhost", "localhost", "web"),
        (
            "oci://registry-1.docker.io/org/web:1.0.0",
            "docker.io",
            "registry-1.docker.io",
            "org/web",
        ),
        ("oci://Ghcr.io/org/sub/web:1.0.0", "ghcr.io", "ghcr.io", "org/sub/web"),
    ],
)
def test_oci_repository_host_is_always_the_registry(
    flag: str, registry: str, endpoint: str, repository: str
) -> None:
    ref = oci_ref(parse_chart_flag(flag))
    assert (ref.registry, ref.endpoint, ref.repository, ref.tag) == (
        registry,
        endpoint,
        repository,
        "1.0.0",
    )


@pytest.mark.parametrize(
    "flag",
    ["https://charts.example.com/nginx", "oci://host:5000", "charts.example.com/nginx:1.0", "x:1"],
)
def test_chart_flag_without_repo_name_or_version_is_refused(flag: str) -> None:
    with pytest.raises(UsageError, match=r"REPO/NAME:VERSION|must start with") as caught:
        parse_chart_flag(flag)
    assert "--chart" in caught.value.hint


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("My_Chart", "use lowercase"),
        ("-nginx", "use lowercase"),
        ("nginx-", "use lowercase"),
        ("n" * 54, "54 characters"),
        ("nginx\n", "use lowercase"),
        ("traefik", "k3s deploys its own HelmChart"),
    ],
)
def test_chart_names_k3s_cannot_deploy_are_refused_at_build_time(name: str, why: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_chart_flag(f"oci://registry.example.com/charts/{name}:1.0.0")
    assert f"chart {name!r}" in caught.value.message and why in caught.value.message


@pytest.mark.parametrize(
    ("item", "why"),
    [
        ({"namespace": "Team_A"}, "namespace 'Team_A'"),
        ({"version": "../1.0"}, "not a chart version"),
        ({"version": "1.0\n"}, "not a chart version"),
        ({"repo": "ftp://example.com/charts"}, "must start with oci://"),
    ],
)
def test_spec_items_with_bad_namespace_version_or_repo_are_refused(
    item: Dict[str, str], why: str, tmp_path: Path
) -> None:
    base = {"repo": "https://charts.example.com", "name": "web", "version": "1.0.0"}
    with pytest.raises(UsageError, match="chart 'web'") as caught:
        chart_from_spec({**base, **item}, tmp_path)
    assert why in caught.value.message


def test_inline_values_are_merged_over_the_values_file_next_to_the_spec(tmp_path: Path) -> None:
    (tmp_path / "values").mkdir()
    (tmp_path / "values" / "web.yaml").write_text(
        "replicas: 1\nimage: {tag: '1.0', pullPolicy: IfNotPresent}\nlabels: [a]\n", "utf-8"
    )
    item = {
        "repo": "https://charts.example.com",
        "name": "web",
        "version": "1.0.0",
        "namespace": "web",
        "valuesFile": "values/web.yaml",
        "values": {"image": {"tag": "2.0"}, "labels": ["b"]},
    }
    spec = chart_from_spec(item, tmp_path)
    assert spec.values_file == (tmp_path / "values" / "web.yaml").resolve()
    doc = yaml.safe_load(helmchart_manifest(spec, spec.file_name))
    assert yaml.safe_load(doc["spec"]["valuesContent"]) == {
        "replicas": 1,
        "image": {"tag": "2.0", "pullPolicy": "IfNotPresent"},
        "labels": ["b"],
    }


def test_two_charts_of_one_name_are_refused() -> None:
    one = parse_chart_flag("https://a.example.com/web:1.0.0")
    check_unique([one, parse_chart_flag("https://a.example.com/api:1.0.0")])
    with pytest.raises(UsageError, match="chart 'web' is listed twice"):
        check_unique([one, parse_chart_flag("oci://b.example.com/charts/web:2.0.0")])


@pytest.mark.parametrize(
    ("content", "why"), [(None, "cannot read"), ("[1, 2]", "YAML mapping"), ("a: [", "not valid")]
)
def test_missing_or_non_mapping_values_file_is_refused(
    content: Any, why: str, tmp_path: Path
) -> None:
    if content is not None:
        (tmp_path / "v.yaml").write_text(content, "utf-8")
    item = {"repo": "https://c.example.com", "name": "web", "version": "1", "valuesFile": "v.yaml"}
    with pytest.raises(UsageError, match="chart 'web'") as caught:
        chart_from_spec(item, tmp_path)
    assert why in caught.value.message


# ---- classic repositories ---------------------------------------------------------------------


def test_classic_chart_with_relative_url_is_fetched_and_verified(repo: Repo, tools: Tools) -> None:
    data = repo.add("web", "1.2.3")
    repo.add("web", "1.3.0")
    fetched = tools.fetch(parse_chart_flag(f"{repo.url}/web:1.2.3"))
    assert fetched.path.read_bytes() == data
    assert fetched.sha256 == hashlib.sha256(data).hexdigest() and fetched.size == len(data)
    assert fetched.source == {
        "url": f"{repo.url}/charts/web-1.2.3.tgz",
        "index": f"{repo.url}/index.yaml",
        "checksum": fetched.sha256,
    }


def test_classic_chart_with_absolute_url_elsewhere_is_fetched(
    repo: Repo, tools: Tools, web_root: Tuple[Path, str]
) -> None:
    elsewhere = f"{web_root[1]}/{repo.folder.name}/charts/api-0.1.0.tgz"
    data = repo.add("api", "0.1.0", url=elsewhere)
    # Helm writes the bare hex digest; a "sha256:" prefix (any case) is accepted too.
    repo.entries["api"][0]["digest"] = "sha256:" + hashlib.sha256(data).hexdigest().upper()
    repo.add("other", "1.0.0")  # rewrites index.yaml with the prefixed digest
    fetched = tools.fetch(parse_chart_flag(f"{repo.url}/api:0.1.0"))
    assert fetched.path.read_bytes() == data and fetched.source["url"] == elsewhere


def test_missing_version_names_the_versions_the_repository_has(repo: Repo, tools: Tools) -> None:
    repo.add("web", "1.2.3")
    repo.add("web", "1.3.0")
    with pytest.raises(UsageError, match=r"no version '9\.9\.9'") as caught:
        tools.fetch(parse_chart_flag(f"{repo.url}/web:9.9.9"))
    assert caught.value.hint == "Versions there: 1.3.0, 1.2.3."


def test_missing_chart_names_the_charts_the_repository_has(repo: Repo, tools: Tools) -> None:
    repo.add("web", "1.2.3")
    repo.add("api", "1.0.0")
    with pytest.raises(UsageError, match="chart 'db' is not in") as caught:
        tools.fetch(parse_chart_flag(f"{repo.url}/db:1.0.0"))
    assert caught.value.hint == "Charts there: api, web."


def test_digest_mismatch_is_refused_and_nothing_is_cached(repo: Repo, tools: Tools) -> None:
    repo.add("web", "1.2.3")
    (repo.folder / "charts" / "web-1.2.3.tgz").write_bytes(chart_tgz("web", "1.2.3", "tampered"))
    with pytest.raises(IntegrityError, match="checksum mismatch"):
        tools.fetch(parse_chart_flag(f"{repo.url}/web:1.2.3"))
    assert tools.cached() == []


def test_index_entry_without_digest_is_refused_before_downloading(repo: Repo, tools: Tools) -> None:
    repo.add("web", "1.2.3", digest=None)
    with pytest.raises(IntegrityError, match=r"web 1\.2\.3 .* has no sha256 digest"):
        tools.fetch(parse_chart_flag(f"{repo.url}/web:1.2.3"))
    assert tools.cached() == []


def test_offline_build_uses_what_a_connected_build_resolved(
    repo: Repo, tools: Tools, tmp_path: Path
) -> None:
    data = repo.add("web", "1.2.3")
    spec = parse_chart_flag(f"{repo.url}/web:1.2.3")
    tools.fetch(spec)
    (repo.folder / "index.yaml").unlink()
    offline = Tools(tools.cache_dir, offline=True)
    assert offline.fetch(spec).path.read_bytes() == data
    with pytest.raises(FetchError, match="--offline"):
        Tools(tmp_path / "empty", offline=True).fetch(spec)


# ---- HelmChart manifests ----------------------------------------------------------------------


def test_helmchart_manifest_points_k3s_at_the_static_chart() -> None:
    spec = ChartSpec(
        "oci://r.example.com/charts",
        "web",
        "1.2.3+up1",
        namespace="web",
        values={"z": 1, "a": {"text": "line one\nline two\n"}, "ü": "ö"},
    )
    raw = helmchart_manifest(spec, spec.file_name)
    assert yaml.safe_load(raw) == {
        "apiVersion": "helm.cattle.io/v1",
        "kind": "HelmChart",
        "metadata": {"name": "web", "namespace": "kube-system"},
        "spec": {
            "chart": "https://%{KUBERNETES_API}%/static/charts/web-1.2.3+up1.tgz",
            "targetNamespace": "web",
            "createNamespace": True,
            "version": "1.2.3+up1",
            "valuesContent": "a:\n  text: |\n    line one\n    line two\nz: 1\nü: ö\n",
        },
    }
    assert spec.manifest_name == "k3bundle-web.yaml"


def test_helmchart_manifest_bytes_are_deterministic_and_omit_empty_values() -> None:
    one = ChartSpec("https://c.example.com", "web", "1.0.0", values={"b": 2, "a": 1})
    two = ChartSpec("https://c.example.com", "web", "1.0.0", values={"a": 1, "b": 2})
    assert helmchart_manifest(one, "web-1.0.0.tgz") == helmchart_manifest(two, "web-1.0.0.tgz")
    bare = yaml.safe_load(helmchart_manifest(ChartSpec("https://c", "web", "1.0.0"), "w.tgz"))
    assert "valuesContent" not in bare["spec"]


# ---- OCI registries ---------------------------------------------------------------------------


CHART_CONFIG = "application/vnd.cncf.helm.config.v1+json"


@pytest.fixture(scope="module")
def shared_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """An open registry for this module (the CI one when K3B_TEST_REGISTRY is set)."""
    with LocalRegistry(tmp_path_factory.mktemp("chart-registry")) as running:
        yield running


@pytest.fixture
def registry(
    shared_registry: LocalRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> LocalRegistry:
    """The registry, with HOME in tmp_path so no ~/.docker/config.json is read or written."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    return shared_registry


def push_blob(
    host: str, repository: str, data: bytes, credentials: Optional[Tuple[str, str]] = None
) -> Dict[str, Any]:
    """Upload a blob monolithically (POST, then PUT with the digest); return its descriptor.
    `credentials`: HTTP Basic, for a registry behind htpasswd."""
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    url = f"http://{host}/v2/{repository}/blobs/uploads/"
    started = requests.post(url, auth=credentials, timeout=10)
    started.raise_for_status()
    location = urljoin(f"http://{host}/", started.headers["Location"])
    separator = "&" if "?" in location else "?"
    headers = {"Content-Type": "application/octet-stream"}
    target = f"{location}{separator}digest={digest}"
    done = requests.put(target, data, headers=headers, auth=credentials, timeout=10)
    done.raise_for_status()
    return {"digest": digest, "size": len(data)}


def push_chart(
    host: str,
    name: str,
    version: str,
    layer_type: str = CHART_LAYER,
    media_type: bool = False,
    credentials: Optional[Tuple[str, str]] = None,
) -> bytes:
    """Push a chart laid out as `helm push` does (no mediaType field); return the .tgz bytes."""
    data = chart_tgz(name, version, marker="oci")
    repository = f"charts/{name}"
    config = json.dumps({"apiVersion": "v2", "name": name, "version": version}).encode()
    manifest: Dict[str, Any] = {
        "schemaVersion": 2,
        "config": {"mediaType": CHART_CONFIG, **push_blob(host, repository, config, credentials)},
        "layers": [{"mediaType": layer_type, **push_blob(host, repository, data, credentials)}],
        "annotations": {"org.opencontainers.image.title": name},
    }
    if media_type:
        manifest["mediaType"] = OCI_MANIFEST
    raw = json.dumps(manifest).encode()
    put_manifest(host, repository, version.replace("+", "_"), raw, OCI_MANIFEST, credentials)
    return data


def test_oci_chart_pushed_as_helm_does_is_fetched_by_its_chart_layer(
    registry: LocalRegistry, tmp_path: Path
) -> None:
    tools = Tools(tmp_path / "cache", insecure=registry.host)
    data = push_chart(registry.host, "web", "1.2.3+up1")
    fetched = tools.fetch(parse_chart_flag(f"oci://{registry.host}/charts/web:1.2.3+up1"))
    assert fetched.path.read_bytes() == data
    digest = hashlib.sha256(data).hexdigest()
    assert (fetched.sha256, fetched.size) == (digest, len(data))
    assert fetched.source["url"] == f"oci://{registry.host}/charts/web:1.2.3_up1"
    assert fetched.source["checksum"] == f"sha256:{digest}"
    assert fetched.source["manifest"].startswith("sha256:")
    offline = Tools(tools.cache_dir, offline=True, insecure=registry.host)
    assert offline.fetch(parse_chart_flag(f"oci://{registry.host}/charts/web:1.2.3+up1")) == fetched


def test_oci_manifest_with_media_type_is_read_too(registry: LocalRegistry, tmp_path: Path) -> None:
    tools = Tools(tmp_path / "cache", insecure=registry.host)
    data = push_chart(registry.host, "typed", "0.1.0", media_type=True)
    fetched = tools.fetch(parse_chart_flag(f"oci://{registry.host}/charts/typed:0.1.0"))
    assert fetched.path.read_bytes() == data


def test_oci_artifact_without_chart_layer_is_refused(
    registry: LocalRegistry, tmp_path: Path
) -> None:
    tools = Tools(tmp_path / "cache", insecure=registry.host)
    push_chart(registry.host, "notachart", "1.0.0", "application/vnd.oci.image.layer.v1.tar+gzip")
    with pytest.raises(FetchError, match="is not a Helm chart") as caught:
        tools.fetch(parse_chart_flag(f"oci://{registry.host}/charts/notachart:1.0.0"))
    assert CHART_LAYER in caught.value.message
    assert tools.cached() == []
