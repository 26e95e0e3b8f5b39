"""Benchmark: `k3bundle install --root` (verify + place) against `tar -xf` of the same bundle.

For each size, `k3bundle build` (through its command line, from bench/_servers.py on 127.0.0.1)
writes a signed amd64 bundle shaped like a real release: ONE airgap image tarball of 75 % of the
bytes, a 64 MiB k3s binary (size/8 below 512 MiB) and an extra-images OCI archive of the rest;
once as a single file and once split into parts (`--split`, a quarter of the bundle each). Then,
per layout and per page-cache state, it alternates (rotating the order every round) timed runs of

  tar      tar -xf bundle.tar -C FRESH          (split: cat bundle.tar.0* | tar -xf - -C FRESH)
  install  k3bundle install BUNDLE --pubkey KEY.pub --root FRESH --arch amd64 -q
  zipapp   python3 -I k3bundle-install.pyz install ... (the build's zipapp, the host's python3,
           signature checked through openssl; warm cache only)
  verify   k3bundle verify BUNDLE --pubkey KEY.pub (read + hash only: for information)
  sha256   one hashlib sha256 pass over the bundle's bytes on one core (for information: what
           a single-stream verify costs at least; warm cache only)

each into a fresh folder removed afterwards. `warm`: nothing dropped, the bundle is in the page
cache. `cold`: `sync; echo 3 > /proc/sys/vm/drop_caches` before every run of every tool (needs
root; skipped with a note otherwise), as when a bundle is read from a USB stick on a host that
just booted (Python's own files are read from disk too). `medium`: dropped the same way, then
Python's and k3bundle's own files read back: a USB stick on a running host.

Goals (issue 13): warm install <= 1.3 x tar at every size; cold (and medium) install <= 1.05 x
tar in the same state;
installer peak RSS <= 64 MiB (the child's own ru_maxrss, via os.wait4).

    .venv/bin/python bench/install_vs_tar.py [--sizes 256M,1G] [--caches warm,cold]
        [--layouts single,split] [--runs 3] [--workdir DIR] [--strict]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Sample, human, parse_size and run_child stay importable from here
# (bench/images_vs_skopeo.py uses them).
from bench._common import (  # noqa: E402
    MIB,
    Sample,
    Samples,
    bench_parser,
    build_argv,
    bundle_files,
    bundle_path,
    can_drop_caches,
    check_disk,
    human,
    k3bundle,
    keygen,
    launcher_floor,
    load_note,
    log,
    parse_common,
    parse_size,
    precompile,
    release_shape,
    run_child,
    run_quiet,
    serve,
    settle,
    sha256_argv,
    verdict,
    warm_tools,
    workdir,
    write_release,
)

__all__ = ["Sample", "human", "main", "parse_size", "run_child"]

WARM_GOAL = 1.3
COLD_GOAL = 1.05
MAX_RSS_MIB = 64.0
TIMED = ("tar", "install", "zipapp")
INFO = ("verify", "sha256")


@dataclass(frozen=True)
class Bundle:
    """One built bundle: its layout, what to hand the installer, its bytes in order."""

    layout: str
    argument: Path
    files: Tuple[Path, ...]
    zipapp: Path

    @property
    def size(self) -> int:
        """Bytes on disk (all parts)."""
        return sum(p.stat().st_size for p in self.files)


@dataclass
class Row:
    """The samples of one (size, layout, cache state)."""

    size: int
    layout: str
    cache: str
    bundle_bytes: int
    samples: Samples = field(default_factory=Samples)


def host_python() -> str:
    """The host's python3 (outside the venv) for the zipapp, else this one."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    return sys.executable


def command(
    variant: str, bundle: Bundle, pubkey: Path, out: Path
) -> Tuple[List[str], Dict[str, str]]:
    """The argv and environment of one variant, writing into `out`."""
    env = dict(os.environ)
    files = [str(p) for p in bundle.files]
    if variant == "tar":
        if len(files) == 1:
            return ["tar", "-xf", files[0], "-C", str(out)], env
        script = 'out=$1; shift; cat "$@" | tar -xf - -C "$out"'
        return ["sh", "-c", script, "sh", str(out), *files], env
    if variant == "sha256":
        return sha256_argv(bundle.files), env
    if variant == "verify":
        return k3bundle("verify", str(bundle.argument), "--pubkey", str(pubkey), "-q"), env
    args = ["install", str(bundle.argument), "--pubkey", str(pubkey), "--root", str(out)]
    args += ["--arch", "amd64", "-q"]
    if variant == "install":
        return k3bundle(*args), env
    env["K3BUNDLE_VERIFY_WITH"] = "openssl"  # as on a host without cryptography
    return [host_python(), "-I", str(bundle.zipapp), *args], env


