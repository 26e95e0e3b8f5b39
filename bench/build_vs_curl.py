"""Benchmark: `k3bundle build` against parallel `curl` of the same files over a shared link.

A stand-in amd64 release shaped like a real one (ONE airgap image tarball of 75 % of --sizes, a
64 MiB binary (size/8 below 512 MiB), the checksum file) plus one extra image whose layer holds the
rest, is served by bench/_servers.py on 127.0.0.1 (tests/release_server.py's release layout, plus
a read-only OCI registry) in its own process, behind ONE token bucket that all connections share
(a link, not a per-connection cap). For each --rates value, interleaved, each into fresh folders:

  curl   one `curl -sf -Z --parallel-max 16 -O URL ...` fetching the same files (the release
         files, the image's manifest, config and layer)
  cold   k3bundle build --version V --arch amd64 --image HOST/bench/extra-images:1.0 ... -q
         with a fresh, empty --cache-dir (downloads, verifies, writes the bundle)
  warm   the same build with a cache that already holds everything, into a fresh -o folder

On the unlimited link the builder is CPU-bound, and its CPU seconds per GiB are compared with a
floor measured in the same run over the same bytes (warm page cache):

  floor  = sha256 passes x (one hashlib sha256 pass over every file, one core)
           + one copy (`cat FILE > NEW` of every file: read and write through user space, as a
             download's recv + write is)
  passes = the digests the design needs: the download's streaming sha256 (checked against
           upstream's sum; the manifest's sha256), the chunk digests when `k3bundle inspect
           --json` shows them (issue 13's format revision: a second digest over the same bytes),
           and the bundle's own sha256 (SHA256SUMS and the parts index: a pass over the bundle's
           bytes in order, which starts only once the manifest, the first member, is known)

Goals (issue 13): over 1 Gbit/s, cold build <= 1.05 x curl and warm build <= 0.3 x curl (the same
goals are applied at every limited rate); unlimited, cold build CPU/GiB <= 1.2 x floor; builder
peak RSS <= 100 MiB (the child's own ru_maxrss, via os.wait4).

    .venv/bin/python bench/build_vs_curl.py [--sizes 256M] [--rates 1G,100M,unlimited]
        [--runs 3] [--workdir DIR] [--strict]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._common import (  # noqa: E402
    GIB,
    Sample,
    Samples,
    Server,
    bench_parser,
    build_argv,
    bundle_path,
    check_disk,
    human,
    k3bundle,
    launcher_floor,
    load_note,
    log,
    parse_common,
    precompile,
    release_shape,
    run_child,
    serve,
    settle,
    sha256_argv,
    verdict,
    workdir,
    write_release,
)

MAX_COLD = 1.05
MAX_WARM = 0.3
MAX_CPU = 1.2
MAX_RSS_MIB = 100.0
VARIANTS = ("curl", "cold", "warm")


@dataclass
class Row:
    """The samples of one (size, rate)."""

    size: int
    rate: int
    payload: int
    samples: Samples = field(default_factory=Samples)


@dataclass
class Floor:
    """The unlimited case's CPU floor over one size's bytes."""

    size: int
    payload: int
    sha256_cpu: float
    copy_cpu: float
    passes: int

    @property
    def cpu(self) -> float:
        """Floor CPU seconds."""
        return self.passes * self.sha256_cpu + self.copy_cpu


def parse_rate(text: str) -> int:
    """'1G' -> 1e9 bits/s, '100M' -> 1e8, 'unlimited' or '0' -> 0 (decimal, as links are)."""
    value = text.strip().upper().removesuffix("BIT/S").removesuffix("BPS")
    if value in ("UNLIMITED", "0", "NONE"):
        return 0
    scale = {"K": 10**3, "M": 10**6, "G": 10**9}.get(value[-1:], 1)
    digits = value[:-1] if value[-1:] in "KMG" else value
    if not digits.isdigit() or int(digits) == 0:
        raise argparse.ArgumentTypeError(f"cannot use {text!r} as a rate (e.g. 1G, 100M)")
    return int(digits) * scale


def rate_name(rate: int) -> str:
    """1000000000 -> '1Gbit/s', 0 -> 'unlimited'."""
    if rate == 0:
        return "unlimited"
    for unit, scale in (("G", 10**9), ("M", 10**6), ("K", 10**3)):
        if rate % scale == 0:
            return f"{rate // scale}{unit}bit/s"
    return f"{rate}bit/s"


def curl_argv(server: Server, paths: Sequence[str], out: Path) -> List[str]:
    """One curl fetching every path in parallel into `out`."""
    argv = ["curl", "-sf", "-Z", "--parallel-max", "16", "--output-dir", str(out)]
    for path in paths:
        argv += ["-O", server.base_url + path]
    return argv


def run_once(
    variant: str, server: Server, paths: Sequence[str], work: Path, warm_cache: Path
) -> Sample:
    """One timed run into fresh folders, removed afterwards."""
    out, cache = work / f"out-{variant}", work / f"cache-{variant}"
    for folder in (out, cache):
        shutil.rmtree(folder, ignore_errors=True)
    out.mkdir()
    try:
        if variant == "curl":
            argv = curl_argv(server, paths, out)
        else:
            argv = build_argv(server, warm_cache if variant == "warm" else cache, out)
        settle(False)  # flush the previous run's dirty pages outside the timing
        return run_child(argv)
    finally:
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)


def chunk_digests(bundle: Path) -> bool:
    """True when `k3bundle inspect --json` shows per-chunk digests (the issue-13 format)."""
    done = subprocess.run(
        k3bundle("inspect", str(bundle), "--json"), capture_output=True, text=True, check=False
    )
    return done.returncode == 0 and "chunk" in done.stdout.lower()


def measure_floor(work: Path, size: int, files: Sequence[Path], payload: int, passes: int) -> Floor:
    """CPU of one hashlib sha256 pass and of one `cat` copy over `files` (warm, medians of 3)."""
    hashes, copies = [], []
    copy = work / "floor-copy"
    script = 'out=$1; shift; for f; do cat "$f" > "$out"; rm -f "$out"; done'
    run_child(sha256_argv(files))  # warm the page cache
    for _ in range(3):
        settle(False)
        hashes.append(run_child(sha256_argv(files)).cpu)
        settle(False)
        copies.append(run_child(["sh", "-c", script, "sh", str(copy), *map(str, files)]).cpu)
    hashes.sort()
    copies.sort()
    return Floor(size, payload, hashes[1], copies[1], passes)


def bench_size(
    work: Path, size: int, rates: Sequence[int], runs: int
) -> Tuple[List[Row], Optional[Floor]]:
    """Generate and serve one release; every rate's rounds; the floor when a rate is unlimited."""
    shape = release_shape(size)
    log(
        f"[{human(size)}] generating: binary {human(shape.binary)}, airgap images "
        f"{human(shape.airgap)}, extra image layer {human(shape.extra)} ..."
    )
    paths = write_release(work / "release", shape)
    files = sorted(p for p in (work / "release").rglob("*") if p.is_file())
    payload = sum(p.stat().st_size for p in files)
    warm_cache = work / "warm-cache"
    rows: List[Row] = []
    floor: Optional[Floor] = None
    with serve(work / "release") as server:
        log(f"[{human(size)}] filling the warm cache (untimed, unlimited) ...")
        first = work / "first-build"
        run_child(build_argv(server, warm_cache, first))
        passes = (2 if chunk_digests(bundle_path(first)) else 1) + 1  # + the bundle's sha256
        shutil.rmtree(first)
        for rate in rates:
            server.set_rate(rate)
            row = Row(size, rate, payload)
            if rate == 0:  # CPU-bound: one untimed run each first (code and bytes in cache)
                for variant in VARIANTS:
                    run_once(variant, server, paths, work, warm_cache)
            for index in range(runs):
                shift = index % len(VARIANTS)
                for variant in (*VARIANTS[shift:], *VARIANTS[:shift]):
                    sample = run_once(variant, server, paths, work, warm_cache)
                    row.samples.add(variant, sample)
                    log(
                        f"[{human(size)} {rate_name(rate)}] run {index + 1}/{runs} {variant:5s} "
                        f"{sample.seconds:7.3f} s (cpu {sample.cpu:6.3f} s) "
                        f"{sample.rss_mib:6.1f} MiB"
                    )
            rows.append(row)
    if 0 in rates:
        floor = measure_floor(work, size, files, payload, passes)
    shutil.rmtree(warm_cache, ignore_errors=True)
    shutil.rmtree(work / "release", ignore_errors=True)
    return rows, floor


