"""The one install function: verify while placing, commit only when everything checked out."""

from __future__ import annotations

import os
import posixpath
import stat
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Set, Tuple

from k3bundle.installer.errors import UsageError
from k3bundle.installer.format.hashing import HashPool, truncated
from k3bundle.installer.format.manifest import (
    KIND_HELMCHART_MANIFEST,
    Manifest,
    arch_from_machine,
    check_arch,
)
from k3bundle.installer.format.sources import BundleSource, VerifyingStream
from k3bundle.installer.format.verify import Authenticated, open_authenticated
from k3bundle.installer.host import host_config, units
from k3bundle.installer.host.destination import HostDestination
from k3bundle.installer.host.layout import (
    RECORD_PATH,
    SYSTEMD_DIR,
    USER_CONFIG,
    image_cache,
    staged_name,
)
from k3bundle.installer.host.lock import HostLock, locked
from k3bundle.installer.host.plan import (
    HostSettings,
    Options,
    Placement,
    Plan,
    plan_install,
    resolve_host,
)
from k3bundle.installer.host.preflight import (
    check_downgrade,
    check_foreign,
    check_space,
    choose_bin_dir,
)
from k3bundle.installer.host.prerequisites import check_required
from k3bundle.installer.host.record import Record
from k3bundle.installer.host.service import (
    Report,
    Runner,
    is_host_root,
    restart_commands,
    run_all,
    run_command,
    xtables_tools,
)
from k3bundle.installer.host.transaction import Change, Journal
from k3bundle.installer.progress import Progress, human_size

CHART_PREFIX = "k3bundle-"  # the bundler names chart manifests k3bundle-NAME.yaml (charts.py)


@dataclass
class Outcome:
    """What an install did (or, with --dry-run, would do)."""

    version: str
    arch: str
    service: str
    placed: List[str] = field(default_factory=list)
    removed: List[str] = field(default_factory=list)
    unchanged: List[str] = field(default_factory=list)
    commands: List[List[str]] = field(default_factory=list)
    kubeconfig: Optional[str] = None  # a server's, for the closing lines

    @property
    def changed(self) -> bool:
        """True when at least one file or link was (or would be) written."""
        return bool(self.placed or self.removed)


def host_arch(options: Options) -> str:
    """The architecture to install: --arch, else the machine's own."""
    return check_arch(options.arch) if options.arch else arch_from_machine(os.uname().machine)


def choose_arch(
    options: Options, manifest: Manifest, previous: Optional[Record], report: Report
) -> str:
    """--arch, else the installed generation's (an upgrade never switches silently), else the
    machine's own."""
    installed = previous.arch if previous is not None else None
    if options.arch is None and installed:
        if installed not in manifest.architectures:
            carried = ", ".join(manifest.architectures)
            raise UsageError(
                f"k3s is installed for {installed} here and the bundle carries only {carried}",
                f"Use a bundle built for {installed}, or pass --arch ARCH to change the "
                "architecture of this host's k3s.",
            )
        return installed
    arch = host_arch(options)
    if installed and arch != installed:
        report(f"note: --arch {arch} changes the installed architecture from {installed}")
    return arch


def install(
    options: Options, report: Report, progress: Progress, runner: Runner = run_command
) -> Outcome:
    """Verify the bundle and place everything it carries for this host, all or nothing."""
    dest = HostDestination(options.root)
    if options.dry_run:  # changes nothing, takes no lock: it only reads
        note_pending(dest, report)
        return _install(options, dest, None, report, progress, runner)
    with locked(dest.fs, options.wait, report) as lock:
        recover(Journal(dest.fs), lock, report)
        return _install(options, dest, lock, report, progress, runner)


