"""Terminal interaction shared by commands: hidden passphrase prompts."""

from __future__ import annotations

import click


def prompt_secret(text: str, confirm: bool) -> str:
    """Ask for a passphrase on the terminal, hidden."""
    value: str = click.prompt(
        text, hide_input=True, confirmation_prompt=confirm, default="", show_default=False
    )
    return value
