"""Before an upgrade bundle changes anything: does the host hold exactly what it relies on?

A bundle built with `k3bundle build --since PREVIOUS` leaves out image archives PREVIOUS delivered
and lists them in its manifest's `requires`. The install refuses, before it stages a byte, unless
for each one (for this host's architecture) the install record lists that file with that sha256
and size, and the file on disk still has them. The bytes are hashed too: the install already
hashes every target to learn which ones are current, so the check costs nothing extra, and a
file whose bytes changed behind the record would otherwise be trusted on its size alone.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Set

from k3bundle.installer.errors import RequirementError
from k3bundle.installer.format.manifest import Manifest
from k3bundle.installer.format.requires import since_of
from k3bundle.installer.host.plan import Placement, Plan
from k3bundle.installer.host.record import Record

# target -> its size on disk, None when it is not a regular file there
DiskSize = Callable[[str], Optional[int]]


def check_required(
    plan: Plan,
    manifest: Manifest,
    previous: Optional[Record],
    current: Set[str],
    disk_size: DiskSize,
) -> None:
    """Refuse (RequirementError, nothing changed) when a required file is not as PREVIOUS left
    it; `current` holds the targets whose size, sha256 and mode on disk match their plan."""
    problems = [
        (placement, problem)
        for placement in plan.required
        for problem in [_problem(placement, previous, current, disk_size)]
        if problem is not None
    ]
    if not problems:
        return
    placement, problem = problems[0]
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    raise RequirementError(
        f"this bundle is an upgrade that relies on {placement.target} (sha256 "
        f"{placement.sha256}, {placement.size} bytes) and {problem}{more}",
        _hint(manifest),
    )


def _problem(
    placement: Placement, previous: Optional[Record], current: Set[str], disk_size: DiskSize
) -> Optional[str]:
    """What the host has instead of the required file, or None when it holds exactly it."""
    if previous is None:
        return "k3bundle has installed nothing on this host"
    recorded = previous.file(placement.target)
    if recorded is None:
        return f"the install record (bundle {previous.bundle_id[:12]}) does not list it"
    if recorded.sha256 != placement.sha256 or recorded.size != placement.size:
        return f"the install record lists sha256 {recorded.sha256} ({recorded.size} bytes)"
    size = disk_size(placement.target)
    if size is None:
        return "it is missing on disk"
    if size != placement.size:
        return f"on disk it has {size} bytes"
    if placement.target not in current:
        return "its bytes (or mode) on disk no longer match that sha256"
    return None


def _hint(manifest: Manifest) -> str:
    since = since_of(manifest.extra)
    if since is None:
        return "Install the full bundle it was built against first, or build without --since."
    return (
        f"Install the full bundle {since.name} (k3s {since.k3s_version}, id "
        f"{since.bundle_id[:12]}) first, or build this one without --since."
    )


def required_targets(plan: Plan) -> List[str]:
    """The targets the plan relies on instead of placing."""
    return [p.target for p in plan.required]
