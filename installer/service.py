"""The service manager: systemctl on a real host, nothing at all under --root."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Callable, List, Sequence

from .errors import InstallError

Report = Callable[[str], None]
Runner = Callable[[Sequence[str]], None]


def run_command(command: Sequence[str]) -> None:
    """Run a host command; raise InstallError with its output when it fails."""
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, check=False)
    except OSError as exc:
        raise InstallError(
            f"cannot run {command[0]}: {exc.strerror}", "Is systemd installed?"
        ) from None
    if done.returncode != 0:
        raise InstallError(
            f"'{' '.join(command)}' failed: {(done.stderr or done.stdout).strip()}",
            "The files are in place; fix the service manager problem and run the command again.",
        )


def is_host_root(root: str) -> bool:
    """True when --root is the running system's / (so systemctl applies)."""
    return Path(root).resolve() == Path("/")


def restart_commands(unit: str, no_start: bool) -> List[List[str]]:
    """After files changed: reload units, enable, and restart once (unless --no-start)."""
    commands = [["systemctl", "daemon-reload"], ["systemctl", "enable", unit]]
    if not no_start:
        commands.append(["systemctl", "restart", "--no-block", unit])
    return commands


def stop_commands(unit: str) -> List[List[str]]:
    """Before files go: stop and disable the unit."""
    return [["systemctl", "disable", "--now", unit]]


def run_all(
    commands: Sequence[Sequence[str]], report: Report, runner: Runner, dry_run: bool = False
) -> None:
    """Run (or, on a dry run, only print) each command in order."""
    for command in commands:
        report(("would run: " if dry_run else "running: ") + " ".join(command))
        if not dry_run:
            runner(command)
