"""Benchmark: `k3bundle build` (cold and warm cache) against curl downloading the same files.

A stand-in k3s release of about --size bytes (amd64 + arm64: a tiny binary, the checksum file and
one k3s-airgap-images-<arch>.tar.zst of size/2 pseudo-random bytes each) is generated with
tests.release_server.generate_release and served by tests/release_server.py on 127.0.0.1. Each run
then times, interleaved and (all but `rebuild`) each into fresh folders:

  curl   one `curl -sf -o FILE URL` process per release file, all started at once, waited for
  cold   python -m k3bundle.bundler build --version V --arch amd64 --arch arm64 ... -q
         with a fresh, empty --cache-dir (downloads, verifies, writes the bundle)
  warm   the same build with a cache that already holds everything, into a fresh folder
         (writes the bundle)
  rebuild  the same warm build again into the same folder, which already holds it: up to
         date, nothing is written (the first, untimed run wrote it)

The server runs as its own process (the command line of tests/release_server.py, told to serve
the generated folder without regenerating it): its threads then never compete with this harness
for the GIL, it is stopped by PID like in `make demo`, and curl and the builder hit the very same
server. The page cache is never dropped: the release files stay warm in it, and every run writes
into it (dirty pages are flushed with sync before each run, outside the timing).

Goals (from the issue): cold build <= 1.25 x curl, warm rebuild <= 0.5 x curl (checked against
both warm rows), builder peak RSS <= 100 MiB (the child's own ru_maxrss, via os.wait4).

    .venv/bin/python bench/build_vs_curl.py [--size 1G] [--runs 3] [--workdir DIR] [--strict]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Dict, Iterator, List, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
# Run as `python bench/build_vs_curl.py`, sys.path[0] is bench/: make tests/ and bench/ importable.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.install_vs_tar import (  # noqa: E402
    Sample,
    check_disk,
    human,
    parse_common,
    parse_size,
    precompile,
    run_child,
)
from tests.release_server import binary_name, checksum_name, generate_release, image_name  # noqa: E402

MIB = 1024**2
VERSION = "v1.31.4+k3s1"
ARCHES = ("amd64", "arm64")
IMAGES_FORMAT = "tar.zst"  # the builder's --images-format zst
MAX_COLD = 1.25
MAX_WARM = 0.5
MAX_RSS_MIB = 100.0
DISK_FACTOR = 5  # release + warm cache + cold cache + cold bundle + slack
VARIANTS = ("curl", "cold", "warm", "rebuild")

# One curl process per URL, all in parallel; fails when any of them fails.
CURL_SCRIPT = """
dir=$1; shift; pids=
for url; do curl -sf -o "$dir/${url##*/}" "$url" & pids="$pids $!"; done
rc=0; for pid in $pids; do wait "$pid" || rc=1; done; exit $rc
"""


@dataclass
class Results:
    """Every sample of every variant."""

    total_bytes: int
    samples: Dict[str, List[Sample]] = field(default_factory=lambda: {v: [] for v in VARIANTS})

    def median(self, variant: str) -> float:
        """Median wall seconds of one variant."""
        return statistics.median(s.seconds for s in self.samples[variant])

    def cpu(self, variant: str) -> float:
        """Median CPU seconds (user + system) of one variant."""
        return statistics.median(s.cpu for s in self.samples[variant])

    def peak_rss(self, variant: str) -> float:
        """Largest peak RSS (MiB) over the runs of one variant."""
        return max(s.rss_mib for s in self.samples[variant])


@dataclass(frozen=True)
class Setup:
    """What every run shares."""

    work: Path
    release_url: str
    urls: List[str]
    total_bytes: int
    warm_cache: Path


def release_files(version: str) -> List[str]:
    """The release files the builder downloads: per arch its checksum file, binary and images."""
    names: List[str] = []
    for arch in ARCHES:
        names += [checksum_name(arch), binary_name(arch), image_name(arch, IMAGES_FORMAT)]
    return names


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    """tests/release_server.py serving `folder` as a subprocess; yields its release URL."""
    argv = [sys.executable, str(REPO / "tests" / "release_server.py"), "--dir", str(folder)]
    argv += ["--port", "0", "--print-url"]  # no --versions: serve what is there, generate nothing
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        stdout: IO[bytes] = server.stdout  # type: ignore[assignment]
        line = stdout.readline()
        if not line:
            raise SystemExit(f"the release server exited (status {server.wait()}) without a URL")
        release_url: str = json.loads(line)["release_url"]
        yield release_url
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def build_argv(setup: Setup, cache: Path, out: Path) -> List[str]:
    """The builder's command line (unsigned: signing a manifest costs microseconds)."""
    argv = [sys.executable, "-m", "k3bundle.bundler", "build", "--version", VERSION]
    for arch in ARCHES:
        argv += ["--arch", arch]
    argv += ["--images-format", "zst", "--release-url", setup.release_url]
    return [*argv, "--cache-dir", str(cache), "-o", str(out), "-q"]


def run_once(variant: str, setup: Setup, index: int) -> Sample:
    """One timed run of `variant` into fresh folders, removed afterwards.

    `rebuild` is the exception: the same warm build again into one kept folder, which already
    holds it from the run before (the first, untimed warm-up wrote it).
    """
    keep = variant == "rebuild"
    out = setup.work / ("rebuild-out" if keep else f"{variant}-out-{index}")
    cold_cache = setup.work / f"cold-cache-{index}"
    out.mkdir(exist_ok=keep)
    try:
        if variant == "curl":
            argv = ["sh", "-c", CURL_SCRIPT, "sh", str(out), *setup.urls]
        elif variant == "cold":
            argv = build_argv(setup, cold_cache, out)
        else:
            argv = build_argv(setup, setup.warm_cache, out)
        os.sync()  # flush the previous run's dirty pages outside the timing
        sample = run_child(argv)
        if variant == "curl":
            got = sum(p.stat().st_size for p in out.iterdir())
            if got != setup.total_bytes:
                raise SystemExit(f"curl fetched {got} bytes, expected {setup.total_bytes}")
        return sample
    finally:
        if not keep:
            shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(cold_cache, ignore_errors=True)