def _install(
    options: Options,
    dest: HostDestination,
    lock: Optional[HostLock],
    report: Report,
    progress: Progress,
    runner: Runner,
) -> Outcome:
    journal = Journal(dest.fs, durable=options.sync)
    source, auth = open_authenticated(
        options.bundle, options.pubkeys, options.root, options.allow_unsigned
    )
    with source:
        made_for_lock = list(lock.created) if lock is not None else []
        previous = dest.read_record()  # read and checked once; the commit replaces it
        plan, host = _plan(auth, options, dest, previous, made_for_lock, report)
        dest.check_placeable([*plan_targets(plan), *(link.path for link in plan.links)])
        current = dest.current_targets(plan.files)  # every target hashed at once, on all cores
        check_required(plan, auth.manifest, previous, current, lambda t: _disk_size(dest, t))
        check_space(dest.fs, [p for p in plan.files if p.target not in current])
        outcome = Outcome(auth.manifest.k3s_version, plan.arch, plan.service)
        change = _change(plan, current, dest, previous)
        if not options.dry_run and change.moves:  # nothing to stage: leave the state dir be
            dirs = [*made_for_lock, *dest.missing_dirs(plan_targets(plan))]
            journal.begin_staging([source_of for source_of, _ in change.moves], dirs)
        try:
            _place(source, auth, plan, current, dest, options, progress)
        except BaseException:
            dest.abort()
            journal.discard()
            raise
    _describe(plan, current, dest, options, outcome, report)
    _describe_removals(change, previous, options, outcome, report)
    if not options.dry_run:
        _commit(journal, change, dest, host)
    outcome.kubeconfig = _kubeconfig(host)
    if (outcome.changed or options.force_restart) and is_host_root(options.root):
        unit = f"{outcome.service}.service"
        outcome.commands = restart_commands(
            unit, options.no_start, options.skip_enable, xtables_tools()
        )
        run_all(outcome.commands, report, runner, options.dry_run)
    else:
        _say_service(options, outcome, report)
    return outcome


def _disk_size(dest: HostDestination, target: str) -> Optional[int]:
    """The size of a regular file at `target`, None when there is none (or a link)."""
    try:
        info = dest.path(target).lstat()
    except OSError:
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def _kubeconfig(host: HostSettings) -> Optional[str]:
    """Where a server's k3s writes its kubeconfig: config.yaml's write-kubeconfig, else the env
    file's K3S_KUBECONFIG_OUTPUT (config beats env in k3s), else the default path."""
    if host.role != "server":
        return None
    chosen = host.config.get("write-kubeconfig") or host.env.get("K3S_KUBECONFIG_OUTPUT")
    return str(chosen) if chosen else "/etc/rancher/k3s/k3s.yaml"


def recover(journal: Journal, lock: HostLock, report: Report) -> None:
    """Finish or undo what an earlier, interrupted command left (the caller holds the lock)."""
    done = journal.recover()
    if done:
        lock.created.extend(journal.leftover_dirs)  # removed with the lock file, if empty
        report(f"note: {done}")


def note_pending(dest: HostDestination, report: Report) -> None:
    """For commands that change nothing: say when an earlier command was cut off."""
    if Journal(dest.fs).pending() is not None:
        report("note: an earlier command was interrupted; the next real run will finish it")


def plan_targets(plan: Plan) -> List[str]:
    """Every file target of a plan."""
    return [p.target for p in plan.files]


def _plan(
    auth: Authenticated,
    options: Options,
    dest: HostDestination,
    previous: Optional[Record],
    made_for_lock: List[str],
    report: Report,
) -> Tuple[Plan, HostSettings]:
    check_downgrade(previous, auth.manifest.k3s_version, options.allow_downgrade)
    check_foreign(dest.fs, previous, options.adopt)
    old_role = previous.role if previous is not None else "server"
    old_env = dest.read_env(f"{SYSTEMD_DIR}/{units.service_name(old_role)}.service.env")
    bin_dir = choose_bin_dir(dest.fs, previous, options.dry_run)
    old_config = dest.read_json(USER_CONFIG)
    host = resolve_host(options, auth.manifest, previous, old_env, bin_dir, old_config)
    host = host_config.settle(host, auth.manifest, dest, previous, report)
    commands = dest.existing_commands()

    def missing(targets: Sequence[str]) -> List[str]:
        return [*made_for_lock, *dest.missing_dirs(targets)]

    plan = plan_install(
        auth.manifest,
        auth.bundle_id,
        options,
        choose_arch(options, auth.manifest, previous, report),
        commands,
        previous,
        host,
        missing,
    )
    return plan, host


def _change(
    plan: Plan, current: Set[str], dest: HostDestination, previous: Optional[Record]
) -> Change:
    """The commit: staged files to move, old files and links to remove, what to keep."""
    targets = set(plan_targets(plan))
    moves = [(staged_name(p.target), p.target) for p in plan.files if p.target not in current]
    old_files = [f.path for f in previous.files] if previous is not None else []
    removals = [path for path in old_files if path not in targets]
    new_links = {link.path for link in plan.links}
    old_links = [link.path for link in previous.links] if previous is not None else []
    unlinks = [path for path in old_links if path not in new_links]
    links = [(link.path, link.target) for link in plan.links if not dest.link_is_current(link)]
    backups = [target for _, target in moves if dest.path(target).exists()] + removals
    if RECORD_PATH in current:
        backups = []  # a repair: the recorded generation stays, and so does the one before it
    return Change(moves, removals, links, unlinks, backups)


