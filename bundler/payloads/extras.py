"""A build's extra images and Helm charts, produced as bundle entries and local files."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

from k3bundle.bundler.oci.reference import Reference, parse_reference
from k3bundle.bundler.payloads.chart_refs import discover, with_chart_images
from k3bundle.bundler.payloads.charts import (
    ChartSpec,
    FetchedChart,
    check_chart,
    check_unique,
    fetch_chart,
    helmchart_manifest,
)
from k3bundle.bundler.payloads.context import BuildContext, RegistryOptions
from k3bundle.bundler.payloads.images import PulledImage, Written, pull_all, write_images
from k3bundle.bundler.payloads.produced import Produced
from k3bundle.installer.format import KIND_CHART, KIND_HELMCHART_MANIFEST, KIND_IMAGES, Entry

__all__ = ["RegistryOptions", "check_inputs", "parse_images", "produce_charts", "produce_images"]

Warn = Callable[[str], None]
_SUFFIX = {"zst": ".tar.zst", "gz": ".tar.gz", "tar": ".tar"}


def parse_images(texts: Sequence[str], warn: Warn) -> List[Reference]:
    """Normalise image references (docker.io/library/…:latest), warning on implicit latest;
    references that name the same image (nginx:1.27, docker.io/library/nginx:1.27) count once."""
    refs: List[Reference] = []
    for text in dict.fromkeys(texts):
        ref = parse_reference(text)
        if any(seen.name == ref.name for seen in refs):
            continue
        if ref.implicit_latest:
            warn(
                f"image {text!r} has no tag: bundling {ref.name}; "
                "pin a tag or digest to rebuild the same bundle"
            )
        refs.append(ref)
    return refs


def check_inputs(
    images: Sequence[str], charts: Sequence[ChartSpec], warn: Warn
) -> Tuple[Reference, ...]:
    """Check the extra images and charts before anything is fetched; the parsed images."""
    refs = parse_images(images, warn)
    for chart in charts:
        check_chart(chart)
    check_unique(list(charts))
    return tuple(refs)


def produce_images(ctx: BuildContext, earlier: Produced) -> Produced:
    """Every extra image for every architecture, pulled into the cache and written as one OCI
    archive per architecture, hashed while it is written."""
    produced = Produced()
    refs, charts_of = _with_chart_images(ctx, earlier)
    if not refs:
        return produced
    settings = ctx.fetcher.settings
    pulled = pull_all(
        ctx.registry_client, refs, ctx.settings.arches, ctx.cache, settings.jobs,
        ctx.fetcher.cancel,
    )  # fmt: skip
    for arch in ctx.settings.arches:
        images = [p for p in pulled if p.arch == arch]
        name = f"k3bundle-images-{arch}{_SUFFIX[ctx.settings.images_format]}"
        written = write_images(ctx.work / name, images, ctx.cache, ctx.settings.images_format)
        source = {"images": ", ".join(f"{p.ref.name}@{p.manifest.digest}" for p in images)}
        entry = _entry(f"{arch}/{name}", written, KIND_IMAGES, 0o644, arch, source)
        produced.add(entry, written.path, fresh=True)
    produced.metadata["images"] = _image_summaries(pulled, charts_of)
    produced.notes["pulled"] = pulled  # for later steps (--since rewrites archives from them)
    return produced


def _entry(
    path: str, written: Written, kind: str, mode: int, arch: Any, source: Dict[str, str]
) -> Entry:
    return Entry(path, written.size, written.sha256, kind, mode, arch, source, written.chunks)


def _with_chart_images(
    ctx: BuildContext, earlier: Produced
) -> Tuple[Sequence[Reference], Mapping[str, Tuple[str, ...]]]:
    """The build's images, plus (with --chart-images auto) those the fetched charts deploy,
    and which charts deploy each image."""
    charts = earlier.notes.get("charts") or ()
    if ctx.settings.chart_images != "auto" or not charts:
        return ctx.images, {}
    findings = discover(charts, ctx.warn)
    return with_chart_images(ctx.images, findings)


def _image_summaries(
    pulled: Sequence[PulledImage], charts_of: Mapping[str, Tuple[str, ...]]
) -> List[Dict[str, Any]]:
    summaries: Dict[str, Dict[str, Any]] = {}
    for image in pulled:
        item = summaries.setdefault(
            image.ref.name,
            {"name": image.ref.name, "digest": image.index_digest, "arches": [], "size": 0},
        )
        if image.ref.name in charts_of:
            item["charts"] = list(charts_of[image.ref.name])
        item["arches"].append(image.arch)
        item["size"] += image.size
    return list(summaries.values())


def produce_charts(ctx: BuildContext, earlier: Produced) -> Produced:
    """Every chart's verified .tgz and the HelmChart manifest that deploys it."""
    produced = Produced()
    if not ctx.settings.charts:
        return produced
    client = ctx.registry_client()
    summaries = []
    fetched: List[FetchedChart] = []
    for spec in ctx.settings.charts:
        chart = fetch_chart(spec, ctx.fetcher, client, ctx.cache)
        fetched.append(chart)
        entry = Entry(
            f"charts/{spec.file_name}", chart.size, chart.sha256, KIND_CHART, 0o644, None,
            dict(chart.source),
        )  # fmt: skip
        produced.add(entry, chart.path, fresh=chart.sha256 in ctx.fetcher.downloaded)
        produced.add(*_helmchart(ctx.work, spec), fresh=True)
        summaries.append({"name": spec.name, "version": spec.version, "namespace": spec.namespace})
    produced.metadata["charts"] = summaries
    produced.notes["charts"] = fetched  # the image producer looks into them (--chart-images)
    return produced


def _helmchart(work: Path, spec: ChartSpec) -> Tuple[Entry, Path]:
    """The chart's HelmChart manifest, written to `work` and measured from its bytes."""
    data = helmchart_manifest(spec, spec.file_name)
    local = work / spec.manifest_name
    local.write_bytes(data)
    source = {"generated": f"HelmChart for {spec.name} {spec.version}"}
    path = f"manifests/{spec.manifest_name}"
    entry = Entry(
        path, len(data), hashlib.sha256(data).hexdigest(), KIND_HELMCHART_MANIFEST, 0o600, None,
        source,
    )  # fmt: skip
    return entry, local
