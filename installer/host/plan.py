"""The rules of an install: what goes where with which mode. Pure functions, no I/O.

`plan_install` turns a verified manifest and the user's options into a Plan: every file to place
(payload members and generated files), every symlink, and the install record that describes them.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from k3bundle.installer.errors import FormatError, UsageError
from k3bundle.installer.format.manifest import (
    KIND_AIRGAP_IMAGES,
    KIND_CHART,
    KIND_HELMCHART_MANIFEST,
    KIND_IMAGES,
    KIND_K3S_BINARY,
    Entry,
    Manifest,
    canonical_json,
)
from k3bundle.installer.format.requires import requirements
from k3bundle.installer.host import units
from k3bundle.installer.host.config import dump_yaml
from k3bundle.installer.host.host_settings import merge_config, resolve_host
from k3bundle.installer.host.layout import (
    ADMIN_CONFIG,
    BIN_DIR,
    CONFIG_DIR,
    DATA_DIR,
    IMAGE_CACHE,
    LINKED_COMMANDS,
    RECORD_PATH,
    SYSTEMD_DIR,
    USER_CONFIG,
    charts_dir,
    image_cache,
    images_dir,
    manifests_dir,
    placeable_folder,
)
from k3bundle.installer.host.options import HostSettings, Options
from k3bundle.installer.host.record import RECORD_FORMAT, Record, RecordFile, RecordLink

__all__ = [
    "BIN_DIR",
    "CONFIG_DIR",
    "DATA_DIR",
    "IMAGE_CACHE",
    "LINKED_COMMANDS",
    "RECORD_FORMAT",
    "RECORD_PATH",
    "HostSettings",
    "Options",
    "merge_config",
    "resolve_host",
]

SERVER_ONLY = (KIND_CHART, KIND_HELMCHART_MANIFEST)

# kind → (its folder inside k3s's data dir, mode); None: the k3s binary, in the bin dir.
TARGETS: Mapping[str, Tuple[Optional[Callable[[str], str]], int]] = {
    KIND_K3S_BINARY: (None, 0o755),
    KIND_AIRGAP_IMAGES: (images_dir, 0o644),
    KIND_IMAGES: (images_dir, 0o644),
    KIND_CHART: (charts_dir, 0o644),
    KIND_HELMCHART_MANIFEST: (manifests_dir, 0o600),
}


@dataclass(frozen=True)
class Placement:
    """One file to place: from a payload entry or with generated content."""

    target: str
    mode: int
    entry: Optional[Entry] = None
    content: Optional[bytes] = None

    @property
    def sha256(self) -> str:
        """The sha256 the placed file will have."""
        if self.entry is not None:
            return self.entry.sha256
        return hashlib.sha256(self.content or b"").hexdigest()

    @property
    def size(self) -> int:
        """The size the placed file will have."""
        return self.entry.size if self.entry is not None else len(self.content or b"")


@dataclass(frozen=True)
class Link:
    """A symlink at `path` pointing to `target`."""

    path: str
    target: str


@dataclass(frozen=True)
class Plan:
    """Everything an install will do, in order."""

    arch: str
    service: str
    files: Tuple[Placement, ...]
    links: Tuple[Link, ...]
    skipped: Tuple[Entry, ...]
    # Files an upgrade bundle (`build --since`) relies on: already on the host, never staged,
    # kept in the new record (so uninstall removes them and a later --since counts them).
    required: Tuple[Placement, ...] = ()
    # Payload placements by member path, built once: looking each entry up must not scan
    # every file (100,000 entries would take minutes).
    _by_path: Dict[str, Placement] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index = {p.entry.path: p for p in self.files if p.entry is not None}
        object.__setattr__(self, "_by_path", index)

    def placement_for(self, entry: Entry) -> Optional[Placement]:
        """The placement of a payload entry, or None when this host skips it."""
        return self._by_path.get(entry.path)


def required_entries(manifest: Manifest, arch: str) -> List[Entry]:
    """The `requires` items for `arch` as entries (they land where PREVIOUS placed them)."""
    return [
        Entry(r.path, r.size, r.sha256, r.kind, 0o644, r.arch)
        for r in requirements(manifest.extra)
        if r.arch == arch
    ]


def target_of(entry: Entry, bin_dir: str = BIN_DIR, data_dir: str = DATA_DIR) -> Tuple[str, int]:
    """Where a payload entry lands on the host and with which mode."""
    if entry.kind not in TARGETS:  # parse refuses it first; a hand-made Entry lands here
        raise FormatError(
            f"bundle member {entry.path} has an unknown kind {entry.kind!r}",
            "Build the bundle again with a k3bundle of the same version as this installer.",
        )
    folder, mode = TARGETS[entry.kind]
    if folder is None:
        return posixpath.join(bin_dir, "k3s"), mode
    return posixpath.join(folder(data_dir), entry.name), mode


def plan_install(
    manifest: Manifest,
    bundle_id: str,
    options: Options,
    arch: str,
    existing_commands: Set[str],
    previous: Optional[Record] = None,
    host: Optional[HostSettings] = None,
    missing: Callable[[Sequence[str]], Sequence[str]] = lambda targets: (),
) -> Plan:
    """Decide every file and link of the install; the record comes last.

    `missing(targets)` names the folders placing those targets would create (the caller looks
    at the host): the record keeps them, with those of earlier installs, for uninstall.
    """
    host = host or resolve_host(options, manifest)
    wanted = manifest.for_arch(arch)
    chosen = [e for e in wanted if host.role == "server" or e.kind not in SERVER_ONLY]
    payload = [Placement(*target_of(e, host.bin_dir, host.data_dir), entry=e) for e in chosen]
    required = [
        Placement(*target_of(e, host.bin_dir, host.data_dir), entry=e)
        for e in required_entries(manifest, arch)
    ]
    payload += required
    _check_targets_unique(payload)
    generated = _generated_files(manifest, host)
    links = _command_links(host.bin_dir, existing_commands, options.symlink)
    service = units.service_name(host.role)
    if options.root != "/" and not options.skip_enable:
        wants = f"{SYSTEMD_DIR}/multi-user.target.wants/{service}.service"
        links.append(Link(wants, f"{SYSTEMD_DIR}/{service}.service"))
    files = [*payload, *generated]
    targets = [*(p.target for p in files), *(link.path for link in links), RECORD_PATH]
    folders = _folders(previous, missing(targets), host.data_dir)
    record = _record(manifest, bundle_id, arch, host, files, links, previous, folders)
    files.append(Placement(RECORD_PATH, 0o600, content=record))
    kept = {e.path for e in chosen}  # a set: `e not in chosen` would be quadratic
    skipped = tuple(e for e in manifest.entries if e.path not in kept)
    return Plan(arch, service, tuple(files), tuple(links), skipped, tuple(required))


def _command_links(bin_dir: str, existing: Set[str], symlink: Optional[str]) -> List[Link]:
    """kubectl, crictl and ctr as links to k3s; INSTALL_K3S_SYMLINK=skip makes none, =force
    makes them even where those commands exist, as install.sh does."""
    if symlink == "skip":
        return []
    wanted = [c for c in LINKED_COMMANDS if symlink == "force" or c not in existing]
    return [Link(f"{bin_dir}/{c}", "k3s") for c in wanted]


def _check_targets_unique(payload: Sequence[Placement]) -> None:
    seen: Dict[str, str] = {}
    for placement in payload:
        assert placement.entry is not None
        if placement.target in seen:
            raise UsageError(
                f"bundle members {seen[placement.target]} and {placement.entry.path} "
                f"would both be installed as {placement.target}",
                "Rebuild the bundle so that file names are unique per architecture.",
            )
        seen[placement.target] = placement.entry.path


def _generated_files(manifest: Manifest, host: HostSettings) -> List[Placement]:
    service, role, bin_dir = units.service_name(host.role), host.role, host.bin_dir
    unit = units.render_unit(role, host.exec_args, bin_dir, SYSTEMD_DIR)
    uninstall = units.render_uninstall(role, bin_dir, SYSTEMD_DIR, host.data_dir)
    files = [
        Placement(f"{SYSTEMD_DIR}/{service}.service", 0o644, content=unit.encode()),
        Placement(f"{SYSTEMD_DIR}/{service}.service.env", 0o600, content=_env_bytes(host)),
        Placement(
            f"{bin_dir}/k3s-killall.sh", 0o755, content=units.render_killall(host.data_dir).encode()
        ),
        Placement(f"{bin_dir}/{service}-uninstall.sh", 0o755, content=uninstall.encode()),
    ]
    if host.user_config:  # may hold secrets: 0600, and the record keeps only its hash
        content = canonical_json(dict(host.user_config)) + b"\n"
        files.append(Placement(USER_CONFIG, 0o600, content=content))
    if host.admin_state is not None:  # the admin's keys may be secrets too
        files.append(Placement(ADMIN_CONFIG, 0o600, content=host.admin_state))
    registries = host.registries
    if registries is None:
        registries = manifest.install.get("registries") or {}
    documents = {"config": host.config, "registries": registries}
    for name, doc in documents.items():
        if doc:
            files.append(
                Placement(f"{CONFIG_DIR}/{name}.yaml", 0o600, content=dump_yaml(doc).encode())
            )
    return files


def _env_bytes(host: HostSettings) -> bytes:
    try:
        return units.render_env(host.env).encode()
    except ValueError as exc:
        raise UsageError(f"cannot write the unit's env file: {exc}") from None


def _record(
    manifest: Manifest,
    bundle_id: str,
    arch: str,
    host: HostSettings,
    files: Sequence[Placement],
    links: Sequence[Link],
    previous: Optional[Record],
    folders: Sequence[str],
) -> bytes:
    record = Record(
        bundle_id=bundle_id,
        k3s_version=manifest.k3s_version,
        arch=arch,
        role=host.role,
        options={**host.remembered, "data_dir": host.data_dir},
        ensured=(image_cache(host.data_dir),) if host.image_cache else (),
        files=tuple(_record_file(p) for p in files),
        links=tuple(RecordLink(link.path, link.target) for link in links),
        folders=tuple(folders),
        previous=_previous(previous, bundle_id),
    )
    return record.to_bytes()


def _folders(previous: Optional[Record], created: Sequence[str], data_dir: str) -> List[str]:
    """Folders k3bundle created, by this install or an earlier one: uninstall's to remove (not
    those of an earlier data dir: the record may name only folders of its own)."""
    earlier = [f for f in previous.folders if placeable_folder(f, data_dir)] if previous else []
    return sorted({*earlier, *created})


def _record_file(placement: Placement) -> RecordFile:
    kind = placement.entry.kind if placement.entry is not None else "generated"
    return RecordFile(placement.target, placement.sha256, placement.size, placement.mode, kind)


def _previous(old: Optional[Record], bundle_id: str) -> Optional[Mapping[str, str]]:
    if old is None:
        return None
    if old.bundle_id == bundle_id:
        return old.previous
    return {"bundle_id": old.bundle_id, "k3s_version": old.k3s_version}
