"""Helm charts: parse what the user asks for, fetch verified .tgz files, write HelmChart manifests.

A chart comes from a classic repository (index.yaml; its `digest` is the sha256 of the .tgz) or
from an OCI registry (the chart is the layer of type CHART_LAYER). On the host the .tgz lands in
k3s's static folder and a HelmChart manifest points the helm job at it through
%{KUBERNETES_API}%, so nothing leaves the cluster (reference/k3s-facts.md §5).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import urljoin, urlsplit

import yaml

from k3bundle.bundler.cache import Cache
from k3bundle.bundler.net.fetch import Download, Fetcher
from k3bundle.bundler.net.limits import MAX_INDEX_YAML, check_digest, check_size
from k3bundle.bundler.net.netyaml import load_index_yaml
from k3bundle.bundler.oci.reference import Reference, parse_reference
from k3bundle.bundler.oci.registry import RegistryClient
from k3bundle.installer.errors import FetchError, IntegrityError, UsageError
from k3bundle.installer.format import load_json

CHART_LAYER = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
HELMCHART_NAMESPACE = "kube-system"
STATIC_CHARTS = "https://%{KUBERNETES_API}%/static/charts"
# k3s names each file in server/manifests an AddOn after its basename. Prefixing ours keeps them
# clear of k3s's packaged AddOns (coredns, traefik, local-storage, metrics-server, ccm,
# rolebindings, ...) and of the user's own files, without renaming the chart or its release.
MANIFEST_PREFIX = "k3bundle-"
# The HelmChart object itself keeps the chart's name (it is the Helm release name, which the
# chart's templates build resource names from). k3s owns HelmCharts of these names in
# kube-system and rewrites them on every start: a second object of the same name would fight it.
K3S_HELMCHARTS = frozenset({"traefik", "traefik-crd"})
# An RFC 1123 label; Helm itself caps release names at 53 characters.
_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
NAME_MAX = 53
_NAMESPACE_MAX = 63
# The version becomes part of a file name (NAME-VERSION.tgz), so no '/' and no leading '.'.
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+_-]{0,127}")
_SCHEMES = ("oci://", "https://", "http://")
_SCHEME_TEXT = "oci://, https:// or http://"
_INDEX_DIGEST = re.compile(r"(sha256:)?[0-9a-fA-F]{64}")


@dataclass(frozen=True)
class ChartSpec:
    """One chart to bundle: where from, which version, where to install it, with what values."""

    repo: str
    name: str
    version: str
    namespace: str = "default"
    values: Mapping[str, Any] = field(default_factory=dict)
    values_file: Optional[Path] = None

    @property
    def file_name(self) -> str:
        """The .tgz name in the bundle and in k3s's static/charts folder: NAME-VERSION.tgz."""
        return f"{self.name}-{self.version}.tgz"

    @property
    def manifest_name(self) -> str:
        """The HelmChart manifest's name in server/manifests: k3bundle-NAME.yaml."""
        return f"{MANIFEST_PREFIX}{self.name}.yaml"


@dataclass(frozen=True)
class FetchedChart:
    """A chart .tgz verified into the cache, and what it was checked against."""

    spec: ChartSpec
    path: Path
    sha256: str
    size: int
    source: Dict[str, str]


def parse_chart_flag(text: str) -> ChartSpec:
    """`--chart REPO/NAME:VERSION` (REPO is oci://HOST/PATH or an http(s):// repository URL)."""
    hint = "Write --chart REPO/NAME:VERSION, e.g. oci://registry.example.com/charts/nginx:1.2.3."
    if not text.startswith(_SCHEMES):
        raise UsageError(f"--chart {text!r}: the repository must start with {_SCHEME_TEXT}", hint)
    repo, slash, tail = text.rpartition("/")
    name, colon, version = tail.partition(":")
    if not slash or repo.endswith(":/") or not colon or not name or not version:
        raise UsageError(f"--chart {text!r} is not REPO/NAME:VERSION", hint)
    return check_chart(ChartSpec(repo, name, version))


