"""The installer's command line: install, verify, inspect. Standard library only.

This is the one definition of these commands' options: `k3bundle install|verify|inspect` and
`python3 k3bundle-install.pyz install|verify|inspect` both end up in `main` below.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence

from .errors import EXIT_CODES, K3BundleError, UsageError
from .install import install
from .plan import Options
from .progress import Progress, TextProgress, human_size
from .verify import inspect_bundle, verify_bundle

ProgressFactory = Callable[[], Progress]

EPILOG = "exit codes:\n" + "\n".join(f"  {code}  {text}" for code, text in EXIT_CODES.items())


def _common(parser: argparse.ArgumentParser, trust: bool = True) -> None:
    parser.add_argument(
        "bundle", help="the bundle: NAME.tar, its first part NAME.tar.000, or NAME.tar.parts.json"
    )
    if trust:
        parser.add_argument(
            "--pubkey",
            action="append",
            default=[],
            metavar="PUB",
            help="trusted public key (repeatable); "
            "default: every *.pub in ROOT/etc/k3bundle/trusted.d/",
        )
        parser.add_argument(
            "--allow-unsigned",
            action="store_true",
            help="accept a bundle that carries no signature",
        )
        parser.add_argument(
            "--root", default="/", metavar="DIR", help="install under DIR instead of / (default: /)"
        )
    parser.add_argument("-v", "--verbose", action="store_true", help="show a traceback on errors")
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no progress, only errors and the summary"
    )


def build_parser(prog: str) -> argparse.ArgumentParser:
    """The argparse parser for install, verify and inspect."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Verify and install k3bundle bundles on a host with no network.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="{install,verify,inspect}")
    sub.required = True
    _install_parser(sub)
    verify = sub.add_parser(
        "verify", help="check signature and every byte without installing", epilog=EPILOG
    )
    _common(verify)
    verify.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    inspect = sub.add_parser(
        "inspect", help="show what a bundle holds (no payload hashing)", epilog=EPILOG
    )
    _common(inspect, trust=False)
    inspect.add_argument(
        "--json", action="store_true", help="print the manifest summary as JSON on stdout"
    )
    return parser


def _install_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "install",
        help="verify a bundle and install k3s from it",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(parser)
    parser.add_argument(
        "--arch",
        choices=("amd64", "arm64", "arm"),
        help="install this architecture (default: the host's)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="verify and print every action; change nothing"
    )
    parser.add_argument(
        "--no-start", action="store_true", help="enable the service but do not start it"
    )
    token = parser.add_mutually_exclusive_group()
    token.add_argument("--token", help="cluster token, written to the unit's env file (0600)")
    token.add_argument(
        "--token-file", metavar="FILE", help="file holding the cluster token (K3S_TOKEN_FILE)"
    )
    parser.add_argument(
        "--exec",
        dest="exec_args",
        default="",
        metavar="ARGS",
        help='extra k3s server arguments, e.g. "--disable=traefik"',
    )


def main(
    argv: Optional[Sequence[str]] = None,
    prog: str = "k3bundle-install.pyz",
    progress_factory: Optional[ProgressFactory] = None,
) -> int:
    """Run one command and return its exit code; errors become one 'Error:' line."""
    args = build_parser(prog).parse_args(argv)
    try:
        return _dispatch(args, _progress(args, progress_factory))
    except K3BundleError as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"Error: {exc.diagnostics()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("Interrupted: nothing was placed unless the output above says so.", file=sys.stderr)
        return 130


def _progress(args: argparse.Namespace, factory: Optional[ProgressFactory]) -> Progress:
    if args.quiet or not sys.stderr.isatty():
        return Progress()
    return factory() if factory else TextProgress()


def _dispatch(args: argparse.Namespace, progress: Progress) -> int:
    if args.command == "inspect":
        summary = inspect_bundle(args.bundle)
        _emit(summary, args.json, _inspect_lines)
        return 0
    if args.command == "verify":
        summary = verify_bundle(args.bundle, args.pubkey, args.root, args.allow_unsigned, progress)
        _emit(summary, args.json, _verify_lines)
        return 0
    return _install(args, progress)


def _install(args: argparse.Namespace, progress: Progress) -> int:
    try:
        exec_args = tuple(shlex.split(args.exec_args))
    except ValueError as exc:
        raise UsageError(f"cannot split --exec {args.exec_args!r}: {exc}") from None
    options = Options(
        bundle=args.bundle,
        root=args.root,
        pubkeys=tuple(args.pubkey),
        allow_unsigned=args.allow_unsigned,
        arch=args.arch,
        dry_run=args.dry_run,
        no_start=args.no_start,
        token=args.token,
        token_file=args.token_file,
        exec_args=exec_args,
        environ=dict(os.environ),
    )
    report = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr))
    outcome = install(options, report, progress)
    if args.dry_run:
        print(f"Dry run: {len(outcome.placed)} changes would be made; nothing was changed.")
    elif outcome.changed:
        print(
            f"Installed k3s {outcome.version} ({outcome.arch}) under {args.root}: "
            f"{len(outcome.placed)} written, {len(outcome.unchanged)} unchanged."
        )
    else:
        print(
            f"Nothing to do: k3s {outcome.version} ({outcome.arch}) is already installed exactly "
            f"as this bundle describes ({len(outcome.unchanged)} files and links checked)."
        )
    return 0


def _emit(
    summary: Dict[str, Any], as_json: bool, lines: Callable[[Dict[str, Any]], List[str]]
) -> None:
    if as_json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        print("\n".join(lines(summary)))


def _inspect_lines(summary: Dict[str, Any]) -> List[str]:
    signed = summary["signed_by"] or "NOT SIGNED"
    out = [
        f"bundle:        {summary['bundle']}",
        f"bundle id:     {summary['bundle_id']}",
        f"k3s version:   {summary['k3s_version']}",
        f"architectures: {', '.join(summary['architectures'])}",
        f"signed by:     {signed}",
        f"payload:       {len(summary['files'])} files, {human_size(summary['size'])}",
    ]
    for part in summary.get("parts", []):
        out.append(f"part:          {part['name']} ({human_size(part['size'])})")
    for image in summary.get("images", []):
        arches = ",".join(image.get("arches", []))
        out.append(
            f"image:         {image.get('name')} ({arches}, {human_size(image.get('size', 0))})"
        )
        out.append(f"               digest {image.get('digest')}")
    for chart in summary.get("charts", []):
        out.append(
            f"chart:         {chart.get('name')} {chart.get('version')} "
            f"-> namespace {chart.get('namespace')}"
        )
    for item in summary["files"]:
        origin = item["source"]
        source = (
            origin.get("url") or origin.get("images") or origin.get("generated") or "local file"
        )
        out.append(
            f"  {item['kind']:<18} {item['arch'] or '-':<6} "
            f"{human_size(item['size']):>10}  {item['path']}"
        )
        out.append(f"  {'':<18} sha256 {item['sha256']}  from {source}")
    return out


def _verify_lines(summary: Dict[str, Any]) -> List[str]:
    signer = summary["signed_by"]
    how = (
        f"signature by {signer} good ({summary['verifier']})"
        if signer
        else "unsigned (allowed by --allow-unsigned)"
    )
    return [
        f"OK: {summary['bundle']} — k3s {summary['k3s_version']}, {len(summary['files'])} files, "
        f"{human_size(summary['size'])} verified; {how}."
    ]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
