"""Benchmark: `k3bundle build` pulling extra images against `skopeo copy` of the same images.

A local registry (Debian's docker-registry on 127.0.0.1, via tests/oci_registry.py) gets about ten
single-platform linux/amd64 images of about --size bytes in all, written straight into an OCI
layout (tar+gzip layers of random bytes; several images share a base layer) and pushed with
skopeo. A tiny stand-in k3s release is served by tests/release_server.py, so the build spends its
time on images. Each run then times, interleaved and into fresh folders:

  skopeo  `skopeo copy --src-tls-verify=false docker://HOST/REPO:TAG oci-archive:OUT/N.tar` for
          each image in turn (what a user would otherwise script)
  build   python -m k3bundle.bundler build --arch amd64 --images-format tar --image ... with a
          fresh, empty --cache-dir (pulls, verifies, writes one OCI archive, writes the bundle)
  zst     the same build with --images-format zst (for information: it also compresses)

Goal (from the issue): median build / skopeo <= 1.0 and builder peak RSS <= 100 MiB. Also printed:
bytes stored with layer sharing (our one archive) and without (the sum of skopeo's archives).

    .venv/bin/python bench/images_vs_skopeo.py [--size 512M] [--runs 3] [--workdir DIR] [--strict]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import os
import shutil
import statistics
import sys
import tarfile
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parent.parent
# Run as `python bench/images_vs_skopeo.py`, sys.path[0] is bench/: make tests/, bench/ importable.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._common import bench_parser, parse_common  # noqa: E402
from bench.install_vs_tar import Sample, human, parse_size, run_child  # noqa: E402
from k3bundle.installer.format.verify import inspect_bundle  # noqa: E402
from tests.oci_registry import OCI_MANIFEST, LocalRegistry, push  # noqa: E402
from tests.release_server import ReleaseServer, generate_release  # noqa: E402

MIB = 1024**2
VERSION = "v1.31.4+k3s1"
MAX_RATIO = 1.0
MAX_RSS_MIB = 100.0
VARIANTS = ("skopeo", "build", "zst")
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
# (image name, base layer or None, share of --size for its own layer); bases are shared.
BASES = {"base-a": 0.125, "base-b": 0.0625}
IMAGES: Tuple[Tuple[str, Optional[str], float], ...] = (
    ("app-1", "base-a", 0.025),
    ("app-2", "base-a", 0.025),
    ("app-3", "base-a", 0.025),
    ("app-4", "base-a", 0.025),
    ("svc-1", "base-b", 0.03),
    ("svc-2", "base-b", 0.03),
    ("svc-3", "base-b", 0.03),
    ("tool-1", None, 0.04),
    ("tool-2", None, 0.04),
    ("tool-3", None, 0.04),
)


class _Hashing:
    """A write-only stream that hashes what passes through to `sink`."""

    def __init__(self, sink: IO[bytes]) -> None:
        self.sink, self.digest, self.size = sink, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        """Hash and forward."""
        self.digest.update(data)
        self.size += len(data)
        return self.sink.write(data)


def write_blob(layout: Path, data: bytes) -> Dict[str, object]:
    """Store bytes as a blob; its descriptor (without mediaType)."""
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def write_layer(layout: Path, name: str, size: int) -> Tuple[Dict[str, object], str]:
    """A tar+gzip layer holding one file of `size` random bytes: (descriptor, diff_id)."""
    scratch = layout / f"{name}.part"
    with open(scratch, "wb") as raw:
        outer = _Hashing(raw)
        with gzip.GzipFile(fileobj=outer, mode="wb", compresslevel=1, mtime=0) as packed:  # type: ignore[call-overload]
            inner = _Hashing(packed)
            with tarfile.open(fileobj=inner, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                info = tarfile.TarInfo(f"{name}.bin")
                info.size, info.mode, info.mtime = size, 0o644, 0
                with tempfile.TemporaryFile() as data:
                    left = size
                    while left:
                        chunk = os.urandom(min(4 * MIB, left))
                        data.write(chunk)
                        left -= len(chunk)
                    data.seek(0)
                    tar.addfile(info, data)
    digest = outer.digest.hexdigest()
    scratch.rename(layout / "blobs/sha256" / digest)
    descriptor = {"mediaType": LAYER_TYPE, "digest": f"sha256:{digest}", "size": outer.size}
    return descriptor, f"sha256:{inner.digest.hexdigest()}"


def make_layout(layout: Path, total: int) -> List[str]:
    """Write every image into one OCI layout; return the refs in it."""
    (layout / "blobs/sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    bases = {name: write_layer(layout, name, int(total * share)) for name, share in BASES.items()}
    index = []
    for name, base, share in IMAGES:
        layers = [bases[base]] if base else []
        layers.append(write_layer(layout, name, int(total * share)))
        config = {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [diff for _, diff in layers]},
        }
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": CONFIG_TYPE, **write_blob(layout, _json(config))},
            "layers": [descriptor for descriptor, _ in layers],
        }
        entry = {"mediaType": OCI_MANIFEST, **write_blob(layout, _json(manifest))}
        entry["annotations"] = {"org.opencontainers.image.ref.name": name}
        index.append(entry)
    doc = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json"}
    (layout / "index.json").write_bytes(_json({**doc, "manifests": index}))
    return [name for name, _, _ in IMAGES]


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Setup:
    """What every run needs."""

    host: str
    refs: Tuple[str, ...]  # HOST/bench/NAME:1.0
    release_url: str
    scratch: Path
    home: Path


@dataclass
class Results:
    """Every sample, and the bytes each side stored."""

    samples: Dict[str, List[Sample]] = field(default_factory=lambda: {v: [] for v in VARIANTS})
    skopeo_bytes: int = 0
    archive_bytes: Dict[str, int] = field(default_factory=dict)

    def median(self, variant: str) -> float:
        """Median wall seconds of one variant."""
        return statistics.median(s.seconds for s in self.samples[variant])

    def peak_rss(self, variant: str) -> float:
        """Largest peak RSS (MiB) seen over the runs of one variant."""
        return max(s.rss_mib for s in self.samples[variant])


# Each copy in turn, as a user's script would; stops at the first failure.
SKOPEO_SCRIPT = """
out=$1; shift; n=0
for ref; do n=$((n+1))
  skopeo copy --quiet --src-tls-verify=false "docker://$ref" "oci-archive:$out/$n.tar" || exit 1
