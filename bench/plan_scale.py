"""Benchmark: reading and planning a manifest must cost the same per entry at any size.

For N = 100, 1,000, 10,000 and 100,000 payload entries this times what `install` does before the
first payload byte is placed: `manifest.parse` of the canonical bytes, `plan_install`, and one
`Plan.placement_for` per entry (the install loop's lookup). It prints seconds, microseconds per
entry, and the per-entry cost relative to N = 1,000. Linear work keeps the ratio near 1; the
quadratic lookup this replaced made 96,000 entries take 17 minutes. Goal: ratio <= 3 at every N
from 1,000 up.

    .venv/bin/python bench/plan_scale.py [--sizes 100,1000,10000,100000] [--runs 3] [--strict]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time
from typing import Dict, List, Sequence, Tuple

from k3bundle.installer.format.manifest import Entry, Manifest, parse
from k3bundle.installer.host.plan import Options, plan_install

GOAL = 3.0
BASELINE = 1000


def manifest_bytes(count: int) -> bytes:
    """A valid amd64 manifest with a k3s binary and `count - 1` image archives."""
    sha = hashlib.sha256(b"x").hexdigest()
    entries = [Entry("amd64/k3s", 1, sha, "k3s-binary", 0o755, "amd64")]
    entries += [
        Entry(f"images/i{n}.tar", 1, sha, "images", 0o644, "amd64") for n in range(1, count)
    ]
    return Manifest("v1.31.4+k3s1", ("amd64",), tuple(entries)).to_bytes()


def plan_once(data: bytes) -> Tuple[float, float]:
    """Seconds to parse, then to plan and look up every entry's placement once."""
    start = time.perf_counter()
    manifest = parse(data)
    parsed = time.perf_counter()
    options = Options(bundle="bundle.tar", root="/bench-root")
    plan = plan_install(manifest, "0" * 64, options, "amd64", set())
    missing = [e.path for e in manifest.entries if plan.placement_for(e) is None]
    planned = time.perf_counter()
    assert not missing, missing[:3]
    return parsed - start, planned - parsed


def measure(sizes: Sequence[int], runs: int) -> Dict[int, Tuple[float, float]]:
    """Median (parse, plan) seconds per size."""
    results: Dict[int, Tuple[float, float]] = {}
    for size in sizes:
        data = manifest_bytes(size)
        plan_once(data)  # warm-up
        timings = [plan_once(data) for _ in range(runs)]
        results[size] = (
            statistics.median(t[0] for t in timings),
            statistics.median(t[1] for t in timings),
        )
    return results


def report(results: Dict[int, Tuple[float, float]]) -> List[float]:
    """Print one line per size; return the per-entry ratios of sizes >= the baseline size."""
    base_size = BASELINE if BASELINE in results else next(iter(results))
    base = sum(results[base_size]) / base_size
    ratios = []
    print(f"{'entries':>8} {'parse s':>8} {'plan s':>8} {'us/entry':>9} {'ratio':>6}")
    for size, (parsing, planning) in results.items():
        per_entry = (parsing + planning) / size
        if size >= base_size:  # below the baseline, fixed costs (milliseconds) dominate
            ratios.append(per_entry / base)
        print(
            f"{size:>8} {parsing:>8.3f} {planning:>8.3f} {per_entry * 1e6:>9.1f} "
            f"{per_entry / base:>6.2f}"
        )
    return ratios


def main(argv: Sequence[str]) -> int:
    """Run the benchmark; exit 1 with --strict when a ratio misses the goal."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000,100000")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--strict", action="store_true")
    args = parser.parse_args(argv)
    ratios = report(measure([int(s) for s in args.sizes.split(",")], args.runs))
    worst = max(ratios)
    print(f"worst per-entry ratio {worst:.2f} (goal <= {GOAL})")
    return 1 if args.strict and worst > GOAL else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
