"""The service manager: systemctl on a real host, nothing at all under --root."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from k3bundle.installer.errors import InstallError

Report = Callable[[str], None]
Runner = Callable[[Sequence[str]], None]


def run_command(command: Sequence[str]) -> None:
    """Run a host command; raise InstallError naming it and its last error line if it fails."""
    import subprocess  # here: an install under --root runs no command (start-up time, cli.py)

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


def restart_commands(
    unit: str, no_start: bool, skip_enable: bool = False, xtables: Sequence[str] = ()
) -> List[List[str]]:
    """After files changed: reload units, enable, clean the firewall and restart once.

    As install.sh: INSTALL_K3S_SKIP_ENABLE stops after the reload (no enable, no start),
    --no-start after the enable; `xtables` names the iptables tools present on the host.
    """
    commands = [["systemctl", "daemon-reload"]]  # kept even then: systemd must see the new unit
    if skip_enable:
        return commands
    commands.append(["systemctl", "enable", unit])
    if not no_start:
        commands.extend(["sh", "-c", XTABLES_CLEANUP.format(tool=tool)] for tool in xtables)
        commands.append(["systemctl", "restart", "--no-block", unit])
    return commands


# install.sh's service_enable_and_start drops the rules an earlier k3s left (KUBE-*, flannel)
# before it starts k3s, unless the host's save/restore tools cannot read those rules back.
XTABLES_CLEANUP = (
    'rules=$({tool}-save 2>/dev/null) && [ -n "$rules" ] || exit 0; '
    "if printf '%s\\n' \"$rules\" | grep -qx -e '-A CNI-HOSTPORT-MASQ -j MASQUERADE'; then "
    "echo 'Host {tool}-save/{tool}-restore tools are incompatible with existing rules' >&2; "
    "exit 0; fi; "
    "printf '%s\\n' \"$rules\" | grep -v KUBE- | grep -iv flannel | {tool}-restore"
)


def xtables_tools(which: Callable[[str], Optional[str]] = shutil.which) -> List[str]:
    """iptables and ip6tables, where both their -save and -restore are installed."""
    return [t for t in ("iptables", "ip6tables") if which(f"{t}-save") and which(f"{t}-restore")]


def stop_commands(unit: str) -> List[List[str]]:
    """Before files go: stop and disable the unit."""
    return [["systemctl", "disable", "--now", unit]]


def forget_commands(unit: str) -> List[List[str]]:
    """After the unit file is gone: make systemd drop it, as upstream's k3s-uninstall.sh does.

    A failed unit stays loaded until its failed state is reset; one that stopped cleanly may be
    gone already, and then reset-failed has nothing to do (and says so with exit 1).
    """
    reset = f"systemctl reset-failed {unit} 2>/dev/null || true"
    return [["systemctl", "daemon-reload"], ["sh", "-c", reset]]


def run_all(
    commands: Sequence[Sequence[str]], report: Report, runner: Runner, dry_run: bool = False
) -> None:
    """Run (or, on a dry run, only print) each command in order."""
    for command in commands:
        report(("would run: " if dry_run else "running: ") + " ".join(command))
        if not dry_run:
            runner(command)
