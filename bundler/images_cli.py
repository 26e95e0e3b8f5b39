"""`k3bundle images`: list the images charts deploy, without building anything."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import click

from k3bundle.bundler import terminal
from k3bundle.bundler.build_events import LogFetchEvents
from k3bundle.bundler.cache import Cache, default_cache_dir
from k3bundle.bundler.net.fetch import Fetcher
from k3bundle.bundler.net.transport import FetchSettings
from k3bundle.bundler.network_cli import (
    environment_variables,
    network_options,
    registries_from,
    site_config,
)
from k3bundle.bundler.payloads.chart_images import ChartImages
from k3bundle.bundler.payloads.chart_refs import discover
from k3bundle.bundler.payloads.charts import (
    ChartSpec,
    FetchedChart,
    chart_from_spec,
    check_unique,
    fetch_chart,
    parse_chart_flag,
)
from k3bundle.bundler.payloads.context import registry_client
from k3bundle.bundler.spec import Spec, load_spec
from k3bundle.bundler.terminal import verbose_option
from k3bundle.installer.errors import UsageError


@click.command("images")
@click.option(
    "--chart",
    "charts",
    multiple=True,
    metavar="REPO/NAME:VERSION",
    help="Chart to look into (repeatable): oci://HOST/PATH/NAME:VERSION or https://REPO/NAME:VER.",
)
@click.option(
    "--values",
    "values_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Values file applied to every --chart (as the spec's valuesFile).",
)
@click.option(
    "-f",
    "--file",
    "spec_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Bundle spec: look into its charts, with their values.",
)
@click.option("--no-helm", is_flag=True, help="Do not run `helm template` even when it is found.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Download cache [default: the OS cache folder].",
)
@click.option("--offline", is_flag=True, help="Use only the cache; never touch the network.")
@network_options
@verbose_option
def images_command(
    charts: Sequence[str],
    values_file: Optional[Path],
    spec_file: Optional[Path],
    no_helm: bool,
    as_json: bool,
    cache_dir: Optional[Path],
    offline: bool,
    verbose: bool,
    **network: Any,
) -> None:
    """List the images that charts deploy (what `build --chart-images auto` adds).

    Each image comes with the sources that found it: `annotation` (Chart.yaml's
    artifacthub.io/images), `values` (image: shapes in values.yaml with the given values) and
    `helm-template` (a `helm` binary on PATH renders the chart). Images that cannot be resolved
    are listed with the reason; add them to a build with --image.

    \b
    Examples:
      k3bundle images --chart oci://ghcr.io/org/charts/app:1.2.0 --values site-values.yaml
      k3bundle images -f manifests/my-site.yaml --json
    """
    terminal.verbose(verbose)
    spec = load_spec(spec_file) if spec_file else None
    specs = _specs(charts, values_file, spec)
    ca_file = network["ca_file"]
    settings = FetchSettings(offline=offline, ca_file=str(ca_file) if ca_file else None, jitter=0.5)
    events = LogFetchEvents(verbose)  # stdout stays the listing's
    cache = Cache(cache_dir or default_cache_dir())
    fetcher = Fetcher(cache, settings, events)
    # the build's own registry settings: what `build` would reach a chart with, this reaches it
    registries = registries_from(network, site_config(), spec.mirrors if spec else {})
    client = registry_client(registries, fetcher)
    fetched = [fetch_chart(spec, fetcher, client, cache) for spec in specs]
    warnings: List[str] = []
    helm = None if no_helm else "helm"
    findings = discover(fetched, warnings.append, helm=helm, warn_misses=False)
    if as_json:
        doc = [_chart_json(chart, findings.found[chart.spec.name]) for chart in fetched]
        click.echo(json.dumps({"charts": doc}, indent=2, sort_keys=True))
        return
    click.echo("\n".join(_table(fetched, findings.found)))
    for warning in warnings:
        click.echo(f"Warning: {warning}", err=True)


def _specs(
    charts: Sequence[str], values_file: Optional[Path], spec: Optional[Spec]
) -> List[ChartSpec]:
    from_flags = [parse_chart_flag(text) for text in charts]
    if values_file is not None:
        from_flags = [dataclasses.replace(s, values_file=values_file.resolve()) for s in from_flags]
    from_spec: List[ChartSpec] = []
    if spec is not None:
        from_spec = [chart_from_spec(item, spec.base_dir) for item in spec.charts]
    specs = [*from_spec, *from_flags]
    if not specs:
        raise UsageError(
            "no chart to look into",
            "Name one with --chart REPO/NAME:VERSION, or a spec with charts with -f SPEC.",
        )
    check_unique(specs)
    return specs


def _chart_json(chart: FetchedChart, found: ChartImages) -> Dict[str, Any]:
    return {
        "chart": chart.spec.name,
        "version": chart.spec.version,
        "repo": chart.spec.repo,
        "images": [{"reference": i.reference, "sources": list(i.sources)} for i in found.images],
        "unresolved": [
            {"where": m.where, "reason": m.reason, "source": m.source} for m in found.misses
        ],
        "sources_not_used": [{"source": s, "why": why} for s, why in found.skipped],
    }


def _table(fetched: Sequence[FetchedChart], found: Mapping[str, ChartImages]) -> List[str]:
    rows: List[Tuple[str, str, str]] = [("IMAGE", "CHART", "FOUND BY")]
    unresolved: List[str] = []
    for chart in fetched:
        images = found[chart.spec.name]
        label = f"{chart.spec.name}:{chart.spec.version}"
        rows += [(i.reference, label, ", ".join(i.sources)) for i in images.images]
        unresolved += [f"  {m.message}" for m in images.misses]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}" for a, b, c in rows]
    if len(rows) == 1:
        lines.append("(no images found)")
    if unresolved:
        lines += ["", "Not resolved (add with --image when the chart needs them):", *unresolved]
    return lines


environment_variables(images_command)
