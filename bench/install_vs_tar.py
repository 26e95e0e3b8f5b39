"""Benchmark: `k3bundle install --root` (verify + place) against `tar -xf` of the same bundle.

For each size this writes a signed amd64 bundle (a small stand-in k3s binary plus three image
tarballs of random bytes), then alternates timed runs of

  tar      tar -xf bundle.tar -C FRESH_DIR
  install  python -m k3bundle.bundler install bundle.tar --pubkey KEY.pub --root FRESH_ROOT -q
  zipapp   python3 -I k3bundle-install.pyz install ... (signature checked through openssl)

each into a fresh folder that is removed afterwards. The page cache is never dropped: every run
reads a warm bundle, and every run writes into the page cache (dirty pages are flushed with sync
before each run, outside the timing). The goal is a median ratio install/tar <= 1.3 and an
installer peak RSS <= 64 MiB, whatever the bundle size.

    .venv/bin/python bench/install_vs_tar.py [--sizes 256M,1G] [--runs 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from k3bundle.bundler import keys
from k3bundle.bundler.writer import entry_for_file, write_bundle
from k3bundle.bundler.zipapp import write_zipapp
from k3bundle.installer.manifest import Entry, Manifest

REPO = Path(__file__).resolve().parent.parent
MIB = 1024**2
WRITE_CHUNK = 4 * MIB
BINARY_SIZE = 8 * MIB
IMAGE_SHARES = (0.6, 0.25, 0.15)
MAX_RATIO = 1.3
MAX_RSS_MIB = 64.0
VERSION = "v1.31.4+k3s1"
VARIANTS = ("tar", "install", "zipapp")


@dataclass
class Sample:
    """One timed child process: wall seconds, its own peak RSS and CPU seconds (user + system)."""

    seconds: float
    rss_mib: float
    cpu: float = 0.0


@dataclass
class SizeResult:
    """Every sample for one bundle size."""

    size: int
    bundle_bytes: int
    samples: Dict[str, List[Sample]] = field(default_factory=dict)

    def median(self, variant: str) -> float:
        """Median wall seconds of one variant."""
        return statistics.median(s.seconds for s in self.samples[variant])

    def cpu(self, variant: str) -> float:
        """Median CPU seconds (user + system) of one variant."""
        return statistics.median(s.cpu for s in self.samples[variant])

    def peak_rss(self, variant: str) -> float:
        """Largest peak RSS (MiB) seen over the runs of one variant."""
        return max(s.rss_mib for s in self.samples[variant])


def parse_size(text: str) -> int:
    """'256M', '1G', '512K' or a byte count (powers of 1024)."""
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    units = {"K": 1024, "M": MIB, "G": 1024**3}
    scale = units.get(value[-1:], 1)
    digits = value[:-1] if value[-1:] in units else value
    if not digits.isdigit() or int(digits) * scale < 16 * MIB:
        raise argparse.ArgumentTypeError(f"cannot use {text!r} as a bundle size (>= 16M)")
    return int(digits) * scale


def human(size: int) -> str:
    """1073741824 -> '1G', 268435456 -> '256M'."""
    for unit, scale in (("G", 1024**3), ("M", MIB), ("K", 1024)):
        if size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)


def write_random(path: Path, size: int) -> None:
    """A file of `size` random bytes, written in chunks (never held in memory)."""
    with open(path, "wb") as out:
        left = size
        while left:
            chunk = os.urandom(min(WRITE_CHUNK, left))
            out.write(chunk)
            left -= len(chunk)


def make_bundle(folder: Path, size: int, private_key: Path) -> Path:
    """A signed amd64 bundle of about `size` bytes; the payload files are removed afterwards."""
    payload = folder / "payload"
    payload.mkdir()
    images = size - BINARY_SIZE
    specs: List[Tuple[str, str, int, int]] = [("amd64/k3s", "k3s-binary", 0o755, BINARY_SIZE)]
    names = ("k3s-airgap-images-amd64.tar.zst", "extra-images-1.tar", "extra-images-2.tar")
    sizes = [int(images * share) for share in IMAGE_SHARES]
    sizes[0] += images - sum(sizes)
    for index, (name, part) in enumerate(zip(names, sizes)):
        kind = "airgap-images" if index == 0 else "images"
        specs.append((f"amd64/{name}", kind, 0o644, part))
    entries: List[Entry] = []
    files: Dict[str, Path] = {}
    for member, kind, mode, part in specs:
        local = payload / member.replace("/", "_")
        write_random(local, part)
        entries.append(entry_for_file(local, member, kind, arch="amd64", mode=mode))
        files[member] = local
    manifest = Manifest(VERSION, ("amd64",), tuple(entries))
    target = folder / "bundle.tar"
    write_bundle(target, manifest, files, keys.load_signer(private_key))
    shutil.rmtree(payload)
    os.sync()
    return target


# A lean launcher (python -I -S, about 8 MiB) forks the measured command and reports that child's
# own rusage. Spawning straight from this process would not do: a child forked or vforked from
# here inherits this process's RSS high-water mark into its ru_maxrss (Linux records the old mm's
# peak at exec), so `tar` would show the benchmark's own ~40 MiB. The launcher's RSS is the floor.
LAUNCHER = """
import os, sys, time
argv = sys.argv[1:]
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - start
cpu = usage.ru_utime + usage.ru_stime
print(repr(seconds), usage.ru_maxrss, repr(cpu), os.waitstatus_to_exitcode(status))
"""


def run_child(argv: Sequence[str], env: Optional[Mapping[str, str]] = None) -> Sample:
    """Run one command; its wall time (perf_counter) and its own peak RSS (os.wait4)."""
    launcher = [sys.executable, "-I", "-S", "-c", LAUNCHER, *argv]
    with tempfile.TemporaryFile() as errors:
        done = subprocess.run(launcher, stdout=subprocess.PIPE, stderr=errors, env=env, check=False)
        fields = done.stdout.split()
        if done.returncode != 0 or len(fields) != 4 or fields[3] != b"0":
            errors.seek(0)
            message = errors.read().decode(errors="replace").strip()
            raise SystemExit(f"failed: {' '.join(argv)}\n{message}")
    # ru_maxrss is KiB on Linux
    return Sample(float(fields[0]), int(fields[1]) / 1024, float(fields[2]))


@dataclass(frozen=True)
class Setup:
    """Paths shared by every run of one size."""

    bundle: Path
    pubkey: Path
    zipapp: Path
    scratch: Path


def command(variant: str, setup: Setup, out: Path) -> Tuple[List[str], Dict[str, str]]:
    """The argv and environment of one variant, writing into `out`."""
    env = dict(os.environ)
    if variant == "tar":
        return ["tar", "-xf", str(setup.bundle), "-C", str(out)], env
    args = ["install", str(setup.bundle), "--pubkey", str(setup.pubkey), "--root", str(out)]
    args += ["--arch", "amd64", "-q"]
    if variant == "install":
        return [sys.executable, "-m", "k3bundle.bundler", *args], env
    env["K3BUNDLE_VERIFY_WITH"] = "openssl"  # as on a host without cryptography
    return [sys.executable, "-I", str(setup.zipapp), *args], env


def run_once(variant: str, setup: Setup, index: int) -> Sample:
    """One timed run of `variant` into a fresh folder, removed afterwards."""
    out = setup.scratch / f"{variant}-{index}"
    out.mkdir()
    try:
        argv, env = command(variant, setup, out)
        os.sync()  # flush the previous run's dirty pages outside the timing
        return run_child(argv, env)
    finally:
        shutil.rmtree(out)


def bench_size(
    work: Path, size: int, runs: int, private_key: Path, setup_keys: Setup
) -> SizeResult:
    """Generate one bundle and time every variant `runs` times, interleaved."""
    folder = work / human(size)
    folder.mkdir()
    try:
        print(f"[{human(size)}] writing bundle ...", file=sys.stderr, flush=True)
        bundle = make_bundle(folder, size, private_key)
        setup = Setup(bundle, setup_keys.pubkey, setup_keys.zipapp, folder)
        result = SizeResult(size, bundle.stat().st_size, {v: [] for v in VARIANTS})
        for variant in VARIANTS:  # one untimed warm-up each: warm cache, imports compiled
            run_once(variant, setup, -1)
        for index in range(runs):
            # Rotate the order: whichever command runs right after another one's 1 GiB was
            # deleted pays for the kernel's clean-up, so each variant takes each position in turn.
            shift = index % len(VARIANTS)
            for variant in (*VARIANTS[shift:], *VARIANTS[:shift]):
                sample = run_once(variant, setup, index)
                result.samples[variant].append(sample)
                print(
                    f"[{human(size)}] run {index + 1}/{runs} {variant:8s}"
                    f" {sample.seconds:7.3f} s (cpu {sample.cpu:6.3f} s)"
                    f" {sample.rss_mib:6.1f} MiB",
                    file=sys.stderr,
                    flush=True,
                )
        return result
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def verdict(ratio: float, rss: float) -> str:
    """PASS when both goals hold, else FAIL naming which."""
    failed = [
        name for name, bad in (("ratio", ratio > MAX_RATIO), ("rss", rss > MAX_RSS_MIB)) if bad
    ]
    return "PASS" if not failed else "FAIL(" + ",".join(failed) + ")"


def report(results: Sequence[SizeResult], runs: int, floor: float) -> bool:
    """Print the table; True when every row passes."""
    print()
    print(
        f"install vs tar -xf, median of {runs} runs; warm page cache (nothing dropped), "
        f"goal: ratio <= {MAX_RATIO}, peak RSS <= {MAX_RSS_MIB:.0f} MiB"
    )
    header = (
        f"{'size':>6} {'variant':8} {'tar s':>7} {'inst s':>7} {'ratio':>6} "
        f"{'cpu ratio':>9} {'RSS MiB':>8} {'tar RSS':>8}  verdict"
    )
    print(header)
    print("-" * len(header))
    ok = True
    for result in results:
        tar, tar_cpu = result.median("tar"), result.cpu("tar")
        for variant in ("install", "zipapp"):
            seconds = result.median(variant)
            ratio = seconds / tar
            rss = result.peak_rss(variant)
            line = verdict(ratio, rss)
            ok = ok and line == "PASS"
            cpu_ratio = result.cpu(variant) / tar_cpu if tar_cpu else float("nan")
            print(
                f"{human(result.size):>6} {variant:8} {tar:7.3f} {seconds:7.3f} {ratio:6.2f} "
                f"{cpu_ratio:9.2f} {rss:8.1f} {result.peak_rss('tar'):8.1f}  {line}"
            )
    print(
        "install = python -m k3bundle.bundler install (cryptography); "
        "zipapp = python -I k3bundle-install.pyz install (openssl)"
    )
    print(
        "ratio = median wall time install / tar (the goal); cpu ratio = median user+system CPU, "
        "for information (less sensitive to a busy machine)"
    )
    print(f"RSS = the child's own ru_maxrss via os.wait4; floor {floor:.1f} MiB (the launcher's)")
    load = os.getloadavg()[0]
    print(f"load average (1 min) at the end: {load:.2f} on {os.cpu_count()} CPUs", end="")
    print(" -- a busy machine: wall times are noisy" if load > 0.5 else "")
    return ok


def precompile() -> None:
    """Write k3bundle's bytecode, as `pip install` does: a host never compiles it per run.

    Without this, PYTHONDONTWRITEBYTECODE (or a read-only checkout) would make every timed run
    compile the installer from source, and the benchmark would time the compiler.
    """
    for folder in ("installer", "bundler"):
        compileall.compile_dir(str(REPO / folder), quiet=1)


def default_workdir() -> Path:
    """A folder under the repository (same filesystem as the repo, not a tmpfs)."""
    return REPO / ".bench"


def check_disk(base: Path, need: int, why: str) -> None:
    """Refuse when the work dir's filesystem has less than `need` bytes free."""
    free = shutil.disk_usage(base).free
    if free < need:
        raise SystemExit(
            f"not enough free disk under {base}: {free / MIB:.0f} MiB free, "
            f"{need / MIB:.0f} MiB needed ({why})"
        )


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--sizes",
        default="256M,1G",
        type=lambda text: [parse_size(p) for p in text.split(",") if p.strip()],
        help="comma-separated bundle sizes (default: 256M,1G)",
    )
    return parse_common(parser, argv)


def parse_common(
    parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]
) -> argparse.Namespace:
    """Add the options every benchmark takes (--runs, --workdir, --strict) and parse."""
    parser.add_argument("--runs", type=int, default=3, help="timed runs per variant (default: 3)")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where to write (default: REPO/.bench)"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark and print the table."""
    args = parse_args(argv)
    sizes: List[int] = args.sizes
    base: Path = args.workdir or default_workdir()
    base.mkdir(parents=True, exist_ok=True)
    check_disk(base, 4 * max(sizes), "4x the largest bundle; use --workdir or smaller --sizes")
    work = Path(tempfile.mkdtemp(prefix="install-vs-tar-", dir=base))
    try:
        precompile()
        pair = keys.generate(str(work / "bench"), None)
        zipapp = write_zipapp(work / "k3bundle-install.pyz")
        shared = Setup(Path(), pair.public, zipapp, work)
        floor = run_child(["true"]).rss_mib
        results = [bench_size(work, size, args.runs, pair.private, shared) for size in sizes]
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if args.workdir is None:
            with contextlib.suppress(OSError):
                base.rmdir()
    ok = report(results, args.runs, floor)
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