def run_once(variant: str, bundle: Bundle, pubkey: Path, scratch: Path, cache: str) -> Sample:
    """One timed run of `variant` into a fresh folder, removed afterwards, in page-cache state
    `cache` (warm, medium or cold)."""
    out = scratch / f"out-{variant}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    try:
        argv, env = command(variant, bundle, pubkey, out)
        settle(cache != "warm")  # outside the timing: flush the previous run's dirty pages
        if cache == "medium":  # (and drop them) then, for `medium`, warm the host's own files
            warm_tools()
        return run_child(argv, env)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def make_bundles(work: Path, size: int, layouts: Sequence[str], key: Path) -> List[Bundle]:
    """Build the bundle of `size` once per layout with `k3bundle build`; sources are removed."""
    shape = release_shape(size)
    log(
        f"[{human(size)}] generating the release: binary {human(shape.binary)}, airgap images "
        f"{human(shape.airgap)}, extra images {human(shape.extra)} ..."
    )
    write_release(work / "release", shape)
    bundles = []
    split = max(16 * MIB, size // 4)
    with serve(work / "release") as server:
        for layout in layouts:
            log(f"[{human(size)}] k3bundle build ({layout}) ...")
            out = work / f"bundle-{layout}"
            argv = build_argv(
                server, work / "cache", out, key, split if layout == "split" else None
            )
            run_quiet(argv, "k3bundle build")
            files = tuple(bundle_files(out))
            bundles.append(Bundle(layout, bundle_path(out), files, out / "k3bundle-install.pyz"))
    shutil.rmtree(work / "release")
    shutil.rmtree(work / "cache")
    return bundles


def bench_row(
    bundle: Bundle,
    size: int,
    cache: str,
    args: argparse.Namespace,
    pubkey: Path,
    scratch: Path,
) -> Row:
    """Every variant `runs` times, interleaved, the order rotating each round."""
    drop, runs = cache != "warm", int(args.runs)
    variants = [v for v in (*TIMED, *INFO) if v in args.variants]
    variants = [v for v in variants if not (drop and v in ("zipapp", "sha256"))]
    if not bundle.zipapp.exists():
        variants = [v for v in variants if v != "zipapp"]
    row = Row(size, bundle.layout, cache, bundle.size)
    if not drop:  # one untimed run: the bundle and the code in the page cache
        run_once("install", bundle, pubkey, scratch, "warm")
    for index in range(runs):
        # Whichever command runs right after another one's output was deleted pays for the
        # kernel's clean-up, so each variant takes each position in turn.
        shift = index % len(variants)
        for variant in (*variants[shift:], *variants[:shift]):
            sample = run_once(variant, bundle, pubkey, scratch, cache)
            row.samples.add(variant, sample)
            log(
                f"[{human(size)} {bundle.layout} {cache}] run {index + 1}/{runs} {variant:9s}"
                f" {sample.seconds:7.3f} s (cpu {sample.cpu:6.3f} s) {sample.rss_mib:6.1f} MiB"
            )
    return row


def report(rows: Sequence[Row], runs: int, floor: float, note: str) -> bool:
    """Print the table; True when every goal holds."""
    print()
    print(
        f"install vs tar -xf, real-release shape (75 % one image tarball), median of {runs} "
        "alternating runs"
    )
    print(
        f"goals: warm install <= {WARM_GOAL} x tar, cold install <= {COLD_GOAL} x cold tar, "
        f"installer peak RSS <= {MAX_RSS_MIB:.0f} MiB"
    )
    header = (
        f"{'size':>5} {'layout':6} {'cache':5} {'variant':9} {'tar s':>7} {'s':>7} {'GiB/s':>6} "
        f"{'ratio':>6} {'goal':>6} {'cpu s':>7} {'RSS MiB':>8}  verdict"
    )
    print(header)
    print("-" * len(header))
    ok = True
    for row in rows:
        tar = row.samples.median("tar")
        for variant in (*TIMED, *INFO):
            if variant not in row.samples.runs:
                continue
            seconds = row.samples.median(variant)
            ratio = seconds / tar
            rss = row.samples.peak_rss(variant)
            rate = row.bundle_bytes / 1024**3 / seconds
            goal = WARM_GOAL if row.cache == "warm" else COLD_GOAL
            if variant in ("install", "zipapp"):
                line = verdict([("ratio", ratio <= goal), ("rss", rss <= MAX_RSS_MIB)])
                ok = ok and line == "PASS"
                goal_s = f"<={goal}"
            else:
                line, goal_s = "(baseline)" if variant == "tar" else "(info)", ""
            print(
                f"{human(row.size):>5} {row.layout:6} {row.cache:5} {variant:9} {tar:7.3f} "
                f"{seconds:7.3f} {rate:6.2f} {ratio:6.2f} {goal_s:>6} "
                f"{row.samples.cpu(variant):7.2f} {rss:8.1f}  {line}"
            )
    print(
        "ratio = median wall time / tar's in the same layout and cache state; cpu = median "
        "user+system CPU\nof the child and its children; RSS = the largest single process's "
        f"ru_maxrss via os.wait4 (floor {floor:.1f} MiB,\nthe launcher's). split = "
        "parts of a quarter of the bundle; tar reads them through `cat | tar -xf -`."
    )
    if note:
        print(note)
    print(load_note())
    return ok


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """The command line."""
    epilog = "Sizes 8G and up take minutes each: e.g. --sizes 256M,1G,8G."
    parser = bench_parser(__doc__, epilog, "256M,1G", "bundle sizes")
    parser.add_argument(
        "--caches",
        default="warm,medium,cold",
        help="page-cache states: warm (nothing dropped), cold (dropped before every run), "
        "medium (dropped, then Python's and k3bundle's files read back); default: all three",
    )
    parser.add_argument(
        "--layouts",
        default="single,split",
        help="single (one bundle.tar), split (build --split into parts); default: single,split",
    )
    parser.add_argument("--no-split", action="store_true", help="same as --layouts single")
    parser.add_argument(
        "--variants",
        default=",".join((*TIMED, *INFO)),
        help="what to time besides tar (always): install, zipapp, verify, sha256 "
        "(default: all; zipapp and sha256 run with a warm cache only)",
    )
    args = parse_common(parser, argv)
    args.caches = [c for c in args.caches.split(",") if c]
    args.variants = {"tar", *(v for v in args.variants.split(",") if v)}
    if args.variants - {*TIMED, *INFO}:
        parser.error(f"--variants takes {', '.join((*TIMED, *INFO))}")
    args.layouts = ["single"] if args.no_split else [x for x in args.layouts.split(",") if x]
    if set(args.caches) - {"warm", "medium", "cold"} or not args.caches:
        parser.error("--caches takes warm, medium and/or cold")
    if set(args.layouts) - {"single", "split"} or not args.layouts:
        parser.error("--layouts takes single and/or split")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark and print the table."""
    args = parse_args(argv)
    sizes: List[int] = args.sizes
    caches: List[str] = args.caches
    note = ""
    if {"cold", "medium"} & set(caches) and not can_drop_caches():
        caches = [c for c in caches if c == "warm"]
        note = "NOTE: cold runs skipped: dropping the page cache needs root (/proc/sys/vm)"
        log(note)
    if not caches:
        print(note)
        return 0
    rows: List[Row] = []
    with workdir(args.workdir, "install-vs-tar-") as work:
        # release + cache + both bundles at build time; the bundles and one output later
        check_disk(work, 4 * max(sizes), "4x the largest size; use --workdir or smaller --sizes")
        precompile()
        key, pubkey = keygen(work / "keys")
        floor = launcher_floor()
        for size in sizes:
            folder = work / human(size)
            folder.mkdir()
            try:
                bundles = make_bundles(folder, size, args.layouts, key)
                for bundle in bundles:
                    for cache in caches:
                        rows.append(bench_row(bundle, size, cache, args, pubkey, folder))
            finally:
                shutil.rmtree(folder, ignore_errors=True)
                subprocess.run(["sync"], check=False)
    ok = report(rows, args.runs, floor, note)
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
