"""The service manager: systemctl on a real host, nothing at all under --root."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Callable, List, Sequence

from .errors import InstallError

Report = Callable[[str], None]
Runner = Callable[[Sequence[str]], None]


def run_command(command: Sequence[str]) -> None:
    """Run a host command; raise InstallError naming it and its last error line if it fails."""
    shown = " ".join(command)
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, check=False)
    except OSError as exc:
        raise InstallError(
            f"cannot run '{shown}': {exc.strerror}",
            f"Is {command[0]} installed and on PATH? The files are in place; run it by hand.",
        ) from None
    if done.returncode != 0:
        raise InstallError(
            f"'{shown}' failed (exit {done.returncode}): {_last_line(done.stderr or done.stdout)}",
            "The files are in place; fix what it reports (for systemctl, 'journalctl -xe' "
            "tells more) and run the command again.",
        )


def _last_line(output: str) -> str:
    # systemctl ends with its own verdict; earlier lines are context, and one line is the rule.
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def is_host_root(root: str) -> bool:
    """True when --root is the running system's / (so systemctl applies)."""
    return Path(root).resolve() == Path("/")


def is_root_user() -> bool:
    """True when this process may change the real host (effective uid 0)."""
    return os.geteuid() == 0


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
