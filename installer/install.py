"""The one install function: verify while placing, commit only when everything checked out."""

from __future__ import annotations

import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Sequence, Set

from .destination import HostDestination
from .errors import InstallError
from .manifest import arch_from_machine, check_arch
from .plan import RECORD_PATH, Options, Plan, plan_install
from .progress import Progress, human_size
from .sources import BundleSource
from .verify import Authenticated, open_authenticated

Report = Callable[[str], None]
Runner = Callable[[Sequence[str]], None]


@dataclass
class Outcome:
    """What an install did (or, with --dry-run, would do)."""

    version: str
    arch: str
    service: str
    placed: List[str] = field(default_factory=list)
    unchanged: List[str] = field(default_factory=list)
    commands: List[List[str]] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """True when at least one file or link was (or would be) written."""
        return bool(self.placed)


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


def host_arch(options: Options) -> str:
    """The architecture to install: --arch, else the machine's own."""
    return check_arch(options.arch) if options.arch else arch_from_machine(platform.machine())


def install(
    options: Options, report: Report, progress: Progress, runner: Runner = run_command
) -> Outcome:
    """Verify the bundle and place everything it carries for this host, atomically."""
    source, auth = open_authenticated(
        options.bundle, options.pubkeys, options.root, options.allow_unsigned
    )
    with source:
        dest = HostDestination(options.root)
        plan = _plan(auth, options, dest)
        current = {p.target for p in plan.files if dest.is_current(p)}
        outcome = Outcome(auth.manifest.k3s_version, plan.arch, plan.service)
        try:
            _place(source, auth, plan, current, dest, options, progress)
        except BaseException:
            dest.abort()
            raise
    _describe(plan, current, dest, options, outcome, report)
    if not options.dry_run:
        links = tuple(link for link in plan.links if not dest.link_is_current(link))
        dest.commit(links)
    _manage_service(options, outcome, report, runner)
    return outcome


def _plan(auth: Authenticated, options: Options, dest: HostDestination) -> Plan:
    arch = host_arch(options)
    previous = dest.read_json(RECORD_PATH)
    commands = dest.existing_commands()
    return plan_install(auth.manifest, auth.bundle_id, options, arch, commands, previous)


def _place(
    source: BundleSource,
    auth: Authenticated,
    plan: Plan,
    current: Set[str],
    dest: HostDestination,
    options: Options,
    progress: Progress,
) -> None:
    progress.start(
        f"Verifying and placing {source.name}", sum(e.size for e in auth.manifest.entries)
    )
    for entry, stream in source.payload(auth.manifest):
        placement = plan.placement_for(entry)
        if placement is None or placement.target in current or options.dry_run:
            stream.drain(progress.advance)
        else:
            dest.stage(placement, stream.chunks(), progress.advance)
    progress.finish()
    for placement in plan.files:
        if placement.entry is None and placement.target not in current and not options.dry_run:
            dest.stage(placement, [memoryview(placement.content or b"")], lambda n: None)


def _describe(
    plan: Plan,
    current: Set[str],
    dest: HostDestination,
    options: Options,
    outcome: Outcome,
    report: Report,
) -> None:
    verb = "would place" if options.dry_run else "placed"
    for placement in plan.files:
        line = f"{placement.target} ({placement.mode:04o}, {human_size(placement.size)})"
        _note(outcome, report, placement.target in current, f"{verb} {line}", line)
    for link in plan.links:
        line = f"{link.path} -> {link.target}"
        verb_link = "would link" if options.dry_run else "linked"
        _note(outcome, report, dest.link_is_current(link), f"{verb_link} {line}", line)
    for entry in plan.skipped:
        report(f"skipped {entry.path} (not for this {plan.arch} {options.role})")


def _note(outcome: Outcome, report: Report, unchanged: bool, changed_line: str, line: str) -> None:
    if unchanged:
        outcome.unchanged.append(line)
        report(f"unchanged {line}")
    else:
        outcome.placed.append(line)
        report(changed_line)


def _is_host_root(root: str) -> bool:
    return Path(root).resolve() == Path("/")


def _manage_service(options: Options, outcome: Outcome, report: Report, runner: Runner) -> None:
    unit = f"{outcome.service}.service"
    if not _is_host_root(options.root):
        report(
            f"--root given: {unit} enabled by its wants link; no systemctl call, nothing started"
        )
        return
    if not outcome.changed:
        report(f"no change detected, {unit} left as it is")
        return
    enable = (
        ["systemctl", "enable", unit]
        if options.no_start
        else ["systemctl", "enable", "--now", "--no-block", unit]
    )
    for command in (["systemctl", "daemon-reload"], enable):
        outcome.commands.append(command)
        report(("would run: " if options.dry_run else "running: ") + " ".join(command))
        if not options.dry_run:
            runner(command)
