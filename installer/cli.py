"""The installer's command line: install, verify, inspect. Standard library only.

This is the one definition of these commands' options: `k3bundle install|verify|inspect` and
`python3 k3bundle-install.pyz install|verify|inspect` both end up in `main` below.

The modules only other commands use (the lifecycle, the summaries' wording) are imported by
those commands: start-up is part of every install's time, and the zipapp compiles each module it
imports from source on every run (bench/install_vs_tar.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence

from k3bundle.installer.cli_parser import build_parser, join_exec
from k3bundle.installer.errors import (
    BROKEN_PIPE,
    INTERRUPTED,
    InstallError,
    K3BundleError,
    edge_error,
    unexpected,
)
from k3bundle.installer.format.verify import (
    inspect_bundle,
    read_manifest_bytes,
    verify_bundle,
)
from k3bundle.installer.host.service import is_host_root, is_root_user, run_command
from k3bundle.installer.progress import Progress, TextProgress

ProgressFactory = Callable[[], Progress]

# The commands that change the host: on the real / they need root before they start.
CHANGING = ("install", "recover", "rollback", "uninstall")


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
            import traceback  # only when asked for: every run would pay for it at start-up

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
    if args.command in ("recover", "rollback", "uninstall"):
        return _lifecycle(args)
    if args.command == "inspect" and args.manifest:
        _write_bytes(read_manifest_bytes(args.bundle))
        return 0
    if args.command == "inspect":
        from k3bundle.installer.summaries import inspect_lines

        _emit(inspect_bundle(args.bundle), args.json, inspect_lines)
        return 0
    if args.command == "verify":
        from k3bundle.installer.summaries import verify_lines

        summary = verify_bundle(args.bundle, args.pubkey, args.root, args.allow_unsigned, progress)
        _emit(summary, args.json, verify_lines)
        return 0
    return _install(args, progress)


def _lifecycle(args: argparse.Namespace) -> int:
    """recover, rollback and uninstall (host/lifecycle.py)."""
    from k3bundle.installer.host.lifecycle import recover_root, rollback, uninstall

    if args.command == "recover":
        recovered = recover_root(args.root, _reporter(args), args.wait)
        print(f"Recovered: {recovered}." if recovered else f"Nothing to recover under {args.root}.")
        return 0
    if args.command == "rollback":
        report = _reporter(args)
        done = rollback(args.root, report, run_command, args.no_start, args.force, args.wait)
        print(f"Rolled back: k3s {done['from']} -> {done['to']}.")
        return 0
    removed = uninstall(
        args.root, _reporter(args), run_command, args.purge, args.dry_run, args.force, args.wait
    )
    verb = "would remove" if args.dry_run else "removed"
    print(f"Uninstalled: {verb} {len(removed)} paths under {args.root}.")
    return 0


def _write_bytes(data: bytes) -> None:
    """Exact bytes on stdout (text only where stdout has no byte layer, as in tests)."""
    out = getattr(sys.stdout, "buffer", None)
    if out is None:
        sys.stdout.write(data.decode("utf-8"))
    else:
        out.write(data)
    sys.stdout.flush()


def _install(args: argparse.Namespace, progress: Progress) -> int:
    # Imported here: verify, inspect and status need none of the host's install machinery
    # (~60 ms of imports, most of a warm `inspect`).
    from k3bundle.installer.host.install import install
    from k3bundle.installer.host.install_args import install_options, kubeconfig_lines

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


def status(root: str, report: Callable[[str], None]) -> Dict[str, Any]:
    """What is installed under `root` and whether it is intact (host/lifecycle.py's status)."""
    from k3bundle.installer.host.lifecycle import status as host_status

    return host_status(root, report)


def _status(args: argparse.Namespace) -> int:
    from k3bundle.installer.summaries import status_lines

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
