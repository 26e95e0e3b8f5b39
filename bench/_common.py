"""What the benchmarks share: the timing launcher, sizes, the release-shaped payload, the CLI.

Not a benchmark itself (`make bench` skips bench/_*.py). Everything k3bundle does here goes through
its command line (`.venv/bin/k3bundle build|install|inspect|keygen|installer-zipapp`), never
through its modules, so the benchmarks time what a user runs whatever the package layout is.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.release_server import binary_name, checksum_name, image_name  # noqa: E402

KIB = 1024
MIB = 1024**2
GIB = 1024**3
VERSION = "v1.31.4+k3s1"
ARCH = "amd64"
IMAGES_FORMAT = "tar"  # --images-format tar: no compression of random bytes at build time
IMAGE_REPO = "bench/extra-images"
IMAGE_TAG = "1.0"
WRITE_CHUNK = 4 * MIB
POOL = 64 * MIB


@dataclass
class Sample:
    """One timed child process: wall seconds, its own peak RSS and CPU seconds (user + system)."""

    seconds: float
    rss_mib: float
    cpu: float = 0.0


@dataclass
class Samples:
    """The samples of several variants, with medians and peaks."""

    runs: Dict[str, List[Sample]] = field(default_factory=dict)

    def add(self, variant: str, sample: Sample) -> None:
        """Record one run."""
        self.runs.setdefault(variant, []).append(sample)

    def median(self, variant: str) -> float:
        """Median wall seconds of one variant."""
        return statistics.median(s.seconds for s in self.runs[variant])

    def cpu(self, variant: str) -> float:
        """Median CPU seconds (user + system) of one variant."""
        return statistics.median(s.cpu for s in self.runs[variant])

    def peak_rss(self, variant: str) -> float:
        """Largest peak RSS (MiB) over the runs of one variant."""
        return max(s.rss_mib for s in self.runs[variant])


def parse_size(text: str) -> int:
    """'256M', '1G', '512K' or a byte count (powers of 1024)."""
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    units = {"K": KIB, "M": MIB, "G": GIB}
    scale = units.get(value[-1:], 1)
    digits = value[:-1] if value[-1:] in units else value
    if not digits.isdigit() or int(digits) * scale < 16 * MIB:
        raise argparse.ArgumentTypeError(f"cannot use {text!r} as a bundle size (>= 16M)")
    return int(digits) * scale


def parse_sizes(text: str) -> List[int]:
    """'256M,1G' -> [268435456, 1073741824]."""
    return [parse_size(p) for p in text.split(",") if p.strip()]


def human(size: int) -> str:
    """1073741824 -> '1G', 268435456 -> '256M'."""
    for unit, scale in (("G", GIB), ("M", MIB), ("K", KIB)):
        if size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)


def log(text: str) -> None:
    """Progress on stderr (the tables go to stdout)."""
    print(text, file=sys.stderr, flush=True)


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
    """Run one command; its wall time (perf_counter), own peak RSS and CPU (os.wait4).

    CPU and RSS cover the command and the children it waited for (RUSAGE_CHILDREN semantics
    of wait4: the peak is the largest single process's, the CPU is the sum).
    """
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


# sha256 of every named file in one pass each, with hashlib (OpenSSL, as k3bundle hashes), 1 MiB
# reads: the one-core hashing floor. (coreutils sha256sum is 3-5x slower on this kind of machine.)
SHA256_SCRIPT = """
import hashlib, sys
for name in sys.argv[1:]:
    digest = hashlib.sha256()
    with open(name, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    print(digest.hexdigest(), name)
"""


def sha256_argv(files: Sequence[Path]) -> List[str]:
    """A child that sha256-hashes `files` one after another on one core (hashlib)."""
    return [sys.executable, "-I", "-S", "-c", SHA256_SCRIPT, *map(str, files)]


def launcher_floor() -> float:
    """The launcher's own peak RSS (MiB): the smallest RSS any row can show."""
    return run_child(["true"]).rss_mib


def can_drop_caches() -> bool:
    """True when this process may write /proc/sys/vm/drop_caches (root, not read-only)."""
    return os.geteuid() == 0 and os.access("/proc/sys/vm/drop_caches", os.W_OK)


def settle(drop: bool) -> None:
    """Before a timed run: flush dirty pages (always) and drop the page cache (when `drop`)."""
    os.sync()
    if drop:
        with open("/proc/sys/vm/drop_caches", "w", encoding="ascii") as knob:
            knob.write("3\n")


def warm_tools() -> None:
    """Read Python's and k3bundle's own files into the page cache (after `settle(True)`): the
    state of a host whose disk is warm while the bundle comes from a cold USB stick."""
    import sysconfig

    folders = {
        Path(sysconfig.get_paths()["stdlib"]),
        REPO / ".venv",
        REPO / "bundler",
        REPO / "installer",
    }
    for folder in folders:
        for path in folder.rglob("*"):
            if path.suffix in (".py", ".pyc", ".so") and path.is_file():
                with contextlib.suppress(OSError), open(path, "rb") as handle:
                    while handle.read(1 << 20):
                        pass
    subprocess.run(k3bundle("--help"), capture_output=True, check=False)


def k3bundle(*args: str) -> List[str]:
    """The argv of the `k3bundle` console script installed next to this Python."""
    script = Path(sys.executable).with_name("k3bundle")
    found = str(script) if script.exists() else shutil.which("k3bundle")
    if found is None:
        raise SystemExit("no k3bundle command next to this Python or on PATH: run `make install`")
    return [found, *args]


def run_quiet(argv: Sequence[str], what: str) -> str:
    """Run an untimed set-up command; its stdout, or exit naming `what` with its stderr."""
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{what} failed (exit {done.returncode}): {' '.join(argv)}\n{done.stderr}")
    return done.stdout


def precompile() -> None:
    """Write k3bundle's bytecode, as `pip install` does: a host never compiles it per run.

    Without this, PYTHONDONTWRITEBYTECODE (or a read-only checkout) would make every timed run
    compile the installer from source, and the benchmark would time the compiler.
    """
    for folder in ("installer", "bundler"):
        compileall.compile_dir(str(REPO / folder), quiet=1)


def check_disk(base: Path, need: int, why: str) -> None:
    """Refuse when the work dir's filesystem has less than `need` bytes free."""
    free = shutil.disk_usage(base).free
    if free < need:
        raise SystemExit(
            f"not enough free disk under {base}: {free / GIB:.1f} GiB free, "
            f"{need / GIB:.1f} GiB needed ({why})"
        )


def bench_parser(
    doc: Optional[str],
    epilog: Optional[str] = None,
    sizes: Optional[str] = None,
    what: str = "sizes",
) -> argparse.ArgumentParser:
    """A benchmark's command line: described by its module's first docstring line, with
    --sizes (comma-separated, default `sizes`) when it takes them."""
    parser = argparse.ArgumentParser(
        description=doc.splitlines()[0] if doc else None, epilog=epilog
    )
    if sizes is not None:
        parser.add_argument(
            "--sizes",
            default=parse_sizes(sizes),
            type=parse_sizes,
            help=f"comma-separated {what} (default: {sizes})",
        )
    return parser


def parse_common(
    parser: argparse.ArgumentParser, argv: Optional[Sequence[str]], runs: int = 3
) -> argparse.Namespace:
    """Add --runs, --workdir and --strict to `parser` and parse `argv` (at least one run)."""
    add_common(parser, runs)
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def add_common(parser: argparse.ArgumentParser, runs: int = 3) -> None:
    """The options every benchmark takes: --runs, --workdir, --strict."""
    parser.add_argument(
        "--runs", type=int, default=runs, help=f"timed runs per variant (default: {runs})"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where to write (default: REPO/.bench)"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")


@contextlib.contextmanager
def workdir(base: Optional[Path], prefix: str) -> Iterator[Path]:
    """A fresh folder under `base` (default REPO/.bench, the repository's filesystem), removed
    afterwards with everything in it."""
    root = base or REPO / ".bench"
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if base is None:
            with contextlib.suppress(OSError):
                root.rmdir()


def load_note() -> str:
    """The 1-minute load average, flagged when the machine was busy."""
    load = os.getloadavg()[0]
    busy = " -- a busy machine: wall times are noisy" if load > 0.5 else ""
    return f"load average (1 min) at the end: {load:.2f} on {os.cpu_count()} CPUs{busy}"


def verdict(checks: Sequence[Tuple[str, bool]]) -> str:
    """'PASS', or 'FAIL(name,...)' naming the checks that failed."""
    failed = [name for name, ok in checks if not ok]
    return "PASS" if not failed else "FAIL(" + ",".join(failed) + ")"


# ---------------------------------------------------------------------------------------------
# The release-shaped payload
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """Byte counts of a bundle shaped like a real k3s release (one arch)."""

    binary: int
    airgap: int
    extra: int

    @property
    def total(self) -> int:
        """Payload bytes in all."""
        return self.binary + self.airgap + self.extra


def release_shape(size: int) -> Shape:
    """75 % airgap image tarball, a 64 MiB binary (size/8 below 512 MiB), the rest extra images.

    Upstream's amd64 release is about three quarters image tarball and a ~70 MB binary; the
    extra-images archive (the images a site adds) takes what is left.
    """
    binary = min(64 * MIB, size // 8)
    airgap = size * 3 // 4
    return Shape(binary, airgap, size - binary - airgap)


def write_generated(path: Path, size: int, seed: int) -> str:
    """`size` generated bytes (a 64 MiB random pool, each 4 MiB chunk tagged with its number and
    `seed`, so no two chunks or files are equal); returns the sha256 hex."""
    pool = os.urandom(POOL + WRITE_CHUNK)
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        index, left = 0, size
        while left:
            start = (index * 7 * WRITE_CHUNK + seed * 4096) % POOL
            chunk = f"{seed}:{index}:".encode() + pool[start : start + WRITE_CHUNK]
            chunk = chunk[: min(WRITE_CHUNK, left)]
            digest.update(chunk)
            out.write(chunk)
            left -= len(chunk)
            index += 1
    return digest.hexdigest()


def _json_bytes(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def write_release(root: Path, shape: Shape) -> List[str]:
    """A stand-in release and registry under `root` that bench/_servers.py serves.

    `root/download/<tag>/`: `k3s` (shape.binary bytes), `k3s-airgap-images-amd64.tar`
    (shape.airgap), `sha256sum-amd64.txt`, `k3s-images.txt` (tests/release_server.py's layout and
    names). `root/registry/`: one linux/amd64 OCI image `bench/extra-images:1.0` whose single
    layer holds shape.extra bytes. Returns the URL paths a plain downloader would fetch to get
    the same bytes (release files, then the image's manifest, config and layer).
    """
    release = root / "download" / VERSION
    release.mkdir(parents=True)
    sums: Dict[str, str] = {}
    airgap, binary = image_name(ARCH, IMAGES_FORMAT), binary_name(ARCH)
    sums[airgap] = write_generated(release / airgap, shape.airgap, 1)
    sums[binary] = write_generated(release / binary, shape.binary, 2)
    os.chmod(release / binary, 0o755)
    lines = "".join(f"{sums[name]}  {name}\n" for name in (airgap, binary))
    (release / checksum_name(ARCH)).write_text(lines, encoding="ascii")
    (release / "k3s-images.txt").write_text("docker.io/rancher/mirrored-pause:3.6\n")
    (root / "registry" / "blobs").mkdir(parents=True)
    blobs = write_image(root, IMAGE_REPO, IMAGE_TAG, shape.extra, 3)
    paths = [f"/download/{VERSION}/{name}" for name in (checksum_name(ARCH), binary, airgap)]
    paths.append(f"/v2/{IMAGE_REPO}/manifests/{IMAGE_TAG}")
    paths += [f"/v2/{IMAGE_REPO}/blobs/sha256:{h}" for h in blobs[1:]]
    return paths


def write_image(
    root: Path,
    repo: str,
    tag: str,
    size: int,
    seed: int,
    layer_type: str = "application/vnd.oci.image.layer.v1.tar+gzip",
) -> Tuple[str, str, str]:
    """One linux/ARCH OCI image `repo:tag` (one generated layer of `size` bytes) in the
    registry folder bench/_servers.py serves; the hex digests of its manifest, config, layer."""
    blobs = root / "registry" / "blobs"
    layer = write_generated(blobs / "layer.tmp", size, seed)
    (blobs / "layer.tmp").rename(blobs / layer)
    config = _json_bytes(
        {
            "architecture": ARCH,
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer}"]},
        }
    )
    config_hex = hashlib.sha256(config).hexdigest()
    (blobs / config_hex).write_bytes(config)
    manifest = _json_bytes(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": f"sha256:{config_hex}",
                "size": len(config),
            },
            "layers": [{"mediaType": layer_type, "digest": f"sha256:{layer}", "size": size}],
        }
    )
    manifest_hex = hashlib.sha256(manifest).hexdigest()
    (blobs / manifest_hex).write_bytes(manifest)
    tags = root / "registry" / "tags" / repo
    tags.mkdir(parents=True, exist_ok=True)
    (tags / tag).write_text(f"sha256:{manifest_hex}", encoding="ascii")
    return manifest_hex, config_hex, layer


@dataclass(frozen=True)
class Server:
    """A running bench/_servers.py: its base URL and a way to change its shared rate."""

    base_url: str

    @property
    def release_url(self) -> str:
        """The builder's --release-url."""
        return f"{self.base_url}/download"

    @property
    def registry(self) -> str:
        """HOST:PORT of its registry (for --image and --insecure-registry)."""
        return self.base_url.split("://", 1)[1]

    @property
    def image(self) -> str:
        """The extra image's reference."""
        return f"{self.registry}/{IMAGE_REPO}:{IMAGE_TAG}"

    def set_rate(self, bits_per_second: int) -> None:
        """Limit all connections together to `bits_per_second` (0: unlimited)."""
        import urllib.request

        url = f"{self.base_url}/_rate/{bits_per_second}"
        with urllib.request.urlopen(url, timeout=10) as answer:
            answer.read()


@contextlib.contextmanager
def serve(root: Path) -> Iterator[Server]:
    """bench/_servers.py serving `root` in its own process (its threads never compete with this
    harness for the GIL); stopped by PID afterwards."""
    argv = [sys.executable, str(REPO / "bench" / "_servers.py"), "--dir", str(root)]
    server = subprocess.Popen([*argv, "--print-url"], stdout=subprocess.PIPE)
    try:
        stdout: IO[bytes] = server.stdout  # type: ignore[assignment]
        line = stdout.readline()
        if not line:
            raise SystemExit(f"bench/_servers.py exited (status {server.wait()}) without a URL")
        yield Server(json.loads(line)["base_url"])
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def build_argv(
    server: Server,
    cache: Path,
    out: Path,
    sign_key: Optional[Path] = None,
    split: Optional[int] = None,
) -> List[str]:
    """`k3bundle build` of the stand-in release plus the extra image, into `out`."""
    argv = k3bundle("build", "--version", VERSION, "--arch", ARCH)
    argv += ["--images-format", IMAGES_FORMAT, "--release-url", server.release_url]
    argv += ["--image", server.image, "--insecure-registry", server.registry]
    argv += ["--cache-dir", str(cache), "-o", str(out), "--name", "bundle", "-q"]
    if sign_key is not None:
        argv += ["--sign-key", str(sign_key)]
    if split is not None:
        argv += ["--split", str(split)]
    return argv


def bundle_path(out: Path) -> Path:
    """What to hand `k3bundle install` in a build's output folder: bundle.tar or its first part."""
    for name in ("bundle.tar", "bundle.tar.000"):
        if (out / name).exists():
            return out / name
    raise SystemExit(f"the build wrote no bundle.tar or bundle.tar.000 into {out}")


def bundle_files(out: Path) -> List[Path]:
    """The bundle's archive bytes in order: bundle.tar, or bundle.tar.000, .001, ..."""
    first = bundle_path(out)
    if first.name == "bundle.tar":
        return [first]
    return sorted(p for p in out.glob("bundle.tar.[0-9][0-9][0-9]"))


def keygen(folder: Path) -> Tuple[Path, Path]:
    """`k3bundle keygen -o folder/bench` (no passphrase); (private key, public key)."""
    folder.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "K3BUNDLE_KEY_PASSPHRASE"}
    argv = k3bundle("keygen", "-o", str(folder / "bench"), "-q")
    done = subprocess.run(argv, capture_output=True, env=env, stdin=subprocess.DEVNULL, check=False)
    private, public = folder / "bench.key", folder / "bench.pub"
    if done.returncode != 0 or not private.exists() or not public.exists():
        raise SystemExit(f"k3bundle keygen failed: {done.stderr.decode(errors='replace')}")
    return private, public