def chart_from_spec(item: Mapping[str, Any], base_dir: Path) -> ChartSpec:
    """A spec file's `charts:` item; valuesFile is relative to the spec file's folder."""
    values_file = item.get("valuesFile")
    spec = ChartSpec(
        repo=str(item["repo"]),
        name=str(item["name"]),
        version=str(item["version"]),
        namespace=str(item.get("namespace") or "default"),
        values=dict(item.get("values") or {}),
        values_file=(base_dir / values_file).resolve() if values_file else None,
    )
    check_chart(spec)
    chart_values(spec)  # a missing or broken values file fails now, before any download
    return spec


def check_chart(spec: ChartSpec) -> ChartSpec:
    """Return `spec` when k3s and Helm can deploy it under its name, else raise UsageError."""
    why = _name_problem(spec.name, NAME_MAX)
    if why:
        raise UsageError(
            f"chart {spec.name!r}: {why}",
            "The name becomes the HelmChart and Helm release name in kube-system, so k3s needs "
            f"a lowercase RFC 1123 name (a-z, 0-9, '-', at most {NAME_MAX} characters).",
        )
    if spec.name in K3S_HELMCHARTS:
        raise UsageError(
            f"chart {spec.name!r}: k3s deploys its own HelmChart {spec.name!r} in kube-system "
            "and rewrites it on every start",
            "To change k3s's packaged chart, put a HelmChartConfig of that name in the server "
            "manifests (k3s merges its values); a second HelmChart of that name cannot work.",
        )
    _check_namespace_and_version(spec)
    if not spec.repo.startswith(_SCHEMES):
        raise UsageError(
            f"chart {spec.name!r}: repository {spec.repo!r} must start with {_SCHEME_TEXT}",
            "Give an OCI registry path (oci://HOST/PATH) or a chart repository URL.",
        )
    return spec


def check_unique(specs: Sequence[ChartSpec]) -> None:
    """Refuse two charts of one name: they would share one HelmChart and one manifest file."""
    seen: Dict[str, ChartSpec] = {}
    for spec in specs:
        other = seen.setdefault(spec.name, spec)
        if other is not spec:
            raise UsageError(
                f"chart {spec.name!r} is listed twice ({other.repo} and {spec.repo})",
                "Keep one: k3s names the HelmChart, and so the Helm release, after the chart.",
            )


def _check_namespace_and_version(spec: ChartSpec) -> None:
    why = _name_problem(spec.namespace, _NAMESPACE_MAX)
    if why:
        raise UsageError(
            f"chart {spec.name!r}: namespace {spec.namespace!r}: {why}",
            "Kubernetes namespaces are lowercase RFC 1123 labels.",
        )
    if not _VERSION.fullmatch(spec.version):
        raise UsageError(
            f"chart {spec.name!r}: {spec.version!r} is not a chart version",
            "Give the exact version from the repository, e.g. 1.2.3 (no ranges, no '/').",
        )


def _name_problem(name: str, limit: int) -> str:
    """Why `name` is not a lowercase RFC 1123 label of at most `limit` characters ('' if it is)."""
    if len(name) > limit:
        return f"{len(name)} characters, more than {limit}"
    if not _NAME.fullmatch(name):
        return "use lowercase letters, digits and '-', starting and ending alphanumeric"
    return ""


def chart_values(spec: ChartSpec) -> Dict[str, Any]:
    """The values to install with: valuesFile, then inline `values` merged over it (inline wins)."""
    loaded: Dict[str, Any] = {}
    if spec.values_file is not None:
        loaded = _load_values_file(spec)
    return _merge(loaded, spec.values)


