"""The `k3bundle` console entry point: host commands skip the connected side's imports.

`k3bundle install|verify|inspect|status|rollback|uninstall` run the installer's own command line
(the one the standalone zipapp runs) without importing click, requests or tqdm: on an
isolated host, start-up time is part of every install (bench/install_vs_tar.py). Everything else,
and a global option before the command, goes through the click group in cli.py.
"""

from __future__ import annotations

import sys
from typing import Any, Optional, Sequence

HOST_COMMANDS = ("install", "verify", "inspect", "status", "rollback", "uninstall")


def main(argv: Optional[Sequence[str]] = None) -> Any:
    """Run `k3bundle ARGS`."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in HOST_COMMANDS:
        from k3bundle.installer import cli as installer_cli

        sys.exit(installer_cli.main(args, prog="k3bundle", progress_factory=_tqdm_progress))
    from .cli import main as group_main

    return group_main(args)


def _tqdm_progress() -> Any:
    """tqdm bars, imported only when a terminal will show them."""
    from .progress import TqdmProgress

    return TqdmProgress()
