"""The `k3bundle slice` command: options, progress and the closing summary."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import click

from k3bundle.bundler import terminal
from k3bundle.bundler.progress import TqdmProgress
from k3bundle.bundler.slicing import SliceResult, slice_bundle, slice_files
from k3bundle.bundler.terminal import verbose_option
from k3bundle.bundler.writer import parse_size
from k3bundle.installer.format import ARCHES
from k3bundle.installer.progress import Progress, human_size


@click.command("slice")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--arch",
    "arches",
    multiple=True,
    required=True,
    type=click.Choice(ARCHES),
    help="Architecture to keep (repeatable).",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Existing folder for the slice, its SHA256SUMS and the installer.",
)
@click.option(
    "--split",
    metavar="SIZE|fat32",
    help="Split the slice into parts of at most SIZE bytes (fat32 = 4 GiB - 1).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar; only the summary.")
@verbose_option
def slice_command(
    bundle: Path,
    arches: Sequence[str],
    output: Path,
    split: Optional[str],
    as_json: bool,
    quiet: bool,
    verbose: bool,
) -> None:
    """Write a bundle that holds only ARCH's payload, for the hosts of that architecture.

    The slice keeps the signed manifest and signature byte for byte, so it verifies with the
    same public key (no private key needed to make it); verify, inspect and install say it is
    a slice and refuse an architecture it leaves out. BUNDLE may be a split bundle (any part or
    its parts.json).

    \b
    Examples:
      k3bundle slice dist/k3s-v1.31.4-k3s1-amd64-arm64.tar --arch arm64 -o arm64/
      k3bundle slice dist/k3s-v1.31.4-k3s1-amd64-arm64.tar.000 --arch amd64 -o usb/ --split fat32
    """
    terminal.verbose(verbose)
    size = parse_size(split) if split else None
    progress: Progress = TqdmProgress() if sys.stderr.isatty() and not quiet else Progress()
    result = slice_bundle(bundle, arches, output, size, progress)
    if as_json:
        click.echo(json.dumps(result_json(result), indent=2, sort_keys=True))
    else:
        click.echo("\n".join(summary_lines(result)))


def result_json(result: SliceResult) -> Dict[str, Any]:
    """The slice result for --json."""
    return {
        "bundle": result.bundle,
        "bundle_id": result.output.bundle_id,
        "bundle_size": result.bundle_size,
        "slice": {"holds": list(result.holds), "of": list(result.of)},
        "files": [str(p) for p in slice_files(result)],
        "size": result.output.size,
        "saved": result.saved,
    }


def summary_lines(result: SliceResult) -> List[str]:
    """What was written, how much smaller it is, and what to do next."""
    first = result.output.files[0]
    share = 100 * result.saved // result.bundle_size if result.bundle_size else 0
    lines = [
        f"Sliced {result.bundle} for {', '.join(result.holds)} (of {', '.join(result.of)}): "
        f"{first}, {human_size(result.output.size)} ({result.output.size} bytes).",
        f"Saved {human_size(result.saved)} ({result.saved} bytes, {share}%) per host against "
        f"the whole {human_size(result.bundle_size)} bundle ({result.bundle_size} bytes).",
        "",
        f"Copy everything in {first.parent}/ to each {' or '.join(result.holds)} host:",
    ]
    lines += [f"  {path.name}" for path in slice_files(result)]
    runner = "python3 k3bundle-install.pyz" if result.installer else "k3bundle"
    lines += [
        "then on the host (as root):",
        "  sha256sum -c SHA256SUMS",
        f"  {runner} install {first.name} --pubkey KEY.pub",
    ]
    return lines