def bench(setup: Setup, runs: int, total: int) -> Results:
    """Untimed warm-ups (they also fill the warm cache), then `runs` interleaved rounds."""
    results = Results(total)
    print("warm-up runs (untimed) ...", file=sys.stderr, flush=True)
    run_child(build_argv(setup, setup.warm_cache, setup.work / "warm-up-out"))
    shutil.rmtree(setup.work / "warm-up-out")
    for variant in VARIANTS:
        run_once(variant, setup, -1)
    for index in range(runs):
        for variant in VARIANTS:
            sample = run_once(variant, setup, index)
            results.samples[variant].append(sample)
            print(
                f"run {index + 1}/{runs} {variant:7s} {sample.seconds:7.3f} s"
                f" (cpu {sample.cpu:6.3f} s) {sample.rss_mib:6.1f} MiB",
                file=sys.stderr,
                flush=True,
            )
    return results


def verdict(ratio: float, goal: float, rss: float) -> str:
    """PASS when both goals hold, else FAIL naming which."""
    failed = [n for n, bad in (("ratio", ratio > goal), ("rss", rss > MAX_RSS_MIB)) if bad]
    return "PASS" if not failed else "FAIL(" + ",".join(failed) + ")"


def report(results: Results, runs: int, floor: float) -> bool:
    """Print the table; True when every goal holds."""
    total = results.total_bytes
    curl = results.median("curl")
    print()
    print(
        f"k3bundle build vs parallel curl, {total / MIB:.0f} MiB of release files "
        f"({len(ARCHES)} arches), median of {runs} runs; warm page cache"
    )
    header = (
        f"{'variant':7} {'wall s':>7} {'MiB/s':>7} {'cpu s':>7} {'ratio':>6} {'goal':>6} "
        f"{'RSS MiB':>8}  verdict"
    )
    print(header)
    print("-" * len(header))
    ok = True
    for variant in VARIANTS:
        seconds = results.median(variant)
        rate = total / MIB / seconds if seconds else float("inf")
        rss = results.peak_rss(variant)
        if variant == "curl":
            line, ratio_s, goal_s = "(baseline)", "1.00", ""
        else:
            goal = MAX_COLD if variant == "cold" else MAX_WARM
            ratio = seconds / curl
            line, ratio_s, goal_s = verdict(ratio, goal, rss), f"{ratio:.2f}", f"<={goal}"
            ok = ok and line == "PASS"
        print(
            f"{variant:7} {seconds:7.3f} {rate:7.0f} {results.cpu(variant):7.2f} {ratio_s:>6} "
            f"{goal_s:>6} {rss:8.1f}  {line}"
        )
    print(
        "curl = one curl -sf -o process per file, all at once; cold = k3bundle build with an "
        "empty cache;\nwarm = the same build with a full cache into a fresh output folder (writes "
        "the bundle);\nrebuild = the same build again into the same output folder (up to date: "
        "writes nothing)"
    )
    print(
        f"ratio = median wall time / curl's; goals: cold <= {MAX_COLD}, "
        f"warm rebuild <= {MAX_WARM}, builder peak RSS <= {MAX_RSS_MIB:.0f} MiB"
    )
    print(
        f"RSS = the child's own ru_maxrss via os.wait4 (curl row: the sh parent's), floor "
        f"{floor:.1f} MiB (the launcher's);\ncpu = user+system of the child and its children"
    )
    load = os.getloadavg()[0]
    print(f"load average (1 min) at the end: {load:.2f} on {os.cpu_count()} CPUs", end="")
    print(" -- a busy machine: wall times are noisy" if load > 0.5 else "")
    return ok


def check_tools() -> None:
    """curl and sh must be on PATH."""
    missing = [tool for tool in ("curl", "sh") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"this benchmark needs {' and '.join(missing)} on PATH")


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--size",
        default=parse_size("1G"),
        type=parse_size,
        help="total size of the release files, e.g. 256M, 1G (default: 1G)",
    )
    return parse_common(parser, argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark and print the table."""
    args = parse_args(argv)
    size: int = args.size
    check_tools()
    base: Path = args.workdir or REPO / ".bench"
    base.mkdir(parents=True, exist_ok=True)
    check_disk(
        base, DISK_FACTOR * size, f"{DISK_FACTOR}x --size; use --workdir or a smaller --size"
    )
    work = Path(tempfile.mkdtemp(prefix="build-vs-curl-", dir=base))
    try:
        print(f"generating a {human(size)} stand-in release ...", file=sys.stderr, flush=True)
        root = work / "release"
        sums = generate_release(root, VERSION, ARCHES, size // len(ARCHES), (IMAGES_FORMAT,))
        names = release_files(VERSION)
        missing = [name for name in names if name not in sums]
        if missing:
            raise SystemExit(f"generate_release wrote no {missing[0]}")
        total = sum((root / VERSION / name).stat().st_size for name in names)
        floor = run_child(["true"]).rss_mib
        precompile()
        with serve(root) as release_url:
            urls = [f"{release_url}/{VERSION}/{name}" for name in names]
            setup = Setup(work, release_url, urls, total, work / "warm-cache")
            results = bench(setup, args.runs, total)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if args.workdir is None:
            with contextlib.suppress(OSError):
                base.rmdir()
    ok = report(results, args.runs, floor)
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
