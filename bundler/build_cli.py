"""The `k3bundle build` command: options, spec merging, progress and the closing summary."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import click

from k3bundle.bundler import terminal
from k3bundle.bundler.build import BuildResult, BuildSettings, build
from k3bundle.bundler.build_events import LogFetchEvents, TqdmFetchEvents
from k3bundle.bundler.cache import default_cache_dir
from k3bundle.bundler.memory import one_arena
from k3bundle.bundler.net.fetch import FetchEvents, FetchSettings
from k3bundle.bundler.net.transport import Interrupted
from k3bundle.bundler.network_cli import (
    environment_variables,
    network_options,
    registries_from,
    site_config,
)
from k3bundle.bundler.payloads import release
from k3bundle.bundler.payloads.charts import ChartSpec, chart_from_spec, parse_chart_flag
from k3bundle.bundler.payloads.image_list import read_images_files
from k3bundle.bundler.progress import TqdmProgress
from k3bundle.bundler.site_config import SiteConfig
from k3bundle.bundler.spec import Spec, load_spec
from k3bundle.bundler.terminal import prompt_secret, verbose_option
from k3bundle.bundler.writer import parse_size
from k3bundle.installer.format import ARCHES, arch_from_machine
from k3bundle.installer.progress import Progress, human_size


@click.command("build")
@click.option(
    "-f",
    "--file",
    "spec_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Bundle spec (YAML); flags override it.",
)
@click.option("--version", "version", help="Exact k3s release, e.g. v1.31.4+k3s1.")
@click.option(
    "--channel", help="Release channel resolved via the channel server [default: stable]."
)
@click.option(
    "--arch",
    "arches",
    multiple=True,
    type=click.Choice(ARCHES),
    help="Architecture (repeatable) [default: this machine's].",
)
@click.option(
    "--images-format",
    type=click.Choice(sorted(release.IMAGE_FORMATS)),
    help="Airgap image tarball compression [default: zst].",
)
@click.option(
    "--sign-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Ed25519 private key from 'k3bundle keygen'.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("dist"),
    show_default=True,
    help="Output folder.",
)
@click.option(
    "--split",
    "split",
    metavar="SIZE|fat32",
    help="Split the bundle into parts of at most SIZE bytes (fat32 = 4 GiB - 1).",
)
@click.option("--name", help="Bundle file name stem [default: k3s-<version>-<arches>].")
@click.option(
    "--release-url",
    default=release.DEFAULT_RELEASE_URL,
    show_default=True,
    help="Release download base (a mirror).",
)
@click.option(
    "--channel-url",
    default=release.DEFAULT_CHANNEL_URL,
    show_default=True,
    help="Channel server base.",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Download cache [default: where the OS keeps caches, ~/.cache/k3bundle on Linux].",
)
@click.option(
    "--jobs", type=click.IntRange(1, 32), default=4, show_default=True, help="Parallel downloads."
)
@click.option(
    "--retries",
    type=click.IntRange(0, 20),
    default=5,
    show_default=True,
    help="Retries per download.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0.1, 3600),
    default=60.0,
    show_default=True,
    help="Read timeout in seconds.",
)
@click.option(
    "--offline", is_flag=True, help="Build from the cache alone; fail if anything is missing."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.option(
    "--image",
    multiple=True,
    metavar="REF",
    help="Extra container image (repeatable), e.g. nginx:1.27 or ghcr.io/org/app@sha256:…",
)
@click.option(
    "--images-file",
    "images_files",
    multiple=True,
    metavar="FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Image list (repeatable) in k3s-images.txt form: one reference a line, # comments.",
)
@click.option(
    "--chart",
    multiple=True,
    metavar="REPO/NAME:VERSION",
    help="Helm chart (repeatable); REPO is oci://HOST/PATH or an http(s) chart repository.",
)
@click.option(
    "--chart-images",
    type=click.Choice(["auto", "off"]),
    help="auto: also bundle the images each chart deploys (Chart.yaml's artifacthub.io/images, "
    "values.yaml, helm template when helm is on PATH; see k3bundle images) [default: auto].",
)
@network_options
@click.option(
    "--since",
    "since",
    metavar="PREVIOUS",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Upgrade bundle: leave out the image archives and images PREVIOUS (a bundle, a part, "
    "its parts index or its manifest from 'k3bundle inspect --manifest') delivered; hosts "
    "must hold them.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Write everything again even when -o already holds this very build.",
)
@click.option(
    "-q", "--quiet", is_flag=True, help="No progress, no log lines: warnings, errors, the summary."
)
@verbose_option
def build_command(spec_file: Optional[Path], **flags: Any) -> None:
    """Download, verify and bundle a k3s release for an air-gapped install.

    \b
    Examples:
      k3bundle build --arch arm64 --sign-key site.key
      k3bundle build -f manifests/multi-arch.yaml --split fat32
      k3bundle build --version v1.31.4+k3s1 --offline
    """
    verbose = terminal.verbose(flags["verbose"])  # `k3bundle -v build` means `build -v`
    spec = load_spec(spec_file) if spec_file else Spec()
    settings = settings_from(spec, flags, site_config())
    on_tty = sys.stderr.isatty() and not flags["quiet"]
    events = fetch_events(on_tty, verbose, flags["quiet"])
    progress: Progress = TqdmProgress() if on_tty else Progress()
    try:
        one_arena()  # before the build's threads: its peak RSS stays flat with size
        result = build(settings, events, progress, _warn, prompt_secret)
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted (Ctrl-C); partial downloads are kept in {settings.cache_dir} and the "
            "next build resumes them"
        ) from None
    finally:
        if isinstance(events, TqdmFetchEvents):
            events.close()
    if flags["as_json"]:
        click.echo(json.dumps(result_json(result), indent=2, sort_keys=True))
    else:
        click.echo("\n".join(summary_lines(result)))


def fetch_events(on_tty: bool, verbose: bool, quiet: bool) -> FetchEvents:
    """Bars on a terminal; elsewhere periodic lines, plus a line per file and retry with -v."""
    if quiet:
        return FetchEvents()
    return TqdmFetchEvents() if on_tty else LogFetchEvents(verbose)


def _warn(message: str) -> None:
    click.echo(f"Warning: {message}", err=True)


def settings_from(
    spec: Spec, flags: Dict[str, Any], site: Optional[SiteConfig] = None
) -> BuildSettings:
    """Merge spec, site config and flags into BuildSettings (flag > env > site config > spec)."""
    version = flags["version"] or (None if flags["channel"] else spec.version)
    channel = flags["channel"] or spec.channel or "stable"
    arches: Tuple[str, ...] = (
        tuple(flags["arches"]) or spec.arches or (arch_from_machine(platform.machine()),)
    )
    fetch = FetchSettings(
        read_timeout=flags["timeout"],
        retries=flags["retries"],
        jobs=flags["jobs"],
        offline=flags["offline"],
        ca_file=str(flags["ca_file"]) if flags.get("ca_file") else None,
        jitter=0.5,  # parallel workers that failed together come back at different times
    )
    return BuildSettings(
        arches=tuple(dict.fromkeys(arches)),
        cache_dir=flags["cache_dir"] or default_cache_dir(),
        version=version,
        channel=channel,
        images_format=flags["images_format"] or spec.images_format or "zst",
        sign_key=flags["sign_key"],
        output=flags["output"],
        split=parse_size(flags["split"]) if flags["split"] else None,
        release_url=flags["release_url"],
        channel_url=flags["channel_url"],
        fetch=fetch,
        install=spec.install,
        name=flags["name"] or spec.name,
        images=_images(spec, flags),
        charts=_charts(spec, flags["chart"]),
        chart_images=flags.get("chart_images") or spec.chart_images or "auto",
        registries=registries_from(flags, site or SiteConfig(), spec.mirrors),
        force=flags["force"],
        since=flags.get("since"),
    )


def _images(spec: Spec, flags: Dict[str, Any]) -> Tuple[str, ...]:
    """The spec's images and imagesFile lists, then --images-file and --image (each listed
    image once; the build drops references that name the same image)."""
    listed = read_images_files([*spec.images_files, *flags.get("images_files", ())])
    return tuple(dict.fromkeys([*spec.images, *listed, *flags["image"]]))


environment_variables(build_command)


def _charts(spec: Spec, flags: Sequence[str]) -> Tuple[ChartSpec, ...]:
    from_spec = [chart_from_spec(item, spec.base_dir) for item in spec.charts]
    return (*from_spec, *(parse_chart_flag(text) for text in flags))


def result_json(result: BuildResult) -> Dict[str, Any]:
    """The build result for --json."""
    return {
        "k3s_version": result.version,
        "resolved_by": result.resolved_by,
        "architectures": list(result.arches),
        "bundle_id": result.bundle.bundle_id,
        "signed_by": result.signed_by,
        "files": [str(p) for p in result.files],
        "size": result.bundle.size,
        "downloaded_bytes": result.downloaded_bytes,
        "up_to_date": result.up_to_date,
    }


def summary_lines(result: BuildResult) -> List[str]:
    """What was built and what to do next."""
    first = result.bundle.files[0]
    folder = first.parent
    signed = f"signed by {result.signed_by}" if result.signed_by else "UNSIGNED"
    lines = [
        f"Built {first.name}: k3s {result.version} ({result.resolved_by}) "
        f"for {', '.join(result.arches)}, "
        f"{human_size(result.bundle.size)}, {signed}.",
        f"Downloaded {human_size(result.downloaded_bytes)}; everything else came from the cache.",
    ]
    if result.up_to_date:
        lines[0] = lines[0].replace("Built ", "Up to date: ", 1)
        lines.append(
            f"{folder}/ already held this very build, untouched since: nothing was written "
            "again (--force writes it anyway)."
        )
    lines += [
        "",
        f"Next steps: copy everything in {folder}/ to the USB stick:",
    ]
    lines += [f"  {p.name}" for p in result.files]
    lines += _install_hint(result, first)
    return lines


def _install_hint(result: BuildResult, first: Path) -> Sequence[str]:
    trust = "--pubkey KEY.pub" if result.signed_by else "--allow-unsigned"
    return [
        "then on each host (as root), from the stick:",
        "  sha256sum -c SHA256SUMS",
        f"  python3 k3bundle-install.pyz install {first.name} {trust}",
        "(k3bundle-install.pyz needs only python3 >= 3.8; 'k3bundle install' works the same.)",
    ]
