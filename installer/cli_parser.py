"""The installer's command-line grammar: every command and option, built with argparse.

The one definition of the host commands' options: `k3bundle install|verify|…` and `python3
k3bundle-install.pyz install|verify|…` both parse with `build_parser` (cli.py runs them).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, List, Sequence

from k3bundle.installer.errors import EXIT_CODES

# The one k3bundle version: pyproject.toml reads it from here (the zipapp has no metadata).
VERSION = "0.1.0"
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
    parser.add_argument("--version", action="version", version=f"k3bundle {VERSION}")
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
    inspect.add_argument(
        "--manifest",
        action="store_true",
        help="print the manifest's exact bytes (k3bundle.json) on stdout, e.g. to keep as "
        "NAME.tar.json for a later 'k3bundle build --since'",
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


def join_exec(argv: Sequence[str]) -> List[str]:
    """`--exec VALUE` as `--exec=VALUE`: argparse refuses a VALUE that begins with '-' (it takes
    it for an option: "expected one argument"), and k3s arguments always do."""
    out: List[str] = []
    words = iter(argv)
    for word in words:
        if word == "--":  # the rest are positional words, never options
            out.append(word)
            out.extend(words)
            break
        following = next(words, None) if word == "--exec" else None
        out.append(word if following is None else f"--exec={following}")
    return out
