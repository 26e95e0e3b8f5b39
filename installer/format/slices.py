"""Slices: bundles whose archive holds the payload of only some of the manifest's architectures.

`k3bundle slice` keeps the signed manifest (and its signature) byte for byte and leaves out the
other architectures' members. Which architectures an archive holds is decided here, in one
place, from the member names read up front (headers only, after the manifest is authenticated);
the reader then expects exactly those members in its one streaming pass, which still verifies
every byte it reads. An architecture is held when any of its files is in the archive, absent
when none is. Only a whole architecture may be absent: a slice that holds part of one is
refused as malformed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Collection, Dict, List, Optional, Tuple

from k3bundle.installer.errors import FormatError, K3BundleError
from k3bundle.installer.format.manifest import Entry, Manifest
from k3bundle.installer.format.tarstream import RawReader, TarStream


@dataclass(frozen=True)
class Holding:
    """Which of the manifest's architectures the archive holds (`holds` of `of`)."""

    holds: Tuple[str, ...]
    of: Tuple[str, ...]

    @property
    def is_slice(self) -> bool:
        """True when some architecture's files are left out of the archive."""
        return self.holds != self.of

    def expects(self, entry: Entry) -> bool:
        """Whether the archive must hold `entry` (architecture-neutral entries always)."""
        return entry.arch is None or entry.arch in self.holds

    def to_json(self) -> Optional[Dict[str, Any]]:
        """`{"holds": [...], "of": [...]}` for a slice, None for a full bundle."""
        return {"holds": list(self.holds), "of": list(self.of)} if self.is_slice else None


def full_holding(manifest: Manifest) -> Holding:
    """A bundle that holds every architecture its manifest lists."""
    return Holding(manifest.architectures, manifest.architectures)


def decide_holding(
    manifest: Manifest, names: Collection[str], complete: bool, bundle: str
) -> Holding:
    """Decide from the archive's member names which architectures it holds.

    An archive read only in part (truncated, damaged) counts as a full bundle: the streaming
    pass then names what is missing or broken exactly as it does for any bundle.
    """
    if not complete:
        return full_holding(manifest)
    present = set(names)
    absent = [a for a in manifest.architectures if not _any_present(manifest, a, present)]
    holds = tuple(a for a in manifest.architectures if a not in absent)
    if not absent:
        return full_holding(manifest)
    if not holds:
        raise FormatError(
            f"{bundle} holds the files of none of its architectures "
            f"({', '.join(manifest.architectures)})",
            "Make the slice again with 'k3bundle slice BUNDLE --arch ARCH', or use the full "
            "bundle.",
        )
    for arch in holds:
        _refuse_partial(manifest, arch, present, bundle)
    return Holding(holds, manifest.architectures)


def _any_present(manifest: Manifest, arch: str, present: Collection[str]) -> bool:
    own = [e for e in manifest.entries if e.arch == arch]
    return not own or any(e.path in present for e in own)


def _refuse_partial(manifest: Manifest, arch: str, present: Collection[str], bundle: str) -> None:
    own = [e.path for e in manifest.entries if e.arch == arch]
    missing = [path for path in own if path not in present]
    if missing:
        raise FormatError(
            f"{bundle} is a slice that holds only {len(own) - len(missing)} of the {len(own)} "
            f"files of architecture {arch}: it lacks {missing[0]}, which the signed manifest "
            "lists",
            "A slice holds all of an architecture's files or none. Copy it again, or make it "
            "again with 'k3bundle slice' from the full bundle.",
        )


def scan_member_names(raw: RawReader, label: str) -> Tuple[List[str], bool]:
    """Every member name of the archive read from `raw`, headers only (data is skipped).

    Returns the names and whether the end-of-archive blocks were reached; a damaged archive
    stops the scan early (the streaming pass reports the damage).
    """
    tar = TarStream(raw, label)
    names: List[str] = []
    try:
        info = tar.next()
        while info is not None:
            names.append(info.name)
            if tar.take_extent() is None:  # only seekable readers are scanned
                return names, False
            info = tar.next()
    except K3BundleError:
        return names, False
    return names, True
