"""What every payload producer returns: bundle entries, their local files, manifest summaries,
and which of those files this very build just wrote or downloaded (and hashed while doing so)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Sequence, Set

from k3bundle.installer.format import Entry


@dataclass
class Produced:
    """Entries (in bundle order), member path → local file, the manifest's summaries (`images`,
    `charts`, ...), and `fresh`: member paths whose bytes were hashed as they were written, so
    the bundle writer copies them without reading them a second time. `notes` carry what a
    later step may need (the pulled images, say) and never reach the manifest."""

    entries: List[Entry] = field(default_factory=list)
    files: Dict[str, Path] = field(default_factory=dict)
    metadata: Dict[str, Any] = field(default_factory=dict)
    fresh: Set[str] = field(default_factory=set)
    notes: Dict[str, Any] = field(default_factory=dict)  # for later steps; never written

    def add(self, entry: Entry, local: Path, fresh: bool = False) -> None:
        """Add one payload file (`fresh`: its sha256 was measured while it was written)."""
        self.entries.append(entry)
        self.files[entry.path] = local
        if fresh:
            self.fresh.add(entry.path)


def combined(parts: Sequence[Produced]) -> Produced:
    """Every part's entries in order, one after the other; summaries merged (later keys win)."""
    out = Produced()
    for part in parts:
        out.entries.extend(part.entries)
        out.files.update(part.files)
        out.metadata.update(part.metadata)
        out.fresh |= part.fresh
        out.notes.update(part.notes)
    return out