def _commit(journal: Journal, change: Change, dest: HostDestination, host: HostSettings) -> None:
    if change.moves or change.removals or change.links or change.unlinks:
        journal.commit(change)
    else:
        journal.discard()
    cache = image_cache(host.data_dir)
    if host.image_cache and not os.path.lexists(dest.path(cache)):
        # k3s only reads and rewrites .cache.json; it must exist for k3s to use it.
        dest.ensure_empty_file(cache, 0o644)


def _place(
    source: BundleSource,
    auth: Authenticated,
    plan: Plan,
    current: Set[str],
    dest: HostDestination,
    options: Options,
    progress: Progress,
) -> None:
    held = auth.manifest.held  # a slice: only these architectures' bytes are in the archive
    present = [e for e in auth.manifest.entries if held is None or e.arch in (None, *held)]
    progress.start(f"Verifying and placing {source.name}", sum(e.size for e in present))
    with HashPool(progress.advance) as pool:
        for entry, stream in source.payload(auth.manifest, pool):
            placement = plan.placement_for(entry)
            if placement is None or placement.target in current or options.dry_run:
                stream.verify_in(pool, progress.advance)
            else:
                _stage_member(dest, placement, stream, pool, progress, options.sync)
        pool.finish()
    progress.finish()
    for placement in plan.files:
        if placement.entry is None and placement.target not in current and not options.dry_run:
            content = [memoryview(placement.content or b"")]
            dest.stage(placement, content, lambda n: None, options.sync)


def _stage_member(
    dest: HostDestination,
    placement: Placement,
    stream: VerifyingStream,
    pool: HashPool,
    progress: Progress,
    sync: bool,
) -> None:
    """Copy in the kernel and hash behind the copy when the bundle is one file, else stream."""
    extent = stream.extent()
    if extent is None:
        dest.stage(placement, stream.chunks(), progress.advance, sync)
        return
    job = stream.hash_staged(pool, dest.staged_path(placement.target), sync)  # per chunk in v2

    def published(count: int) -> None:
        job.publish(count)
        pool.poll()

    try:
        dest.stage_copy(placement, extent, published)
    except EOFError:
        raise truncated(stream.bundle, stream.entry.path) from None


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
        report(f"skipped {entry.path} (not for this {plan.arch} {plan.service} host)")


def _describe_removals(
    change: Change,
    previous: Optional[Record],
    options: Options,
    outcome: Outcome,
    report: Report,
) -> None:
    """Every file and link the new generation no longer has, and what k3s keeps of a chart."""
    verb = "would remove" if options.dry_run else "removed"
    kinds = {f.path: f.kind for f in previous.files} if previous is not None else {}
    for path in [*change.removals, *change.unlinks]:
        outcome.removed.append(path)
        report(f"{verb} {path}")
        if kinds.get(path) == KIND_HELMCHART_MANIFEST:
            report(_release_note(path))


def _release_note(manifest: str) -> str:
    """k3s never deletes what a manifest deployed when the file goes (its AddOn stays)."""
    name = posixpath.basename(manifest).rsplit(".", 1)[0]
    name = name[len(CHART_PREFIX) :] if name.startswith(CHART_PREFIX) else name
    return (
        f"note: the chart {name} is no longer in the bundle; k3s keeps the deployed release "
        f"until 'kubectl delete helmchart {name} -n kube-system' (helm then uninstalls it)"
    )


def _note(outcome: Outcome, report: Report, unchanged: bool, changed_line: str, line: str) -> None:
    if unchanged:
        outcome.unchanged.append(line)
        report(f"unchanged {line}")
    else:
        outcome.placed.append(line)
        report(changed_line)


def _say_service(options: Options, outcome: Outcome, report: Report) -> None:
    unit = f"{outcome.service}.service"
    if not is_host_root(options.root):
        enabled = "enabled by its wants link"
        if options.skip_enable:
            enabled = "not enabled (INSTALL_K3S_SKIP_ENABLE)"
        report(f"--root given: {unit} {enabled}; no systemctl call, nothing started")
    else:
        report(f"no change detected, {unit} left as it is (not restarted)")
