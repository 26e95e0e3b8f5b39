"""A build's extra images and Helm charts, turned into bundle entries and local files."""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

from k3bundle.bundler.cache import Cache
from k3bundle.bundler.net.fetch import Fetcher
from k3bundle.bundler.oci.credentials import Credentials
from k3bundle.bundler.oci.reference import Reference, parse_reference
from k3bundle.bundler.oci.registry import RegistryClient
from k3bundle.bundler.payloads.charts import (
    ChartSpec,
    check_chart,
    check_unique,
    fetch_chart,
    helmchart_manifest,
)
from k3bundle.bundler.payloads.images import PulledImage, pull_all, write_archive
from k3bundle.installer.format import Entry, sha256_file

Warn = Callable[[str], None]
_SUFFIX = {"zst": ".tar.zst", "gz": ".tar.gz", "tar": ".tar"}


@dataclass(frozen=True)
class RegistryOptions:
    """How to reach registries: plain-HTTP hosts, credentials, mirrors and per-host CA files."""

    insecure: Tuple[str, ...] = ()
    auth: Mapping[str, Credentials] = field(default_factory=dict)
    mirrors: Mapping[str, str] = field(default_factory=dict)  # source host -> HOST[/PATH]
    ca_files: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Extras:
    """Entries, their local files, and the manifest's `images`/`charts` summaries."""

    entries: List[Entry] = field(default_factory=list)
    files: Dict[str, Path] = field(default_factory=dict)
    meta: Dict[str, Any] = field(default_factory=dict)

    def add(self, entry: Entry, local: Path) -> None:
        """Add one payload file."""
        self.entries.append(entry)
        self.files[entry.path] = local


def parse_images(texts: Sequence[str], warn: Warn) -> List[Reference]:
    """Normalise image references (docker.io/library/…:latest), warning on implicit latest."""
    refs = []
    for text in dict.fromkeys(texts):
        ref = parse_reference(text)
        if ref.implicit_latest:
            warn(
                f"image {text!r} has no tag: bundling {ref.name}; "
                "pin a tag or digest to rebuild the same bundle"
            )
        refs.append(ref)
    return refs


def collect(
    refs: Sequence[Reference],
    charts: Sequence[ChartSpec],
    arches: Sequence[str],
    images_format: str,
    cache: Cache,
    fetcher: Fetcher,
    registries: RegistryOptions,
    work: Path,
) -> Extras:
    """Pull images and charts, write per-arch image archives; return the bundle's extras."""
    for chart in charts:
        check_chart(chart)
    check_unique(list(charts))
    extras = Extras()
    settings = fetcher.settings

    def client() -> RegistryClient:
        return RegistryClient(
            settings,
            insecure=registries.insecure,
            auth=registries.auth,
            mirrors=registries.mirrors,
            ca_files=registries.ca_files,
            events=fetcher.events,  # image and chart bytes are shown and counted as files are
            tally=fetcher.tally,
            cancel=fetcher.cancel,
        )

    if refs:
        pulled = pull_all(client, refs, arches, cache, settings.jobs, fetcher.cancel)
        _add_images(extras, pulled, arches, images_format, cache, work)
    if charts:
        _add_charts(extras, charts, fetcher, client(), cache, work)
    return extras


def _add_images(
    extras: Extras,
    pulled: Sequence[PulledImage],
    arches: Sequence[str],
    images_format: str,
    cache: Cache,
    work: Path,
) -> None:
    for arch in arches:
        images = [p for p in pulled if p.arch == arch]
        name = f"k3bundle-images-{arch}{_SUFFIX[images_format]}"
        local = _archive(work / name, images, cache, images_format)
        source = {"images": ", ".join(f"{p.ref.name}@{p.manifest.digest}" for p in images)}
        entry = Entry(
            f"{arch}/{name}",
            local.stat().st_size,
            sha256_file(local),
            "images",
            0o644,
            arch,
            source,
        )
        extras.add(entry, local)
    extras.meta["images"] = _image_summaries(pulled)


def _archive(target: Path, images: Sequence[PulledImage], cache: Cache, images_format: str) -> Path:
    if images_format != "gz":
        return write_archive(target, images, cache, compress=images_format == "zst")
    plain = write_archive(target.with_suffix(""), images, cache, compress=False)
    with open(plain, "rb") as source, open(target, "wb") as raw:  # noqa: SIM117
        # mtime=0 and no file name in the gzip header keep the archive reproducible.
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as packed:
            for chunk in iter(lambda: source.read(1 << 20), b""):
                packed.write(chunk)
    plain.unlink()
    return target


def _image_summaries(pulled: Sequence[PulledImage]) -> List[Dict[str, Any]]:
    summaries: Dict[str, Dict[str, Any]] = {}
    for image in pulled:
        item = summaries.setdefault(
            image.ref.name,
            {"name": image.ref.name, "digest": image.index_digest, "arches": [], "size": 0},
        )
        item["arches"].append(image.arch)
        item["size"] += image.size
    return list(summaries.values())


def _add_charts(
    extras: Extras,
    charts: Sequence[ChartSpec],
    fetcher: Fetcher,
    client: RegistryClient,
    cache: Cache,
    work: Path,
) -> None:
    summaries = []
    for spec in charts:
        chart = fetch_chart(spec, fetcher, client, cache)
        path = f"charts/{spec.file_name}"
        extras.add(
            Entry(path, chart.size, chart.sha256, "chart", 0o644, None, dict(chart.source)),
            chart.path,
        )
        manifest = work / spec.manifest_name
        manifest.write_bytes(helmchart_manifest(spec, spec.file_name))
        source = {"generated": f"HelmChart for {spec.name} {spec.version}"}
        entry = Entry(
            f"manifests/{spec.manifest_name}",
            manifest.stat().st_size,
            sha256_file(manifest),
            "helmchart-manifest",
            0o600,
            None,
            source,
        )
        extras.add(entry, manifest)
        summaries.append({"name": spec.name, "version": spec.version, "namespace": spec.namespace})
    extras.meta["charts"] = summaries
