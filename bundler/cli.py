"""The `k3bundle` command line: the one place that prints, exits and draws progress bars."""

from __future__ import annotations

import contextlib
import importlib
import sys
from pathlib import Path
from typing import Any, ClassVar, Dict, Iterator, List, Optional, Sequence, Tuple

import click

from k3bundle.bundler import terminal
from k3bundle.bundler.completion import (
    SHELLS,
    HostCommand,
    complete_host_argument,
    completion_script,
)
from k3bundle.bundler.progress import TqdmProgress
from k3bundle.bundler.terminal import prompt_secret, verbose_option
from k3bundle.installer import cli as installer_cli
from k3bundle.installer.cli import broken_pipe, fail
from k3bundle.installer.errors import (
    EXIT_CODES,
    INTERRUPTED,
    K3BundleError,
    build_error,
    edge_error,
    unexpected,
)

EXIT_HELP = "\b\nExit codes:\n" + "\n".join(
    f"  {code}  {text}" for code, text in EXIT_CODES.items()
)
PASSTHROUGH = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


class _StdoutClosed(Exception):
    """stdout's reader went away; carried past click, which would exit 1 on a BrokenPipeError."""


@contextlib.contextmanager
def _closed_stdout_passes_click() -> Iterator[None]:
    try:
        yield
    except BrokenPipeError as exc:
        raise _StdoutClosed() from exc


class _Commands(click.Group):
    """A group that imports heavy commands only when they run.

    `build` pulls in requests, jsonschema and oras; `install` on a host needs none of them, and
    importing them cost 200 ms and 15 MiB on every install (bench/install_vs_tar.py).
    """

    lazy: ClassVar[Dict[str, Tuple[str, str]]] = {
        "build": ("k3bundle.bundler.build_cli", "build_command"),
        "images": ("k3bundle.bundler.images_cli", "images_command"),
        "slice": ("k3bundle.bundler.slice_cli", "slice_command"),
    }

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        """The group's context (help output included), letting a closed stdout through."""
        with _closed_stdout_passes_click():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command, letting a closed stdout through."""
        with _closed_stdout_passes_click():
            return super().invoke(ctx)

    def list_commands(self, ctx: click.Context) -> List[str]:
        """Every command, the lazy ones included."""
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, name: str) -> Optional[click.Command]:
        """Import a lazy command on first use."""
        if name in self.lazy:
            module, attribute = self.lazy[name]
            command: click.Command = getattr(importlib.import_module(module), attribute)
            return command
        return super().get_command(ctx, name)


@click.group(
    cls=_Commands, epilog=EXIT_HELP, context_settings={"help_option_names": ["-h", "--help"]}
)
@verbose_option
@click.version_option(package_name="k3bundle")
def cli(verbose: bool) -> None:
    """Carry a complete k3s installation across an air gap.

    \b
    Connected side:   k3bundle keygen; k3bundle build ...
    Isolated host:    k3bundle install BUNDLE --pubkey KEY.pub
                      (or python3 k3bundle-install.pyz install ..., standard library only)
    """
    terminal.verbose(verbose)


def _prompt(text: str, confirm: bool) -> str:
    value: str = click.prompt(
        text, hide_input=True, confirmation_prompt=confirm, default="", show_default=False
    )
    return value


@cli.command()
@click.option(
    "-o",
    "--output",
    "name",
    default="k3bundle",
    show_default=True,
    help="Write NAME.key and NAME.pub.",
)
@click.option("--force", is_flag=True, help="Replace an existing key pair.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the key id (and errors).")
@verbose_option
def keygen(name: str, force: bool, quiet: bool, verbose: bool) -> None:
    """Create an Ed25519 signing key pair.

    The private key is PKCS#8 PEM (mode 0600), encrypted when a passphrase is given at the
    prompt (only on a terminal) or in K3BUNDLE_KEY_PASSPHRASE. Keep NAME.key on the build
    machine; copy NAME.pub to the hosts (e.g. /etc/k3bundle/trusted.d/).
    """
    from k3bundle.bundler import keys  # cryptography is only needed here and when signing

    terminal.verbose(verbose)

    pair = keys.generate(name, keys.passphrase_from(prompt_secret, confirm=True), force=force)
    if not quiet:
        click.echo(f"Wrote {pair.private} (keep it secret) and {pair.public}.", err=True)
    click.echo(f"Key id: {pair.key_id}")


@cli.command("installer-zipapp")
@click.option(
    "-o",
    "--output",
    default="k3bundle-install.pyz",
    show_default=True,
    type=click.Path(path_type=Path),
)
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@verbose_option
def installer_zipapp(output: Path, quiet: bool, verbose: bool) -> None:
    """Write the standalone installer (needs only python3 >= 3.8 on the host)."""
    terminal.verbose(verbose)
    from k3bundle.bundler.zipapp import write_zipapp

    write_zipapp(output)
    if not quiet:
        click.echo(
            f"Wrote {output}: run it with 'python3 {output.name} install|verify|inspect ...'.",
            err=True,
        )


@cli.command()
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL (bash, zsh or fish).

    \b
    bash:  eval "$(k3bundle completion bash)"        (in ~/.bashrc)
    zsh:   eval "$(k3bundle completion zsh)"         (in ~/.zshrc)
    fish:  k3bundle completion fish > ~/.config/fish/completions/k3bundle.fish
    """
    click.echo(completion_script(cli, shell), nl=False)


def _passthrough(command: str, summary: str) -> None:
    @cli.command(
        command,
        cls=HostCommand,  # completes the installer's own options (installer/cli_parser.py)
        context_settings=PASSTHROUGH,
        add_help_option=False,
        help=summary,
        short_help=summary,
    )
    @click.argument("args", nargs=-1, type=click.UNPROCESSED, shell_complete=complete_host_argument)
    def run(args: Sequence[str]) -> None:
        given = ["-v"] if terminal.verbose() else []  # `k3bundle -v install` keeps its -v
        code = installer_cli.main(
            [*given, command, *args], prog="k3bundle", progress_factory=TqdmProgress
        )
        sys.exit(code)


_passthrough("install", "Verify a bundle and install k3s from it (see: k3bundle install --help).")
_passthrough("verify", "Verify a bundle's signature and every byte (see: k3bundle verify --help).")
_passthrough("inspect", "Show what a bundle holds (see: k3bundle inspect --help).")
_passthrough("status", "Show what is installed and whether it still matches its record.")
_passthrough("rollback", "Restore the previous installed generation exactly.")
_passthrough("recover", "Finish or undo a change that a crash or power cut interrupted.")
_passthrough("uninstall", "Remove exactly what k3bundle installed (see: --purge, --dry-run).")


def main(argv: Optional[Sequence[str]] = None) -> Any:
    """Console entry point: run the group; every failure becomes one 'Error:' line."""
    state: Dict[str, Any] = {"verbose": False}
    try:
        return _run(list(sys.argv[1:] if argv is None else argv), state)
    except K3BundleError as exc:
        sys.exit(fail(exc.diagnostics(), exc.exit_code, state["verbose"]))
    except (BrokenPipeError, _StdoutClosed):
        sys.exit(broken_pipe())
    except OSError as exc:
        error = edge_error(exc, "write", build_error)
        sys.exit(fail(error.diagnostics(), error.exit_code, state["verbose"]))
    except Exception as exc:
        sys.exit(fail(unexpected(exc, state["verbose"]), 1, state["verbose"]))


def _run(args: List[str], state: Dict[str, Any]) -> Any:
    try:
        return cli.main(args=args, prog_name="k3bundle", standalone_mode=False, obj=state)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
