"""The images a build's charts deploy, added to the images it bundles (`--chart-images auto`).

Discovery itself lives in chart_images.py; this module turns its findings into references the
image producer pulls, remembers which chart asked for which image (the manifest's `images`
summary carries it, and `inspect` shows it), and says what it could not resolve.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from k3bundle.bundler.oci.reference import Reference, parse_reference
from k3bundle.bundler.payloads.chart_images import ChartImages, discover_chart_images
from k3bundle.bundler.payloads.charts import FetchedChart, chart_values
from k3bundle.installer.errors import UsageError

Warn = Callable[[str], None]
CHART_IMAGES = ("auto", "off")


@dataclass(frozen=True)
class ChartFindings:
    """What discovery found in each chart of a build, by chart name."""

    found: Mapping[str, ChartImages]

    def charts_of(self) -> Dict[str, Tuple[str, ...]]:
        """Image name → the charts that deploy it (sorted)."""
        by_image: Dict[str, List[str]] = {}
        for chart, images in sorted(self.found.items()):
            for image in images.images:
                by_image.setdefault(image.reference, []).append(chart)
        return {name: tuple(charts) for name, charts in by_image.items()}


def check_mode(mode: str) -> str:
    """`--chart-images` is auto or off."""
    if mode not in CHART_IMAGES:
        raise UsageError(
            f"--chart-images {mode!r} is not one of {', '.join(CHART_IMAGES)}",
            "Use --chart-images auto (find the images each chart deploys) or off.",
        )
    return mode


def discover(
    charts: Sequence[FetchedChart],
    warn: Warn,
    helm: Optional[str] = "helm",
    warn_misses: bool = True,
) -> ChartFindings:
    """Discover each chart's images with its spec's values; warn once per unresolved image
    (unless `warn_misses` is off: the caller shows them) and per source that failed."""
    found: Dict[str, ChartImages] = {}
    for chart in charts:
        images = discover_chart_images(
            chart.path,
            chart_values(chart.spec),
            helm=helm,
            namespace=chart.spec.namespace,
            label=chart.spec.name,
        )
        for miss in images.misses if warn_misses else ():
            warn(f"{miss.message}; if the chart needs it, add it with --image")
        for source, why in images.skipped:
            if why != "turned off" and "no 'helm' binary" not in why:
                warn(f"chart {chart.spec.name}: {source} was not used: {why}")
        found[chart.spec.name] = images
    return ChartFindings(found)


def with_chart_images(
    refs: Sequence[Reference], findings: ChartFindings
) -> Tuple[List[Reference], Dict[str, Tuple[str, ...]]]:
    """The build's images plus the charts' (given ones first, no name twice), and which chart
    pulled in which image."""
    names = {ref.name for ref in refs}
    charts_of = findings.charts_of()
    added = [parse_reference(name) for name in sorted(charts_of) if name not in names]
    return [*refs, *added], charts_of