def _load_values_file(spec: ChartSpec) -> Dict[str, Any]:
    where = f"chart {spec.name!r}: valuesFile {spec.values_file}"
    try:
        doc = yaml.safe_load(Path(str(spec.values_file)).read_text("utf-8"))
    except OSError as exc:
        raise UsageError(f"{where}: cannot read it: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{where} is not valid YAML: {exc}") from None
    if not isinstance(doc, (dict, type(None))):
        raise UsageError(f"{where} must hold a YAML mapping")
    return doc or {}


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> Dict[str, Any]:
    """Deep merge as Helm merges values files: nested mappings merge, anything else replaces."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def fetch_chart(
    spec: ChartSpec, fetcher: Fetcher, registry_client: RegistryClient, cache: Cache
) -> FetchedChart:
    """The chart's .tgz, verified into the cache (classic repository or OCI registry)."""
    if spec.repo.startswith("oci://"):
        return _fetch_oci(spec, registry_client, cache, fetcher.settings.offline)
    return _fetch_classic(spec, fetcher, cache)


def _fetch_classic(spec: ChartSpec, fetcher: Fetcher, cache: Cache) -> FetchedChart:
    index_url = f"{spec.repo.rstrip('/')}/index.yaml"
    key = f"chart {index_url} {spec.name} {spec.version}"
    found = _recall(cache, key) if fetcher.settings.offline else None
    if found is None:
        text = fetcher.get_text(index_url, MAX_INDEX_YAML)
        url, digest = _index_entry(spec, index_url, text)
        found = {"url": url, "index": index_url, "checksum": digest}
        cache.remember(key, json.dumps(found, sort_keys=True))
    check_digest(f"sha256:{found['checksum']}", key)
    path = fetcher.fetch(Download(found["url"], found["checksum"], spec.file_name))
    return FetchedChart(spec, path, found["checksum"], path.stat().st_size, found)


def _recall(cache: Cache, key: str) -> Dict[str, str]:
    """What an earlier, connected build resolved for `key` (--offline has no other source)."""
    text = cache.recall(key)
    if text is None:
        raise FetchError(
            f"--offline: {key} was never resolved with this cache",
            "Build once with network access to fill the cache.",
        )
    found = load_json(text, f"the cache's record of {key}", FetchError, _REFILL)
    if not isinstance(found, dict) or not all(isinstance(v, str) for v in found.values()):
        raise FetchError(f"the cache's record of {key} is damaged", _REFILL)
    return found


_REFILL = "Build once with network access to fill the cache again."


def _index_entry(spec: ChartSpec, index_url: str, text: str) -> Tuple[str, str]:
    """(absolute .tgz URL, sha256) of the chart's version in a repository's index.yaml."""
    index = load_index_yaml(text, index_url)
    entries = index.get("entries") if isinstance(index, dict) else None
    if not isinstance(entries, dict):
        raise FetchError(f"{index_url} has no 'entries'", "Is this a Helm chart repository?")
    versions = entries.get(spec.name)
    if not versions:
        raise UsageError(
            f"chart {spec.name!r} is not in {index_url}",
            f"Charts there: {_listing(sorted(entries))}.",
        )
    entry = _version_entry(spec, index_url, versions)
    digest, urls = entry.get("digest"), entry.get("urls")
    if not isinstance(digest, str) or not _INDEX_DIGEST.fullmatch(digest):
        raise IntegrityError(
            f"chart {spec.name} {spec.version} in {index_url} has no sha256 digest",
            "k3bundle never bundles unverified bytes; regenerate the index with 'helm repo index'.",
        )
    if not isinstance(urls, list) or not urls or not isinstance(urls[0], str):
        raise FetchError(f"chart {spec.name} {spec.version} in {index_url} has no download URL")
    url = urljoin(index_url, urls[0])
    if urlsplit(url).scheme not in ("http", "https"):
        raise FetchError(
            f"chart {spec.name} {spec.version} in {index_url}: {url[:200]!r} is not an http(s) URL",
            "k3bundle downloads charts over http(s) only; check the repository's index.yaml.",
        )
    return url, digest.lower().replace("sha256:", "")


def _version_entry(spec: ChartSpec, index_url: str, versions: Any) -> Mapping[str, Any]:
    listed = [v for v in versions if isinstance(v, dict)] if isinstance(versions, list) else []
    for entry in listed:
        if str(entry.get("version")) == spec.version:
            return entry
    raise UsageError(
        f"chart {spec.name!r} has no version {spec.version!r} in {index_url}",
        f"Versions there: {_listing([str(v.get('version')) for v in listed])}.",
    )