done
"""


def argv_for(variant: str, setup: Setup, out: Path) -> List[str]:
    """The command of one variant, writing into `out`."""
    if variant == "skopeo":
        return ["sh", "-c", SKOPEO_SCRIPT, "skopeo", str(out), *setup.refs]
    argv = [sys.executable, "-m", "k3bundle.bundler", "build", "--version", VERSION]
    argv += ["--arch", "amd64", "--release-url", setup.release_url, "-q"]
    argv += ["--images-format", "tar" if variant == "build" else "zst"]
    argv += ["--cache-dir", str(out / "cache"), "-o", str(out / "dist")]
    argv += ["--insecure-registry", setup.host]
    for ref in setup.refs:
        argv += ["--image", ref]
    return argv


def run_once(variant: str, setup: Setup, index: int, results: Results) -> Sample:
    """One timed run into a fresh folder (removed afterwards); records the bytes stored."""
    out = setup.scratch / f"{variant}-{index}"
    out.mkdir()
    env = {**os.environ, "HOME": str(setup.home)}
    env["REGISTRY_AUTH_FILE"] = str(setup.home / "auth.json")
    try:
        os.sync()  # flush the previous run's dirty pages outside the timing
        sample = run_child(argv_for(variant, setup, out), env)
        if variant == "skopeo":
            results.skopeo_bytes = sum(p.stat().st_size for p in out.glob("*.tar"))
        else:
            bundle = next((out / "dist").glob("*.tar"))
            files = inspect_bundle(str(bundle))["files"]
            results.archive_bytes[variant] = sum(f["size"] for f in files if f["kind"] == "images")
        return sample
    finally:
        shutil.rmtree(out)


def bench(setup: Setup, runs: int) -> Results:
    """One untimed warm-up per variant, then `runs` rounds in rotating order."""
    results = Results()
    for variant in VARIANTS:
        run_once(variant, setup, -1, results)
    for index in range(runs):
        shift = index % len(VARIANTS)
        for variant in (*VARIANTS[shift:], *VARIANTS[:shift]):
            sample = run_once(variant, setup, index, results)
            results.samples[variant].append(sample)
            print(
                f"run {index + 1}/{runs} {variant:7s} {sample.seconds:7.3f} s "
                f"(cpu {sample.cpu:6.3f} s) {sample.rss_mib:6.1f} MiB",
                file=sys.stderr,
                flush=True,
            )
    return results


def report(results: Results, runs: int, logical: int, floor: float) -> bool:
    """Print the table; True when the goals hold."""
    skopeo = results.median("skopeo")
    print()
    print(
        f"extra images: k3bundle build vs skopeo copy, {len(IMAGES)} images, "
        f"{logical / MIB:.0f} MiB in all, median of {runs} runs, cold cache; "
        f"goal: ratio <= {MAX_RATIO}, builder peak RSS <= {MAX_RSS_MIB:.0f} MiB"
    )
    header = f"{'variant':8} {'seconds':>8} {'ratio':>6} {'RSS MiB':>8}  verdict"
    print(header)
    print("-" * len(header))
    print(f"{'skopeo':8} {skopeo:8.3f} {1.0:6.2f} {results.peak_rss('skopeo'):8.1f}  baseline")
    ok = True
    for variant in ("build", "zst"):
        seconds, rss = results.median(variant), results.peak_rss(variant)
        ratio = seconds / skopeo
        failed = [n for n, bad in (("ratio", ratio > MAX_RATIO), ("rss", rss > MAX_RSS_MIB)) if bad]
        line = "PASS" if not failed else "FAIL(" + ",".join(failed) + ")"
        if variant == "build":
            ok = not failed
        else:
            line = f"info ({line})"
        print(f"{variant:8} {seconds:8.3f} {ratio:6.2f} {rss:8.1f}  {line}")
    print()
    print(
        f"bytes without layer sharing (skopeo, one archive per image): {results.skopeo_bytes:>12,}"
    )
    for variant, size in sorted(results.archive_bytes.items()):
        print(f"bytes with layer sharing (k3bundle {variant} archive):           {size:>12,}")
    print(
        "build = --images-format tar (same output format as skopeo's oci-archive); "
        "zst = --images-format zst (also compresses, for information)"
    )
    print(f"RSS = the child's own ru_maxrss via os.wait4; floor {floor:.1f} MiB (the launcher's)")
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    return ok


def check_tools() -> None:
    """skopeo and docker-registry must be installed."""
    missing = [t for t in ("skopeo", "docker-registry") if shutil.which(t) is None]
    if missing:
        raise SystemExit(f"missing tools: {', '.join(missing)}")


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """The command line."""
    parser = bench_parser(__doc__)
    parser.add_argument(
        "--size", default="512M", type=parse_size, help="images in all, shared layers counted once "
        "per image (default: 512M)",
    )  # fmt: skip
    return parse_common(parser, argv)


def prepare(work: Path, total: int, registry: LocalRegistry) -> List[str]:
    """Write the layout and push every image; the refs as HOST/bench/NAME:1.0."""
    print(f"writing {len(IMAGES)} images ({human(total)}) ...", file=sys.stderr, flush=True)
    layout = work / "layout"
    names = make_layout(layout, total)
    print("pushing with skopeo ...", file=sys.stderr, flush=True)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda n: push(layout, n, registry.host, f"bench/{n}:1.0", all=False), names))
    shutil.rmtree(layout)
    return [f"{registry.host}/bench/{name}:1.0" for name in names]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark and print the table."""
    args = parse_args(argv)
    check_tools()
    base: Path = args.workdir or REPO / ".bench"
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="images-vs-skopeo-", dir=base))
    try:
        generate_release(work / "release", VERSION, ("amd64",), 64 * 1024, ("tar", "tar.zst"))
        (work / "home").mkdir()
        with LocalRegistry(work / "registry", reuse=False) as registry, ReleaseServer(
            work / "release", {"stable": VERSION}
        ) as server:
            refs = prepare(work, args.size, registry)
            setup = Setup(registry.host, tuple(refs), server.release_url, work, work / "home")
            floor = run_child(["true"]).rss_mib
            results = bench(setup, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if args.workdir is None:
            with contextlib.suppress(OSError):
                base.rmdir()
    logical = sum(int(args.size * (s + (BASES[b] if b else 0))) for _, b, s in IMAGES)
    ok = report(results, args.runs, logical, floor)
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
