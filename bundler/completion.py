"""Shell completion: `k3bundle completion bash|zsh|fish` prints click's script for both halves.

The host commands (install, verify, ...) are argparse passthroughs to the installer, whose
grammar lives in installer/cli_parser.py alone; their option names and choices are completed
from that very parser, so there is one definition of them.
"""

from __future__ import annotations

import argparse
import functools
from typing import Dict, List, Optional, Sequence

import click
from click.shell_completion import CompletionItem, get_completion_class

from k3bundle.installer.cli_parser import build_parser

SHELLS = ("bash", "zsh", "fish")
COMPLETE_VAR = "_K3BUNDLE_COMPLETE"


def completion_script(cli: click.Command, shell: str) -> str:
    """The script that makes `shell` complete k3bundle's commands and options."""
    completer = get_completion_class(shell)
    assert completer is not None, f"click has no completion for {shell}"
    return completer(cli, {}, "k3bundle", COMPLETE_VAR).source()


@functools.lru_cache(maxsize=None)
def host_options(command: str) -> Dict[str, Optional[Sequence[str]]]:
    """A host command's option strings and, where argparse has them, their choices."""
    parser = build_parser("k3bundle")
    found: Dict[str, Optional[Sequence[str]]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            for option in action.choices[command]._actions:
                choices = [str(c) for c in option.choices] if option.choices else None
                found.update({name: choices for name in option.option_strings})
    return found


class HostCommand(click.Command):
    """A passthrough to the installer's own command line that completes its options."""

    def shell_complete(self, ctx: click.Context, incomplete: str) -> List[CompletionItem]:
        """The installer's option names for this command that start with `incomplete`."""
        names = host_options(self.name or "")
        return [CompletionItem(name) for name in sorted(names) if name.startswith(incomplete)]


def complete_host_argument(
    ctx: click.Context, _param: click.Parameter, incomplete: str
) -> List[CompletionItem]:
    """An option's choices after an option that has them (--arch a…), else file names."""
    given = ctx.params.get("args") or ()
    choices = host_options(ctx.info_name or "").get(given[-1]) if given else None
    if choices:
        return [CompletionItem(c) for c in choices if c.startswith(incomplete)]
    return [CompletionItem(incomplete, type="file")]
