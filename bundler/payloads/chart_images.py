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

import gzip
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    IO,
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
    cast,
)

from k3bundle.bundler.net.netyaml import load_untrusted_yaml
from k3bundle.bundler.oci.reference import parse_reference
from k3bundle.installer.errors import FetchError, K3BundleError, UsageError

ANNOTATION, VALUES, HELM_TEMPLATE = "annotation", "values", "helm-template"
SOURCES = (ANNOTATION, VALUES, HELM_TEMPLATE)
IMAGES_ANNOTATION = "artifacthub.io/images"
MAX_FILE = 5 << 20  # helm's MaxDecompressedFileSize
MAX_UNPACKED = 100 << 20  # helm's MaxDecompressedChartSize, here for the whole chart tree
MAX_MEMBERS = 10_000
MAX_DEPTH = 4  # charts/ inside charts/ inside ...
MAX_RENDERED = 64 << 20  # what `helm template` may print
HELM_TIMEOUT = 120.0
LoadYaml = Callable[[str, str], Any]
Normalize = Callable[[str], str]
_KEPT = re.compile(
    r"(?:charts/[^/]+/)*(?:Chart\.yaml|values\.yaml|requirements\.yaml|charts/[^/]+\.tgz)"
)
_CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")
_DOC_SPLIT = re.compile(r"^---[ \t]*$", re.MULTILINE)
_SOURCE_LINE = re.compile(r"^# Source: (.+)$", re.MULTILINE)


class ChartArchiveError(FetchError):
    """A chart package that is not a well-formed, bounded Helm chart archive."""

    default_hint = "Check the chart's source (repository, version), or package it again with helm."


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
    data = _read_chart(chart)
    name = label or (chart.name if isinstance(chart, Path) else "the chart package")
    top = _load_chart(data, name, "", load, _Budget(), 0)
    found = _Found(top.name, norm)
    merged = _deep_merge(top.values, dict(values or {}))
    for scoped in _scopes(top, merged, (), found):
        _annotation_images(scoped, found, load)
        _values_images(scoped, found)
    # helm gets the user's values, not the merged ones: its own merge drops what a null removes
    given = dict(values or {})
    skipped = _helm_images(data, given, helm, release or top.name, namespace, timeout, found, load)
    return found.result(top, skipped)


def safe_load_yaml(text: str, where: str) -> Any:
    """YAML without anchors or aliases (an alias bomb expands to gigabytes); ChartArchiveError."""
    return load_untrusted_yaml(text, f"{where} is not usable YAML", ChartArchiveError)


def normalize_reference(text: str) -> str:
    """`nginx:1.25` -> `docker.io/library/nginx:1.25`, as containerd names it; UsageError if bad."""
    return parse_reference(text).name


# --- the chart package ------------------------------------------------------------------------


@dataclass
class _Budget:
    """What the whole chart tree may still unpack, shared by nested packages."""

    left: int = MAX_UNPACKED
    members: int = MAX_MEMBERS


@dataclass(frozen=True)
class _Chart:
    """One chart of the tree: its Chart.yaml, values.yaml and subcharts, and where it sits."""

    meta: Dict[str, Any]
    values: Dict[str, Any]
    subcharts: Tuple[_Chart, ...]
    where: str  # for errors: "LABEL/charts/SUB"
    rel: str  # for misses: "" or "charts/SUB/"

    @property
    def name(self) -> str:
        """Chart.yaml's name."""
        return str(self.meta["name"])

    @property
    def app_version(self) -> str:
        """Chart.yaml's appVersion, or ''."""
        app = self.meta.get("appVersion")
        return "" if app is None or isinstance(app, bool) else str(app).strip()


def _read_chart(chart: Union[bytes, Path]) -> bytes:
    if isinstance(chart, bytes):
        return chart
    try:
        with open(chart, "rb") as handle:
            data = handle.read(MAX_UNPACKED + 1)
    except OSError as exc:
        raise UsageError(f"cannot read chart {chart}: {exc.strerror or exc}") from None
    if len(data) > MAX_UNPACKED:
        raise ChartArchiveError(f"chart {chart} is larger than {MAX_UNPACKED >> 20} MiB")
    return data


def _load_chart(
    data: bytes, where: str, rel: str, load: LoadYaml, budget: _Budget, depth: int
) -> _Chart:
    if depth > MAX_DEPTH:
        raise ChartArchiveError(f"{where}: subcharts nest deeper than {MAX_DEPTH} levels")
    if data[:2] != b"\x1f\x8b":
        raise ChartArchiveError(f"{where} is not a gzip'd tar (a Helm chart package is a .tgz)")
    try:
        files = _kept_members(data, where, budget)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise ChartArchiveError(f"{where} is not a readable chart package: {exc}") from None
    return _chart_at(files, "", where, rel, load, budget, depth)


