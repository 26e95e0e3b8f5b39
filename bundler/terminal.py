"""Terminal interaction shared by commands: hidden passphrase prompts and the -v flag."""

from __future__ import annotations

import click


def prompt_secret(text: str, confirm: bool) -> str:
    """Ask for a passphrase on the terminal, hidden."""
    value: str = click.prompt(
        text, hide_input=True, confirmation_prompt=confirm, default="", show_default=False
    )
    return value


def verbose(own: bool = False) -> bool:
    """Whether -v/--verbose was given before or after the command (both mean the same).

    The flag lands in the root context's object, where `cli.main` reads it to decide on a
    traceback; `own` is the command's own -v.
    """
    context = click.get_current_context(silent=True)
    state = context.find_root().obj if context is not None else None
    if not isinstance(state, dict):
        return own
    state["verbose"] = bool(state.get("verbose")) or own
    return bool(state["verbose"])


VERBOSE_HELP = "Say more as it runs, and show a traceback on errors (before or after the command)."
verbose_option = click.option("-v", "--verbose", is_flag=True, help=VERBOSE_HELP)
