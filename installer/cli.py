"""The installer's command line: install, verify, inspect. Standard library only.

This is the one definition of these commands' options: `k3bundle install|verify|inspect` and
`python3 k3bundle-install.pyz install|verify|inspect` both end up in `main` below.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence

from .errors import (
    BROKEN_PIPE,
    EXIT_CODES,
    INTERRUPTED,
    InstallError,
    K3BundleError,
    edge_error,
    unexpected,
)
from .install import install
from .install_args import install_options, join_exec, kubeconfig_lines
from .lifecycle import recover_root, rollback, status, uninstall
from .progress import Progress, TextProgress
from .service import is_host_root, is_root_user, run_command
from .summaries import inspect_lines, status_lines, verify_lines
from .verify import inspect_bundle, verify_bundle

ProgressFactory = Callable[[], Progress]

# The commands that change the host: on the real / they need root before they start.
CHANGING = ("install", "recover", "rollback", "uninstall")
VERBOSE_HELP = "show a traceback on errors (anywhere on the command line)"
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
    _verbose(parser)
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no progress, only errors and the summary"
    )


class _Parser(argparse.ArgumentParser):
    """argparse that lets a closed stdout be seen (3.12 and late 3.11 swallow the error)."""

    def _print_message(self, message: str, file: Any = None) -> None:
        if message:
            (file or sys.stderr).write(message)


def build_parser(prog: str) -> argparse.ArgumentParser:
    """The argparse parser for install, verify and inspect."""
    parser = _Parser(
        prog=prog,
        description="Verify and install k3bundle bundles on a host with no network.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(
        dest="command", metavar="{install,verify,inspect,status,recover,rollback,uninstall}"
    )
    sub.required = True
    _install_parser(sub)
    _lifecycle_parsers(sub)
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
    _lock_options(parser)
    token = parser.add_mutually_exclusive_group()
    token.add_argument("--token", help="cluster token, written to the unit's env file (0600)")
    token.add_argument(
        "--token-file", metavar="FILE", help="file holding the cluster token (K3S_TOKEN_FILE)"
    )
    parser.add_argument(
        "--exec",
        dest="exec_args",
        default=None,
        metavar="ARGS",
        help='k3s arguments, e.g. "--disable=traefik" or "agent --node-ip=10.0.0.5" (a leading '
        "server or agent is the command, as in install.sh; default: INSTALL_K3S_EXEC, else as "
        "installed before)",
    )
    _role_options(parser)
    _config_options(parser)
    parser.add_argument(
        "--allow-downgrade", action="store_true", help="install an older k3s than the installed one"
    )
    parser.add_argument(
        "--adopt", action="store_true", help="take over a k3s installed by other means"
    )
    parser.add_argument(
        "--sync",
        dest="sync",
        action="store_true",
        default=None,
        help="flush every written file to disk before the commit, so a power cut cannot leave a "
        "committed install with missing data (the default without --root)",
    )
    parser.add_argument(
        "--no-sync",
        dest="sync",
        action="store_false",
        help="leave flushing to the kernel (the default with --root DIR: an image or chroot is "
        "flushed when it is unmounted)",
    )


def _lifecycle_parsers(sub: Any) -> None:
    status_parser = sub.add_parser(
        "status", help="what is installed, and whether the files still match", epilog=EPILOG
    )
    _root_only(status_parser)
    status_parser.add_argument("--json", action="store_true", help="print JSON on stdout")
    rollback_parser = sub.add_parser(
        "rollback", help="restore the previous generation exactly", epilog=EPILOG
    )
    _root_only(rollback_parser)
    rollback_parser.add_argument(
        "--no-start", action="store_true", help="do not restart the service"
    )
    _force_option(rollback_parser)
    _lock_options(rollback_parser)
    recover_parser = sub.add_parser(
        "recover",
        help="finish or undo a change that was cut off (a crash, a power cut)",
        epilog=EPILOG,
    )
    _root_only(recover_parser)
    _lock_options(recover_parser)
    uninstall_parser = sub.add_parser(
        "uninstall", help="remove exactly what k3bundle installed", epilog=EPILOG
    )
    _root_only(uninstall_parser)
    uninstall_parser.add_argument(
        "--purge", action="store_true", help="also delete k3s's data, as k3s-uninstall.sh does"
    )
    uninstall_parser.add_argument(
        "--dry-run", action="store_true", help="print what would go; change nothing"
    )
    _force_option(uninstall_parser)
    _lock_options(uninstall_parser)


def _force_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--force",
        action="store_true",
        help="also remove files that changed since k3bundle placed them (default: keep them)",
    )


def _lock_options(parser: argparse.ArgumentParser) -> None:
    wait = parser.add_mutually_exclusive_group()
    wait.add_argument(
        "--wait",
        dest="wait",
        action="store_true",
        default=True,
        help="when another k3bundle is changing the root, wait for it (the default)",
    )
    wait.add_argument(
        "--no-wait",
        dest="wait",
        action="store_false",
        help="when another k3bundle is changing the root, fail at once (exit 7)",
    )


def _root_only(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", default="/", metavar="DIR", help="act under DIR (default: /)")
    _verbose(parser)
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors and the summary")


def _verbose(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: an absent -v after the command must not reset a -v given before it.
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP
    )


def _role_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--role", choices=("server", "agent"), help="server (default) or agent; kept on upgrades"
    )
    parser.add_argument(
        "--server", dest="server_url", metavar="URL", help="join this server: https://HOST:6443"
    )
    parser.add_argument(
        "--cluster-init",
        action="store_true",
        help="first server of an embedded-etcd HA cluster",
    )


def _config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="k3s config (YAML or JSON) merged over the bundle's defaults into config.yaml",
    )
    parser.add_argument(
        "--node-label", action="append", default=[], metavar="KEY=VALUE", help="repeatable"
    )
    parser.add_argument("--tls-san", action="append", default=[], metavar="NAME", help="repeatable")
    parser.add_argument("--node-name", metavar="NAME", help="this node's name in the cluster")
    parser.add_argument(
        "--image-cache",
        action="store_true",
        help="create agent/images/.cache.json so k3s skips re-importing unchanged archives",
    )


def main(
    argv: Optional[Sequence[str]] = None,
    prog: str = "k3bundle-install.pyz",
    progress_factory: Optional[ProgressFactory] = None,
) -> int:
    """Run one command and return its exit code; every failure becomes one 'Error:' line."""
    args = argparse.Namespace(verbose=False, command=None)
    try:
        args = _parse(build_parser(prog), join_exec(sys.argv[1:] if argv is None else argv))
        code = _dispatch(args, _progress(args, progress_factory))
        sys.stdout.flush()  # a reader that went away shows up here, not at interpreter exit
        return code
    except K3BundleError as exc:
        return fail(exc.diagnostics(), exc.exit_code, args.verbose)
    except BrokenPipeError:
        return broken_pipe()
    except OSError as exc:
        error = edge_error(exc, "change" if args.command in CHANGING else "read")
        return fail(error.diagnostics(), error.exit_code, args.verbose)
    except KeyboardInterrupt:
        message = "Interrupted: nothing was placed unless the output above says so."
        return fail(message, INTERRUPTED, args.verbose, prefix="")
    except Exception as exc:
        return fail(unexpected(exc, args.verbose), 1, args.verbose)


def _parse(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> argparse.Namespace:
    try:
        return parser.parse_args(argv)
    except SystemExit:
        sys.stdout.flush()  # --help's text still sits in the buffer: meet a closed pipe here
        raise


def fail(message: str, code: int, verbose: bool, prefix: str = "Error: ") -> int:
    """Print the error line (after the traceback, with --verbose) and return `code`."""
    try:
        if verbose:
            traceback.print_exc()
        print(f"{prefix}{message}", file=sys.stderr)
    except BrokenPipeError:  # stderr is gone too: the exit code is all that is left to say
        pass
    return code


def broken_pipe() -> int:
    """Exit quietly when stdout's reader went away, as `| head` does to any Unix tool.

    Python ignores SIGPIPE, so the closed pipe arrives as BrokenPipeError; pointing stdout at
    /dev/null keeps the final flush at exit from raising it a second time (see the `signal`
    module's documentation, "Note on SIGPIPE").
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is no real file (tests capture it): nothing to flush
        pass
    return BROKEN_PIPE


def _progress(args: argparse.Namespace, factory: Optional[ProgressFactory]) -> Progress:
    if args.quiet or not sys.stderr.isatty():
        return Progress()
    return factory() if factory else TextProgress()


def _require_root(args: argparse.Namespace) -> None:
    if args.command in CHANGING and is_host_root(args.root) and not is_root_user():
        raise InstallError(
            "must run as root to change the host (or pass --root DIR to install into a folder)",
            "Run the same command again with sudo in front of it.",
        )


def _dispatch(args: argparse.Namespace, progress: Progress) -> int:
    _require_root(args)
    if args.command == "status":
        return _status(args)
    if args.command == "recover":
        recovered = recover_root(args.root, _reporter(args), args.wait)
        print(f"Recovered: {recovered}." if recovered else f"Nothing to recover under {args.root}.")
        return 0
    if args.command == "rollback":
        report = _reporter(args)
        done = rollback(args.root, report, run_command, args.no_start, args.force, args.wait)
        print(f"Rolled back: k3s {done['from']} -> {done['to']}.")
        return 0
    if args.command == "uninstall":
        removed = uninstall(
            args.root,
            _reporter(args),
            run_command,
            args.purge,
            args.dry_run,
            args.force,
            args.wait,
        )
        verb = "would remove" if args.dry_run else "removed"
        print(f"Uninstalled: {verb} {len(removed)} paths under {args.root}.")
        return 0
    if args.command == "inspect":
        summary = inspect_bundle(args.bundle)
        _emit(summary, args.json, inspect_lines)
        return 0
    if args.command == "verify":
        summary = verify_bundle(args.bundle, args.pubkey, args.root, args.allow_unsigned, progress)
        _emit(summary, args.json, verify_lines)
        return 0
    return _install(args, progress)


def _install(args: argparse.Namespace, progress: Progress) -> int:
    options = install_options(args, os.environ)
    outcome = install(options, _reporter(args), progress)
    if args.dry_run:
        print(f"Dry run: {len(outcome.placed)} changes would be made; nothing was changed.")
        return 0
    if outcome.changed:
        print(
            f"Installed k3s {outcome.version} ({outcome.arch}, {outcome.service}) under "
            f"{args.root}: {len(outcome.placed)} written, {len(outcome.unchanged)} unchanged."
        )
    else:
        print(
            f"Nothing to do: k3s {outcome.version} ({outcome.arch}) is already installed exactly "
            f"as this bundle describes ({len(outcome.unchanged)} files and links checked)."
        )
    for line in kubeconfig_lines(outcome.kubeconfig):
        print(line)
    return 0


def _reporter(args: argparse.Namespace) -> Callable[[str], None]:
    if args.quiet:
        return lambda line: None
    return lambda line: print(line, file=sys.stderr)


def _status(args: argparse.Namespace) -> int:
    summary = status(args.root, _reporter(args))
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    elif not summary["installed"]:
        print(f"k3s is not installed by k3bundle under {args.root}")
    else:
        print("\n".join(status_lines(summary)))
    return 0 if not summary.get("installed") or summary.get("intact") else 9


def _emit(
    summary: Dict[str, Any], as_json: bool, lines: Callable[[Dict[str, Any]], List[str]]
) -> None:
    if as_json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        print("\n".join(lines(summary)))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
