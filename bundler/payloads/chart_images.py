"""Which images a Helm chart deploys, found from the chart package alone (and helm when present).

Three sources, each named in the result: the `artifacthub.io/images` annotation of Chart.yaml
(`annotation`), the usual `image:` shapes of values.yaml merged with the user's values
(`values`), and `helm template` when a helm binary is on PATH (`helm-template`). Subcharts under
charts/ (folders or nested .tgz) count too, with their values scoped under their alias and
`global` shared. What cannot be resolved is reported as an ImageMiss, never dropped.

The package is hostile: one top folder, no absolute or `..` paths, regular files only, and the
bounds helm's own loader uses (5 MiB a file, 100 MiB unpacked); YAML without anchors or aliases.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Set,
    Tuple,
    Union,
)

from k3bundle.bundler.oci.reference import parse_reference
from k3bundle.bundler.payloads.chart_package import (
    Budget,
    Chart,
    ChartArchiveError,
    LoadYaml,
    load_chart,
    read_chart,
    safe_load_yaml,
)
from k3bundle.installer.errors import K3BundleError, UsageError

ANNOTATION, VALUES, HELM_TEMPLATE = "annotation", "values", "helm-template"
SOURCES = (ANNOTATION, VALUES, HELM_TEMPLATE)
IMAGES_ANNOTATION = "artifacthub.io/images"
MAX_RENDERED = 64 << 20  # what `helm template` may print
HELM_TIMEOUT = 120.0
Normalize = Callable[[str], str]
_CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")
_DOC_SPLIT = re.compile(r"^---[ \t]*$", re.MULTILINE)
_SOURCE_LINE = re.compile(r"^# Source: (.+)$", re.MULTILINE)


@dataclass(frozen=True)
class ChartImage:
    """One fully qualified image reference and the sources that found it (in SOURCES order)."""

    reference: str
    sources: Tuple[str, ...]


@dataclass(frozen=True)
class ImageMiss:
    """An image shape that was found but could not be turned into a reference."""

    chart: str
    source: str
    where: str
    reason: str

    @property
    def message(self) -> str:
        """One line: chart X: cannot resolve image at WHERE: WHY."""
        return f"chart {self.chart}: cannot resolve image at {self.where}: {self.reason}"


@dataclass(frozen=True)
class ChartImages:
    """What discovery found in one chart: images (sorted), misses (sorted), skipped sources."""

    chart: str
    version: str
    images: Tuple[ChartImage, ...]
    misses: Tuple[ImageMiss, ...]
    skipped: Tuple[Tuple[str, str], ...]  # (source, why it did not run or gave up)

    @property
    def references(self) -> Tuple[str, ...]:
        """The references alone, sorted."""
        return tuple(image.reference for image in self.images)


def discover_chart_images(
    chart: Union[bytes, Path],
    values: Optional[Mapping[str, Any]] = None,
    *,
    helm: Optional[str] = "helm",
    release: Optional[str] = None,
    namespace: str = "default",
    timeout: float = HELM_TIMEOUT,
    label: Optional[str] = None,
    load_yaml: Optional[LoadYaml] = None,
    normalize: Optional[Normalize] = None,
) -> ChartImages:
    """The images a chart package deploys with `values`; `helm` names the binary, None skips it.

    `label` names the chart in errors (default: the file name); `load_yaml` defaults to
    safe_load_yaml, `normalize` to normalize_reference.
    """
    load = load_yaml or safe_load_yaml
    norm = normalize or normalize_reference
    if values is not None and not isinstance(values, Mapping):
        raise UsageError("chart values must be a mapping (key: value), not a list or a scalar")
    data = read_chart(chart)
    name = label or (chart.name if isinstance(chart, Path) else "the chart package")
    top = load_chart(data, name, "", load, Budget(), 0)
    found = _Found(top.name, norm)
    merged = _deep_merge(top.values, dict(values or {}))
    for scoped in _scopes(top, merged, (), found):
        _annotation_images(scoped, found, load)
        _values_images(scoped, found)
    # helm gets the user's values, not the merged ones: its own merge drops what a null removes
    given = dict(values or {})
    skipped = _helm_images(data, given, helm, release or top.name, namespace, timeout, found, load)
    return found.result(top, skipped)


def normalize_reference(text: str) -> str:
    """`nginx:1.25` -> `docker.io/library/nginx:1.25`, as containerd names it; UsageError if bad."""
    return parse_reference(text).name


# --- values: scoping, merging, image shapes ---------------------------------------------------


@dataclass(frozen=True)
class _Scoped:
    """A chart of the tree with the values it renders with and its path in the top values."""

    chart: Chart
    values: Dict[str, Any]
    scope: str  # "values" or "values.postgresql"


@dataclass
class _Found:
    """Images (reference -> sources) and misses, collected across sources."""

    chart: str
    normalize: Normalize
    images: Dict[str, Set[str]] = field(default_factory=dict)
    misses: List[ImageMiss] = field(default_factory=list)

    def add(self, source: str, where: str, text: str) -> None:
        """Normalise `text` and record it, or record why it is not a reference."""
        if "{{" in text:
            self.miss(source, where, f"{text!r} holds a template expression; only helm renders it")
            return
        try:
            reference = self.normalize(text)
        except K3BundleError as exc:
            self.miss(source, where, exc.message)
            return
        self.images.setdefault(reference, set()).add(source)

    def miss(self, source: str, where: str, reason: str) -> None:
        """Record an image that cannot be resolved."""
        self.misses.append(ImageMiss(self.chart, source, where, reason))

    def result(self, top: Chart, skipped: Tuple[Tuple[str, str], ...]) -> ChartImages:
        """The sorted, de-duplicated result."""
        images = tuple(
            ChartImage(ref, tuple(s for s in SOURCES if s in found))
            for ref, found in sorted(self.images.items())
        )
        misses = tuple(sorted(set(self.misses), key=lambda m: (m.where, m.source, m.reason)))
        return ChartImages(top.name, str(top.meta.get("version", "")), images, misses, skipped)


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> Dict[str, Any]:
    """Helm's coalescing: maps merge key by key, other values replace, null deletes."""
    merged = dict(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _scopes(
    chart: Chart, values: Dict[str, Any], path: Tuple[str, ...], found: _Found
) -> Iterator[_Scoped]:
    yield _Scoped(chart, values, ".".join(("values", *path)))
    shared = _as_map(values.get("global"))
    for key, sub in _dependencies(chart, values, found):
        merged = _deep_merge(sub.values, _as_map(values.get(key)))
        merged["global"] = _deep_merge(_as_map(sub.values.get("global")), shared)
        yield from _scopes(sub, merged, (*path, key), found)


def _dependencies(
    chart: Chart, values: Dict[str, Any], found: _Found
) -> Iterator[Tuple[str, Chart]]:
    """(values key, subchart) for every enabled dependency; unlisted subcharts count too."""
    by_name = {sub.name: sub for sub in chart.subcharts}
    declared = chart.meta.get("dependencies")
    listed = [d for d in declared if isinstance(d, dict)] if isinstance(declared, list) else []
    for dep in listed:
        name = str(dep.get("name", ""))
        if name not in by_name:
            where = f"{chart.rel}Chart.yaml dependencies ({name})"
            found.miss(VALUES, where, f"dependency {name!r} is not packaged in charts/")
        elif _enabled(dep, values):
            yield str(dep.get("alias") or name), by_name[name]
    named = {str(dep.get("name", "")) for dep in listed}
    for sub in chart.subcharts:
        if sub.name not in named:
            yield sub.name, sub


def _enabled(dep: Mapping[str, Any], values: Mapping[str, Any]) -> bool:
    """Helm's rule: the first `condition` path that holds a bool decides, then any true tag."""
    for condition in str(dep.get("condition") or "").split(","):
        node: Any = values
        for key in condition.strip().split("."):
            node = node.get(key) if isinstance(node, Mapping) else None
        if isinstance(node, bool):
            return node
    tags = _as_map(values.get("tags"))
    declared = dep.get("tags")
    names: List[Any] = declared if isinstance(declared, list) else []
    states = [tags[t] for t in names if isinstance(t, str) and isinstance(tags.get(t), bool)]
    return any(states) if states else True


def _as_map(node: Any) -> Dict[str, Any]:
    return dict(node) if isinstance(node, Mapping) else {}


def _values_images(scoped: _Scoped, found: _Found) -> None:
    shared = _as_map(scoped.values.get("global"))
    registry = _text(shared.get("imageRegistry")) or _text(
        _as_map(shared.get("image")).get("registry")
    )
    walked = (
        scoped.values
        if scoped.scope == "values"
        else {k: v for k, v in scoped.values.items() if k != "global"}
    )
    for where, node in _candidates(walked, scoped.scope, False):
        if isinstance(node, str):
            if node.strip():
                found.add(VALUES, where, node.strip())
        elif isinstance(node, dict):
            _image_map(node, where, registry, scoped.chart, found)


def _candidates(node: Any, path: str, imageish: bool) -> Iterator[Tuple[str, Any]]:
    """(where, node) for strings under an image key and image maps (with a `repository`)."""
    if isinstance(node, dict):
        if imageish and "repository" in node:
            yield path, node
            return
        for key, value in sorted(node.items(), key=lambda item: str(item[0])):
            name = str(key)
            here = name.endswith(("image", "Image"))
            if isinstance(value, (dict, list)) or here:
                yield from _candidates(value, f"{path}.{name}", imageish or here)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            if isinstance(item, (dict, list)) or imageish:
                yield from _candidates(item, f"{path}[{index}]", imageish)
    elif imageish and isinstance(node, str):
        yield path, node


def _image_map(
    node: Dict[str, Any], where: str, registry: str, chart: Chart, found: _Found
) -> None:
    """repository/tag/registry/digest -> a reference; global.imageRegistry wins over registry."""
    fields = {key: node.get(key) for key in ("registry", "repository", "tag", "digest")}
    odd = [k for k, v in fields.items() if v is not None and not isinstance(v, (str, int, float))]
    if odd:
        found.miss(VALUES, where, f"{odd[0]} is a {type(fields[odd[0]]).__name__}, not a string")
        return
    repo, tag, digest = (_text(fields[k]) for k in ("repository", "tag", "digest"))
    if not (repo or tag or digest):
        return  # an unset optional image, e.g. `repository: ""`
    if not repo:
        found.miss(VALUES, where, "repository is empty")
        return
    if not (tag or digest or chart.app_version):
        found.miss(VALUES, where, f"tag is empty and chart {chart.name} has no appVersion")
        return
    text = f"{repo}@{digest}" if digest else f"{repo}:{tag or chart.app_version}"
    prefix = registry or _text(fields["registry"])
    found.add(VALUES, where, f"{prefix}/{text}" if prefix else text)


def _text(value: Any) -> str:
    if value is None or isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return ""
    return str(value).strip()


def _annotation_images(scoped: _Scoped, found: _Found, load: LoadYaml) -> None:
    where = f"{scoped.chart.rel}Chart.yaml annotations {IMAGES_ANNOTATION}"
    text = _as_map(scoped.chart.meta.get("annotations")).get(IMAGES_ANNOTATION)
    if text is None:
        return
    try:
        entries = load(str(text), where)
    except K3BundleError as exc:
        found.miss(ANNOTATION, where, exc.message.split(": ", 1)[-1])
        return
    if not isinstance(entries, list):
        found.miss(ANNOTATION, where, "is not a YAML list of {name, image}")
        return
    for index, entry in enumerate(entries):
        image = entry.get("image") if isinstance(entry, dict) else None
        if isinstance(image, str) and image.strip():
            found.add(ANNOTATION, f"{where}[{index}]", image.strip())
        else:
            found.miss(ANNOTATION, f"{where}[{index}]", "entry has no image string")


# --- helm template ----------------------------------------------------------------------------


class _HelmFailed(Exception):
    """helm could not render the chart (the reason is the message)."""


def _helm_images(
    data: bytes,
    values: Dict[str, Any],
    helm: Optional[str],
    release: str,
    namespace: str,
    timeout: float,
    found: _Found,
    load: LoadYaml,
) -> Tuple[Tuple[str, str], ...]:
    """Render with helm and collect every container image; why not, when it did not run."""
    binary = shutil.which(helm) if helm else None
    if binary is None:
        why = "turned off" if not helm else f"no {helm!r} binary on PATH"
        return ((HELM_TEMPLATE, why),)
    try:
        rendered = _render(binary, data, values, release, namespace, timeout)
    except _HelmFailed as exc:
        return ((HELM_TEMPLATE, str(exc)),)
    for doc in _DOC_SPLIT.split(rendered):
        source = _SOURCE_LINE.search(doc)
        where = f"helm template {source.group(1).strip() if source else '(no # Source)'}"
        try:
            parsed = load(doc, where)
        except ChartArchiveError:
            found.miss(HELM_TEMPLATE, where, "the rendered YAML does not parse")
            continue
        for path, image in _containers(parsed, _object_name(parsed)):
            if isinstance(image, str) and image.strip():
                found.add(HELM_TEMPLATE, f"{where} {path}", image.strip())
            else:
                found.miss(HELM_TEMPLATE, f"{where} {path}", "the container's image is empty")
    return ()


def _render(
    binary: str, data: bytes, values: Dict[str, Any], release: str, namespace: str, timeout: float
) -> str:
    with tempfile.TemporaryDirectory(prefix="k3bundle-helm-") as scratch:
        folder = Path(scratch)
        (folder / "chart.tgz").write_bytes(data)
        # JSON is YAML, and json.dumps cannot emit anything helm would read differently
        (folder / "values.yaml").write_text(json.dumps(values, default=str), encoding="utf-8")
        env = dict(os.environ, KUBECONFIG=str(folder / "kubeconfig"))
        for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
            env[var] = str(folder / var.lower())  # no user repositories, plugins or registries
        argv = [binary, "template", release, str(folder / "chart.tgz"), "--values"]
        argv += [str(folder / "values.yaml"), "--namespace", namespace, "--skip-tests"]
        return _run_bounded(argv, folder, env, timeout)


def _run_bounded(argv: List[str], folder: Path, env: Dict[str, str], timeout: float) -> str:
    """stdout of argv, stopped past `timeout` seconds or MAX_RENDERED bytes."""
    with open(folder / "out", "w+b") as out, open(folder / "err", "w+b") as err:
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=folder, env=env
            )
        except OSError as exc:
            raise _HelmFailed(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if time.monotonic() > deadline or os.fstat(out.fileno()).st_size > MAX_RENDERED:
                proc.kill()
                proc.wait()
                limits = f"{timeout:g} s and {MAX_RENDERED >> 20} MiB"
                raise _HelmFailed(f"helm template gave no result within {limits}")
            time.sleep(0.02)
        if proc.returncode != 0:
            err.seek(0)
            lines = err.read(64 << 10).decode("utf-8", "replace").strip().splitlines()
            errors = [line for line in lines if line.startswith("Error:")] or lines[-1:]
            raise _HelmFailed(f"helm template failed: {(errors or ['(no message)'])[0][:300]}")
        out.seek(0)
        rendered = out.read(MAX_RENDERED + 1)
        if len(rendered) > MAX_RENDERED:
            raise _HelmFailed(f"helm template printed more than {MAX_RENDERED >> 20} MiB")
        return rendered.decode("utf-8", "replace")


def _object_name(doc: Any) -> str:
    meta = _as_map(doc.get("metadata")) if isinstance(doc, dict) else {}
    kind = doc.get("kind") if isinstance(doc, dict) else None
    return f"{kind or '?'}/{meta.get('name') or '?'}"


def _containers(node: Any, path: str) -> Iterator[Tuple[str, Any]]:
    """(where, image) of every container of any kind of object, however deep its pod spec sits."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _CONTAINER_LISTS and isinstance(value, list):
                for index, item in enumerate(value):
                    if isinstance(item, dict) and "image" in item:
                        yield f"{path} {key}[{index}]", item["image"]
            else:
                yield from _containers(value, path)
    elif isinstance(node, list):
        for item in node:
            yield from _containers(item, path)