class _Bounded:
    """A read() that stops the whole tree at budget.left decompressed bytes."""

    def __init__(self, raw: IO[bytes], budget: _Budget, where: str) -> None:
        self._raw, self._budget, self._where = raw, budget, where

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes, counted against the budget."""
        data = self._raw.read(size if size >= 0 else self._budget.left + 1)
        self._budget.left -= len(data)
        if self._budget.left < 0:
            raise ChartArchiveError(f"{self._where} unpacks to more than {MAX_UNPACKED >> 20} MiB")
        return data


def _kept_members(data: bytes, where: str, budget: _Budget) -> Dict[str, bytes]:
    """Chart.yaml, values.yaml, requirements.yaml and charts/*.tgz of the tree, by chart path."""
    files: Dict[str, bytes] = {}
    top: Optional[str] = None
    raw = cast(IO[bytes], gzip.GzipFile(fileobj=io.BytesIO(data)))
    stream = _Bounded(raw, budget, where)
    with tarfile.open(fileobj=cast(IO[bytes], stream), mode="r|") as tar:
        for member in tar:
            budget.members -= 1
            if budget.members < 0:
                raise ChartArchiveError(f"{where} has more than {MAX_MEMBERS} members")
            parts = _member_parts(member, where)
            top = top or parts[0]
            if parts[0] != top:
                raise ChartArchiveError(f"{where} has more than one top folder ({top}, {parts[0]})")
            rel = "/".join(parts[1:])
            if member.isdir() or not _KEPT.fullmatch(rel):
                continue
            if rel in files:
                raise ChartArchiveError(f"{where} holds {top}/{rel} twice")
            handle = tar.extractfile(member)
            files[rel] = handle.read() if handle else b""
    return files


def _member_parts(member: tarfile.TarInfo, where: str) -> List[str]:
    name = member.name
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if not parts or name.startswith("/") or "\\" in name or ".." in parts:
        raise ChartArchiveError(f"{where} has a member with an unsafe path: {name[:200]!r}")
    if not (member.isfile() or member.isdir()):
        raise ChartArchiveError(f"{where}: {name[:200]!r} is a link or a device, not a file")
    if member.isfile() and len(parts) < 2:
        raise ChartArchiveError(f"{where}: {name[:200]!r} lies outside the chart's top folder")
    if member.size > MAX_FILE:
        raise ChartArchiveError(
            f"{where}: {name[:200]!r} is {member.size} bytes, over helm's {MAX_FILE >> 20} MiB"
        )
    return parts


def _chart_at(
    files: Dict[str, bytes],
    prefix: str,
    where: str,
    rel: str,
    load: LoadYaml,
    budget: _Budget,
    depth: int,
) -> _Chart:
    meta = _yaml_map(files, prefix + "Chart.yaml", where, load)
    if meta is None:
        raise ChartArchiveError(f"{where} has no Chart.yaml in its top folder")
    if not isinstance(meta.get("name"), str) or not meta["name"]:
        raise ChartArchiveError(f"{where}: Chart.yaml has no name")
    requirements = _yaml_map(files, prefix + "requirements.yaml", where, load) or {}
    if "dependencies" not in meta and isinstance(requirements.get("dependencies"), list):
        meta["dependencies"] = requirements["dependencies"]  # apiVersion v1 charts
    values = _yaml_map(files, prefix + "values.yaml", where, load) or {}
    return _Chart(
        meta, values, _subcharts(files, prefix, where, rel, load, budget, depth), where, rel
    )


def _subcharts(
    files: Dict[str, bytes],
    prefix: str,
    where: str,
    rel: str,
    load: LoadYaml,
    budget: _Budget,
    depth: int,
) -> Tuple[_Chart, ...]:
    """charts/NAME.tgz (a nested package) and charts/NAME/ (a folder), in name order."""
    inner = prefix + "charts/"
    entries = sorted({r[len(inner) :].split("/")[0] for r in files if r.startswith(inner)})
    if entries and depth + 1 > MAX_DEPTH:
        raise ChartArchiveError(f"{where}: subcharts nest deeper than {MAX_DEPTH} levels")
    subs: List[_Chart] = []
    for entry in entries:
        at, at_rel = f"{where}/charts/{entry}", f"{rel}charts/{entry}/"
        if inner + entry in files:
            subs.append(_load_chart(files[inner + entry], at, at_rel, load, budget, depth + 1))
        else:
            folder = f"{inner}{entry}/"
            subs.append(_chart_at(files, folder, at, at_rel, load, budget, depth + 1))
    return tuple(subs)


def _yaml_map(
    files: Dict[str, bytes], rel: str, where: str, load: LoadYaml
) -> Optional[Dict[str, Any]]:
    if rel not in files:
        return None
    try:
        text = files[rel].decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ChartArchiveError(f"{where}: {rel} is not UTF-8") from None
    parsed = load(text, f"{where}: {rel}")
    if parsed is None:
        return {}
    if not isinstance(parsed, dict):
        raise ChartArchiveError(f"{where}: {rel} is not a mapping")
    return parsed


# --- values: scoping, merging, image shapes ---------------------------------------------------


@dataclass(frozen=True)
class _Scoped:
    """A chart of the tree with the values it renders with and its path in the top values."""

    chart: _Chart
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

    def result(self, top: _Chart, skipped: Tuple[Tuple[str, str], ...]) -> ChartImages:
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
    chart: _Chart, values: Dict[str, Any], path: Tuple[str, ...], found: _Found
) -> Iterator[_Scoped]:
    yield _Scoped(chart, values, ".".join(("values", *path)))
    shared = _as_map(values.get("global"))
    for key, sub in _dependencies(chart, values, found):
        merged = _deep_merge(sub.values, _as_map(values.get(key)))
        merged["global"] = _deep_merge(_as_map(sub.values.get("global")), shared)
        yield from _scopes(sub, merged, (*path, key), found)


def _dependencies(
    chart: _Chart, values: Dict[str, Any], found: _Found
) -> Iterator[Tuple[str, _Chart]]:
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
    node: Dict[str, Any], where: str, registry: str, chart: _Chart, found: _Found
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
