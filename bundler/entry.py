"""The `k3bundle` console entry point: host commands skip the connected side's imports.

`k3bundle install|verify|inspect|status|rollback|uninstall` run the installer's own command line
(the one the standalone zipapp runs) without importing click, requests or tqdm: on an
isolated host, start-up time is part of every install (bench/install_vs_tar.py). A leading
-v/--verbose (the one global option both command lines share) still counts as a host command's;
everything else goes through the click group in cli.py.
"""

from __future__ import annotations

import sys
from typing import Any, Optional, Sequence

from k3bundle.installer import readahead

HOST_COMMANDS = ("install", "verify", "inspect", "status", "recover", "rollback", "uninstall")


def main(argv: Optional[Sequence[str]] = None) -> Any:
    """Run `k3bundle ARGS`."""
    args = list(sys.argv[1:] if argv is None else argv)
    if _is_host_command(args):
        readahead.start(args)  # the stick reads while the installer is imported
        from k3bundle.installer import cli as installer_cli

        sys.exit(installer_cli.main(args, prog="k3bundle", progress_factory=_tqdm_progress))
    from k3bundle.bundler.cli import main as group_main

    return group_main(args)


def _is_host_command(args: Sequence[str]) -> bool:
    """True when the first word after any -v/--verbose is a host command."""
    for arg in args:
        if arg not in readahead.VERBOSE:
            return arg in HOST_COMMANDS
    return False


def _tqdm_progress() -> Any:
    """tqdm bars, imported only when a terminal will show them."""
    from k3bundle.bundler.progress import TqdmProgress

    return TqdmProgress()
