"""What an upgrade bundle (`k3bundle build --since PREVIOUS`) relies on the host already holding.

A k3bundle/v2 manifest may carry two top-level fields:

- `requires`: image archives PREVIOUS delivered and this bundle leaves out, each with the member
  path it had, its sha256, size, kind and architecture. The installer places nothing before the
  host's install record (and the files themselves) show every one for the host's architecture.
- `since`: which bundle that was (`bundle_id`, `k3s_version`, `name`), so a refusal can name the
  full bundle that would work.

Both are hostile input like every manifest field: checked for type and shape here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Set, Tuple

from k3bundle.installer.errors import FormatError
from k3bundle.installer.format import manifest_fields as fields
from k3bundle.installer.format.manifest_fields import MANIFEST_NAME, check_member_path

REQUIRES = "requires"
SINCE = "since"
# Only image archives can be relied on: everything else is small and always carried.
REQUIRABLE_KINDS = ("airgap-images", "images")
_WHERE = f"{MANIFEST_NAME}: {REQUIRES}[]"


@dataclass(frozen=True)
class Requirement:
    """One file the host must already hold, as PREVIOUS delivered it."""

    path: str  # the member path PREVIOUS carried it under (the host target follows from it)
    sha256: str
    size: int
    kind: str
    arch: str

    def to_json(self) -> Dict[str, Any]:
        """The item as the manifest stores it."""
        return {
            "path": self.path,
            "sha256": self.sha256,
            "size": self.size,
            "kind": self.kind,
            "arch": self.arch,
        }


@dataclass(frozen=True)
class Since:
    """The bundle an upgrade bundle was built against."""

    bundle_id: str
    k3s_version: str
    name: str
    full_size: int = 0  # payload bytes the same build would carry without --since

    def to_json(self) -> Dict[str, Any]:
        """The field as the manifest stores it."""
        return {
            "bundle_id": self.bundle_id,
            "k3s_version": self.k3s_version,
            "name": self.name,
            "full_size": self.full_size,
        }


def requirements(extra: Mapping[str, Any]) -> Tuple[Requirement, ...]:
    """The `requires` items of a parsed manifest's extra fields (already validated)."""
    return tuple(_requirement(item) for item in extra.get(REQUIRES) or [])


def since_of(extra: Mapping[str, Any]) -> Optional[Since]:
    """The `since` field of a parsed manifest's extra fields, None when absent."""
    doc = extra.get(SINCE)
    if not isinstance(doc, dict):
        return None
    full = doc.get("full_size")
    return Since(str(doc["bundle_id"]), str(doc["k3s_version"]), str(doc["name"]), int(full or 0))


def check_requires(
    extra: Mapping[str, Any], arches: Tuple[str, ...], carried: Iterable[str]
) -> None:
    """Validate `requires` and `since`: shapes, kinds, listed arches, no path twice or carried."""
    items = fields.objects(fields.optional_array(extra, REQUIRES, MANIFEST_NAME), _WHERE)
    since = fields.optional_mapping(extra, SINCE, MANIFEST_NAME)
    if items and not since:
        raise FormatError(f"{MANIFEST_NAME} has '{REQUIRES}' but no '{SINCE}' naming the bundle")
    if since:
        _check_since(since)
    seen: Set[str] = set(carried)
    for item in items:
        required = _requirement(item)
        if required.arch not in arches:
            raise FormatError(f"{_WHERE} {required.path!r} has an architecture not listed")
        if required.path in seen:
            raise FormatError(f"{_WHERE} {required.path!r} is listed twice or also carried")
        seen.add(required.path)


def _check_since(since: Mapping[str, Any]) -> None:
    where = f"{MANIFEST_NAME}: {SINCE}"
    fields.text(since, "bundle_id", where, fields.SHA256)
    fields.text(since, "k3s_version", where, fields.K3S_VERSION)
    fields.text(since, "name", where)
    if since.get("full_size") is not None:
        fields.integer(since, "full_size", where)


def _requirement(item: Mapping[str, Any]) -> Requirement:
    path = fields.text(item, "path", _WHERE)
    check_member_path(path)
    where = f"{_WHERE} {path!r}"
    kind = fields.text(item, "kind", where)
    if kind not in REQUIRABLE_KINDS:
        raise FormatError(f"{where} has the kind {kind!r}; only image archives can be required")
    return Requirement(
        path,
        fields.text(item, "sha256", where, fields.SHA256),
        fields.integer(item, "size", where),
        kind,
        fields.text(item, "arch", where),
    )


def requires_json(items: Iterable[Requirement], since: Since) -> Dict[str, Any]:
    """The two top-level fields, ready to merge into a manifest's extra fields."""
    listed: List[Dict[str, Any]] = [r.to_json() for r in items]
    return {REQUIRES: listed, SINCE: since.to_json()}
