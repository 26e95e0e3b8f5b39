"""The rules of an install: what goes where with which mode. Pure functions, no I/O.

`plan_install` turns a verified manifest and the user's options into a Plan: every file to place
(payload members and generated files), every symlink, and the install record that describes them.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Sequence, Set, Tuple

from . import units
from .config import dump_yaml
from .errors import UsageError
from .manifest import Entry, Manifest, canonical_json

BIN_DIR = "/usr/local/bin"
SYSTEMD_DIR = "/etc/systemd/system"
DATA_DIR = "/var/lib/rancher/k3s"
CONFIG_DIR = "/etc/rancher/k3s"
RECORD_PATH = "/var/lib/k3bundle/record.json"
RECORD_FORMAT = "k3bundle-record/v1"
LINKED_COMMANDS = ("kubectl", "crictl", "ctr")
SERVER_ONLY = ("chart", "helmchart-manifest")

# kind → (target folder, mode); a None folder means the fixed path of the k3s binary.
TARGETS: Mapping[str, Tuple[str, int]] = {
    "k3s-binary": (BIN_DIR, 0o755),
    "airgap-images": (f"{DATA_DIR}/agent/images", 0o644),
    "images": (f"{DATA_DIR}/agent/images", 0o644),
    "chart": (f"{DATA_DIR}/server/static/charts", 0o644),
    "helmchart-manifest": (f"{DATA_DIR}/server/manifests", 0o600),
}


@dataclass(frozen=True)
class Options:
    """Everything the user chose for one install, built by the CLI."""

    bundle: str
    root: str = "/"
    pubkeys: Tuple[str, ...] = ()
    allow_unsigned: bool = False
    arch: Optional[str] = None
    dry_run: bool = False
    no_start: bool = False
    token: Optional[str] = None
    token_file: Optional[str] = None
    exec_args: Tuple[str, ...] = ()
    role: str = "server"
    environ: Mapping[str, str] = field(default_factory=dict)


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

    def placement_for(self, entry: Entry) -> Optional[Placement]:
        """The placement of a payload entry, or None when this host skips it."""
        for placement in self.files:
            if placement.entry is not None and placement.entry.path == entry.path:
                return placement
        return None


def target_of(entry: Entry) -> Tuple[str, int]:
    """Where a payload entry lands on the host and with which mode."""
    folder, mode = TARGETS[entry.kind]
    name = "k3s" if entry.kind == "k3s-binary" else entry.name
    return posixpath.join(folder, name), mode


def plan_install(
    manifest: Manifest,
    bundle_id: str,
    options: Options,
    arch: str,
    existing_commands: Set[str],
    previous: Optional[Mapping[str, Any]] = None,
) -> Plan:
    """Decide every file and link of the install; the record comes last."""
    wanted = manifest.for_arch(arch)
    chosen = [e for e in wanted if options.role == "server" or e.kind not in SERVER_ONLY]
    payload = [Placement(*target_of(e), entry=e) for e in chosen]
    _check_targets_unique(payload)
    generated = _generated_files(manifest, options)
    links = [Link(f"{BIN_DIR}/{c}", "k3s") for c in LINKED_COMMANDS if c not in existing_commands]
    service = units.service_name(options.role)
    if options.root != "/":
        wants = f"{SYSTEMD_DIR}/multi-user.target.wants/{service}.service"
        links.append(Link(wants, f"{SYSTEMD_DIR}/{service}.service"))
    files = [*payload, *generated]
    record = _record(manifest, bundle_id, arch, options.role, files, links, previous)
    files.append(Placement(RECORD_PATH, 0o600, content=record))
    skipped = tuple(e for e in manifest.entries if e not in chosen)
    return Plan(arch, service, tuple(files), tuple(links), skipped)


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


def unit_env(options: Options) -> Dict[str, str]:
    """The unit's env file: K3S_*/CONTAINERD_*/proxies from the caller, then the token."""
    env = units.env_from_environment(options.environ)
    if options.token:
        env["K3S_TOKEN"] = options.token
    if options.token_file:
        env["K3S_TOKEN_FILE"] = options.token_file
    return env


def _generated_files(manifest: Manifest, options: Options) -> Sequence[Placement]:
    service, role = units.service_name(options.role), options.role
    unit = units.render_unit(role, options.exec_args, BIN_DIR, SYSTEMD_DIR)
    files = [
        Placement(f"{SYSTEMD_DIR}/{service}.service", 0o644, content=unit.encode()),
        Placement(
            f"{SYSTEMD_DIR}/{service}.service.env",
            0o600,
            content=units.render_env(unit_env(options)).encode(),
        ),
        Placement(
            f"{BIN_DIR}/k3s-killall.sh", 0o755, content=units.render_killall(DATA_DIR).encode()
        ),
        Placement(
            f"{BIN_DIR}/{service}-uninstall.sh",
            0o755,
            content=units.render_uninstall(role, BIN_DIR, SYSTEMD_DIR, DATA_DIR).encode(),
        ),
    ]
    for name in ("config", "registries"):
        doc = manifest.install.get(name) or {}
        if doc:
            files.append(
                Placement(f"{CONFIG_DIR}/{name}.yaml", 0o600, content=dump_yaml(doc).encode())
            )
    return files


def _record(
    manifest: Manifest,
    bundle_id: str,
    arch: str,
    role: str,
    files: Sequence[Placement],
    links: Sequence[Link],
    previous: Optional[Mapping[str, Any]],
) -> bytes:
    doc: Dict[str, Any] = {
        "format": RECORD_FORMAT,
        "bundle_id": bundle_id,
        "k3s_version": manifest.k3s_version,
        "arch": arch,
        "role": role,
        "files": [_record_file(p) for p in files],
        "links": [{"path": link.path, "target": link.target} for link in links],
        "previous": _previous(previous, bundle_id),
    }
    return canonical_json(doc) + b"\n"


def _record_file(placement: Placement) -> Dict[str, Any]:
    kind = placement.entry.kind if placement.entry is not None else "generated"
    return {
        "path": placement.target,
        "sha256": placement.sha256,
        "size": placement.size,
        "mode": f"{placement.mode:04o}",
        "kind": kind,
    }


def _previous(old: Optional[Mapping[str, Any]], bundle_id: str) -> Optional[Dict[str, Any]]:
    if not old:
        return None
    if old.get("bundle_id") == bundle_id:
        prior = old.get("previous")
        return dict(prior) if isinstance(prior, Mapping) else None
    return {"bundle_id": old.get("bundle_id"), "k3s_version": old.get("k3s_version")}
