"""Bytes an upgrade bundle carries (`k3bundle build --since`) when one of ten images changed.

Builds a release-shaped bundle with IMAGES extra images (bench/_servers.py's registry), re-points
one image's tag at new content, builds again with `--since` the first bundle, and prints the
bytes of each bundle file and of what was left out; then installs both on one --root, and the
upgrade on a fresh --root (which must be refused), to show the saving is installable. Run
`--help` for the options; bench/README.md says what it measures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._common import (  # noqa: E402
    ARCH,
    KIB,
    MIB,
    VERSION,
    bench_parser,
    bundle_path,
    k3bundle,
    keygen,
    load_note,
    parse_common,
    parse_size,
    precompile,
    release_shape,
    run_quiet,
    serve,
    verdict,
    workdir,
    write_image,
    write_release,
)

PLAIN_LAYER = "application/vnd.oci.image.layer.v1.tar"


def human(size: int) -> str:
    """Bytes as MiB with one decimal (KiB below one MiB)."""
    return f"{size / MIB:.1f} MiB" if size >= MIB else f"{size / KIB:.1f} KiB"


def image_size(text: str) -> int:
    """'4M', '512K' or a byte count (powers of 1024), at least 1 KiB."""
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = {"K": KIB, "M": MIB, "G": 1024 * MIB}.get(value[-1:], 1)
    digits = value[:-1] if scale != 1 else value
    if not digits.isdigit() or int(digits) * scale < KIB:
        raise argparse.ArgumentTypeError(f"cannot use {text!r} as an image size (>= 1K)")
    return int(digits) * scale


def build(base_url: str, images: List[str], cache: Path, out: Path, key: Path, *extra: str) -> None:
    """`k3bundle build` of the stand-in release with `images`, signed, into `out`."""
    registry = base_url.split("://", 1)[1]
    argv = k3bundle("build", "--version", VERSION, "--arch", ARCH, "--images-format", "tar")
    argv += ["--release-url", f"{base_url}/download", "--insecure-registry", registry]
    for image in images:
        argv += ["--image", f"{registry}/{image}:1.0"]
    argv += ["--cache-dir", str(cache), "-o", str(out), "--name", "bundle", "-q"]
    run_quiet([*argv, "--sign-key", str(key), *extra], f"k3bundle build {' '.join(extra)}")


def summary(bundle: Path) -> Dict[str, Any]:
    """`k3bundle inspect --json`."""
    doc: Dict[str, Any] = json.loads(
        run_quiet(k3bundle("inspect", str(bundle), "--json"), "inspect")
    )
    return doc


def install(bundle: Path, root: Path, public: Path) -> int:
    """`k3bundle install --root ROOT`: its exit status."""
    argv = k3bundle("install", str(bundle), "--root", str(root), "--pubkey", str(public))
    argv += ["--arch", ARCH, "-q"]
    return subprocess.run(argv, capture_output=True, check=False).returncode


def measure(args: argparse.Namespace, work: Path) -> Tuple[int, List[Tuple[str, bool]]]:
    """Print the bytes; (binary + changed image bytes, goal checks)."""
    shape = release_shape(args.size)
    write_release(work / "srv", shape)
    names = [f"bench/app-{n}" for n in range(args.images)]
    for number, repo in enumerate(names):
        write_image(work / "srv", repo, "1.0", args.image_size, 100 + number, PLAIN_LAYER)
    private, public = keygen(work / "keys")
    with serve(work / "srv") as server:
        build(server.base_url, names, work / "cache", work / "full", private)
        write_image(
            work / "srv", names[-1], "1.0", args.image_size, 999, PLAIN_LAYER
        )  # one image changed
        full = bundle_path(work / "full")
        build(server.base_url, names, work / "cache", work / "since", private, "--since", str(full))
    upgrade = bundle_path(work / "since")
    full_bytes, since_bytes = full.stat().st_size, upgrade.stat().st_size
    doc = summary(upgrade)
    relied = sum(int(r["size"]) for r in doc["requires"])
    print(f"full bundle:     {human(full_bytes):>10}  ({full_bytes} bytes)")
    print(f"--since bundle:  {human(since_bytes):>10}  ({since_bytes} bytes)")
    print(f"relied on:       {human(relied):>10}  (already on the host, not carried)")
    saved = full_bytes - since_bytes
    share = 100 * saved / full_bytes
    print(f"not carried:     {human(saved):>10}  ({share:.1f} % of the full bundle)")
    both = (
        install(full, work / "root", public) == 0 and install(upgrade, work / "root", public) == 0
    )
    refused = install(upgrade, work / "fresh", public) == 10
    changed = shape.binary + args.image_size
    checks = [
        ("carried<=binary+image+1MiB", since_bytes <= changed + MIB),
        ("installs-over-full", both),
        ("refused-on-fresh-host", refused),
    ]
    return changed, checks


def main() -> int:
    """Build full, change one image, build --since, print the bytes, check the goals."""
    parser = bench_parser(__doc__)
    parser.add_argument(
        "--size",
        type=parse_size,
        default=parse_size("64M"),
        help="release-shaped payload of binary + airgap tarball (default 64M)",
    )
    parser.add_argument("--images", type=int, default=10, help="extra images (default 10)")
    parser.add_argument(
        "--image-size",
        type=image_size,
        default=image_size("4M"),
        help="bytes of each image's one layer (default 4M)",
    )
    args = parse_common(parser, None, runs=1)
    precompile()
    with workdir(args.workdir, "since-") as work:
        changed, checks = measure(args, work)
    print(
        f"goal: the upgrade carries at most the binary and the one changed image "
        f"({human(changed)}) + 1 MiB: {verdict(checks)}"
    )
    print(load_note())
    return 1 if args.strict and any(not ok for _, ok in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