def _listing(items: List[str], limit: int = 20) -> str:
    """A short, readable list: big repositories have thousands of versions."""
    shown = ", ".join(items[:limit]) or "none"
    return f"{shown}, … ({len(items)} in all)" if len(items) > limit else shown


def oci_reference(spec: ChartSpec) -> str:
    """HOST/PATH/NAME:TAG of an oci:// chart; Helm pushes version '+' as '_' in tags."""
    return f"{spec.repo[len('oci://') :].rstrip('/')}/{spec.name}:{spec.version.replace('+', '_')}"


def oci_ref(spec: ChartSpec) -> Reference:
    """The parsed reference of an oci:// chart; its first path component is always the host."""
    text = oci_reference(spec)
    ref = parse_reference(text)
    host = text.split("/", 1)[0].lower()
    if not ("." in host or ":" in host or host == "localhost"):
        # Image references read such a first component as a Docker Hub namespace; Helm's
        # oci://HOST/PATH never does (oci://registry/charts is the host "registry").
        ref = replace(ref, registry=host, repository=ref.repository.split("/", 1)[1])
    return ref


def _fetch_oci(
    spec: ChartSpec, client: RegistryClient, cache: Cache, offline: bool
) -> FetchedChart:
    ref, url = oci_ref(spec), f"oci://{oci_reference(spec)}"
    key = f"chart {url}"
    found = _recall(cache, key) if offline else None
    if found is None:
        found = _chart_layer(client, ref, url)
        cache.remember(key, json.dumps(found, sort_keys=True))
    digest = found["digest"]
    size = check_size(int(found["size"]) if found["size"].isdigit() else -1, key)
    path = client.fetch_blob(ref, digest, size, cache)  # from the cache when it is there
    source = {"url": url, "manifest": found["manifest"], "checksum": digest}
    return FetchedChart(spec, path, digest.split(":", 1)[1], size, source)


def _chart_layer(client: RegistryClient, ref: Reference, url: str) -> Dict[str, str]:
    """{digest, size, manifest} of the chart content layer in the chart's OCI manifest."""
    fetched = client.get_manifest(ref)
    manifest = load_json(fetched.data, f"the manifest of {url}", FetchError)
    layers = manifest.get("layers") if isinstance(manifest, dict) else None
    for layer in layers if isinstance(layers, list) else []:
        if isinstance(layer, dict) and layer.get("mediaType") == CHART_LAYER:
            digest = f"sha256:{check_digest(layer.get('digest'), f'{url}: chart layer')}"
            size = check_size(layer.get("size"), f"{url}: chart layer")
            return {"digest": digest, "size": str(size), "manifest": fetched.digest}
    raise FetchError(
        f"{url} is not a Helm chart: its manifest has no {CHART_LAYER} layer",
        "Check the reference; Helm charts are pushed with 'helm push'.",
    )


class _Dumper(yaml.SafeDumper):
    """SafeDumper that writes multi-line strings as literal blocks, so valuesContent reads well."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def helmchart_manifest(spec: ChartSpec, chart_file_name: str) -> bytes:
    """The HelmChart manifest for server/manifests; the same inputs give the same bytes."""
    body: Dict[str, Any] = {
        "chart": f"{STATIC_CHARTS}/{chart_file_name}",
        "createNamespace": True,
        "targetNamespace": spec.namespace,
        "version": spec.version,
    }
    values = chart_values(spec)
    if values:
        body["valuesContent"] = _dump(values)
    doc = {
        "apiVersion": "helm.cattle.io/v1",
        "kind": "HelmChart",
        "metadata": {"name": spec.name, "namespace": HELMCHART_NAMESPACE},
        "spec": body,
    }
    return _dump(doc).encode("utf-8")


def _dump(value: Any) -> str:
    """YAML with sorted keys and literal multi-line strings: stable bytes that read well."""
    return yaml.dump(value, Dumper=_Dumper, sort_keys=True, allow_unicode=True)