def report(rows: Sequence[Row], floors: Dict[int, Floor], runs: int, rss_floor: float) -> bool:
    """Print the tables; True when every goal holds."""
    ok = True
    print()
    print(
        f"k3bundle build vs parallel curl over one shared token bucket, median of {runs} "
        "alternating runs"
    )
    print(
        f"goals: limited link: cold <= {MAX_COLD} x curl, warm <= {MAX_WARM} x curl; builder "
        f"peak RSS <= {MAX_RSS_MIB:.0f} MiB"
    )
    header = (
        f"{'size':>5} {'link':>11} {'variant':7} {'wall s':>7} {'MiB/s':>7} {'cpu s':>6} "
        f"{'ratio':>6} {'goal':>6} {'RSS MiB':>8}  verdict"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        curl = row.samples.median("curl")
        for variant in VARIANTS:
            seconds = row.samples.median(variant)
            ratio = seconds / curl
            rss = row.samples.peak_rss(variant)
            if variant == "curl":
                line, goal_s = "(baseline)", ""
            elif row.rate == 0:
                line = verdict([("rss", rss <= MAX_RSS_MIB)]) + " (time: info)"
                goal_s = ""
                ok = ok and line.startswith("PASS")
            else:
                goal = MAX_COLD if variant == "cold" else MAX_WARM
                line = verdict([("ratio", ratio <= goal), ("rss", rss <= MAX_RSS_MIB)])
                goal_s = f"<={goal}"
                ok = ok and line == "PASS"
            rate = row.payload / 1024**2 / seconds
            print(
                f"{human(row.size):>5} {rate_name(row.rate):>11} {variant:7} {seconds:7.3f} "
                f"{rate:7.0f} {row.samples.cpu(variant):6.2f} {ratio:6.2f} {goal_s:>6} "
                f"{rss:8.1f}  {line}"
            )
    limited = [row for row in rows if row.rate and row.size in floors]
    if limited:
        print(
            "the format's least cold time at a rate: the transfer (curl) + one sha256 pass over "
            "the bundle, which can\nonly start when the last payload byte (and so the manifest, "
            "the first member) is known:"
        )
    for row in limited:
        least = row.samples.median("curl") + floors[row.size].sha256_cpu
        print(
            f"  {human(row.size)} {rate_name(row.rate)}: {least:.3f} s = "
            f"{least / row.samples.median('curl'):.2f} x curl; cold measured "
            f"{row.samples.median('cold') / least:.2f} x that"
        )
    unlimited = [row for row in rows if row.rate == 0]
    if unlimited:
        print()
        print(f"unlimited link: CPU seconds per GiB (user+system), goal cold <= {MAX_CPU} x floor")
        header = (
            f"{'size':>5} {'sha256/GiB':>10} {'copy/GiB':>8} {'passes':>6} {'floor/GiB':>9} "
            f"{'cold/GiB':>8} {'warm/GiB':>8} {'curl/GiB':>8} {'cold/floor':>10}  verdict"
        )
        print(header)
        print("-" * len(header))
        for row in unlimited:
            floor = floors[row.size]
            gib = row.payload / GIB
            cold = row.samples.cpu("cold") / gib
            ratio = cold / (floor.cpu / gib)
            line = verdict([("cpu", ratio <= MAX_CPU)])
            ok = ok and line == "PASS"
            print(
                f"{human(row.size):>5} {floor.sha256_cpu / gib:10.3f} {floor.copy_cpu / gib:8.3f} "
                f"{floor.passes:6d} {floor.cpu / gib:9.3f} {cold:8.3f} "
                f"{row.samples.cpu('warm') / gib:8.3f} {row.samples.cpu('curl') / gib:8.3f} "
                f"{ratio:10.2f}  {line}"
            )
        print(
            "floor = passes x one hashlib sha256 pass (one core) + one `cat` copy of the same "
            "files, warm cache,\nmedians of 3; passes = the download's sha256 + the chunk "
            "digests (when the bundle carries them) + the\nbundle's own sha256 (SHA256SUMS). "
            "The server's CPU is not counted."
        )
    print(
        "ratio = median wall time / curl's at the same rate; cpu = user+system of the child and "
        f"its children;\nRSS = the largest single process's ru_maxrss (floor {rss_floor:.1f} "
        "MiB, the launcher's). A rate counts body bytes only."
    )
    print(load_note())
    return ok


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """The command line."""
    epilog = "100M at 1G of files takes 90 s a run: e.g. --sizes 256M,1G --rates 1G,unlimited."
    parser = bench_parser(__doc__, epilog, "256M", "release sizes")
    parser.add_argument(
        "--rates",
        default="1G,100M,unlimited",
        type=lambda text: [parse_rate(p) for p in text.split(",") if p.strip()],
        help="shared link rates in bit/s: 1G, 100M, unlimited (default: 1G,100M,unlimited)",
    )
    return parse_common(parser, argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark and print the tables."""
    args = parse_args(argv)
    if shutil.which("curl") is None:
        raise SystemExit("this benchmark needs curl on PATH")
    rows: List[Row] = []
    floors: Dict[int, Floor] = {}
    with workdir(args.workdir, "build-vs-curl-") as work:
        # release + warm cache + a cold cache + a bundle + curl's copy
        check_disk(work, 5 * max(args.sizes), "5x the largest size; use --workdir")
        precompile()
        rss_floor = launcher_floor()
        for size in args.sizes:
            folder = work / human(size)
            folder.mkdir()
            got, floor = bench_size(folder, size, args.rates, args.runs)
            rows += got
            if floor is not None:
                floors[size] = floor
            shutil.rmtree(folder, ignore_errors=True)
    ok = report(rows, floors, args.runs, rss_floor)
    if args.strict and not ok:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
