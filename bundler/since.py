"""`k3bundle build --since PREVIOUS`: carry only the image content PREVIOUS did not deliver.

PREVIOUS is a bundle, one of its parts, its parts index, or its bare manifest (`k3bundle inspect
BUNDLE --manifest`), read through the format's own reader and validated like any manifest: it is
hostile input. It is not trusted for anything the host does not check again: each file the new
bundle leaves out is listed in its `requires` with the sha256 PREVIOUS named, and the installer
refuses to install unless its own record and the file on disk show exactly that.

The grain is the image archive: k3s's airgap tarball of the same release (same path and sha256)
is left out whole; the extra-images archive is rewritten to hold only the images PREVIOUS did not
deliver (by name and digest, per architecture), under a path of its own that sorts after the
archives it relies on (k3s imports the folder in name order, so a re-pushed tag's new image is
imported last and wins). Everything that is not image content is always carried.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Sequence, Set, Tuple

from k3bundle.bundler.payloads.context import BuildContext
from k3bundle.bundler.payloads.images import PulledImage, Written, write_images
from k3bundle.bundler.payloads.produced import Produced
from k3bundle.installer.errors import FormatError, IntegrityError, UsageError
from k3bundle.installer.format import (
    MANIFEST_NAME,
    PARTS_SUFFIX,
    BundleSource,
    Entry,
    Manifest,
    Requirement,
    Since,
    parse_manifest,
    requirements,
    requires_json,
)

IMAGE_KINDS = ("airgap-images", "images")
MAX_MANIFEST_BYTES = 64 * 1024 * 1024  # what the format allows a manifest member
_UPDATE = re.compile(r"\.update-([0-9]{3})\.")
ImageKey = Tuple[str, str, str]  # (name, digest, arch)
# (arch, names of the images to keep, member path) -> the archive holding just those images
WriteSubset = Callable[[str, Set[str], str], Written]


@dataclass(frozen=True)
class Previous:
    """The bundle `--since` names: its manifest, id and name."""

    manifest: Manifest
    bundle_id: str
    name: str

    def delivered(self) -> Dict[str, Requirement]:
        """Image archives a host that installed PREVIOUS holds, by member path: what PREVIOUS
        carried and what it relied on in turn (its installer checked those)."""
        held = {
            e.path: Requirement(e.path, e.sha256, e.size, e.kind, e.arch)
            for e in self.manifest.entries
            if e.kind in IMAGE_KINDS and e.arch is not None
        }
        for required in requirements(self.manifest.extra):
            held.setdefault(required.path, required)
        return held

    def images(self) -> Set[ImageKey]:
        """(name, digest, arch) of every extra image a host that installed PREVIOUS holds."""
        found: Set[ImageKey] = set()
        for image in self.manifest.extra.get("images") or []:
            for arch in image["arches"]:
                found.add((image["name"], image["digest"], arch))
        return found


@dataclass
class Carried:
    """What the new bundle carries and what it relies on."""

    entries: List[Entry] = field(default_factory=list)
    files: Dict[str, Path] = field(default_factory=dict)
    requires: List[Requirement] = field(default_factory=list)
    full_size: int = 0
    fresh: Set[str] = field(default_factory=set)  # member paths written (and hashed) here


def read_previous(path: Path) -> Previous:
    """PREVIOUS as the format reads it: a bundle, a part, a parts index or a bare manifest."""
    if not path.is_file():
        raise UsageError(
            f"--since {path}: no such file",
            "Name the previous bundle (NAME.tar, NAME.tar.000, NAME.tar.parts.json) or its "
            "manifest saved with 'k3bundle inspect BUNDLE --manifest > NAME.tar.json'.",
        )
    try:
        data, name = _manifest_bytes(path)
        manifest = parse_manifest(data)
    except (FormatError, IntegrityError) as exc:
        raise FormatError(f"--since {path}: {exc.message}", exc.hint) from None
    except OSError as exc:
        raise UsageError(f"--since {path}: cannot read it: {exc.strerror or exc}") from None
    # The name goes into the manifest, where only printable text of bounded length is allowed.
    shown = re.sub(r"[\x00-\x1f\x7f-\x9f]", "?", name)[:255]
    return Previous(manifest, hashlib.sha256(data).hexdigest(), shown)


def _manifest_bytes(path: Path) -> Tuple[bytes, str]:
    if not path.name.endswith(PARTS_SUFFIX) and _looks_like_json(path):
        with open(path, "rb") as file:
            data = file.read(MAX_MANIFEST_BYTES + 1)  # parse refuses more than the maximum
        stem = path.name[: -len(".json")] if path.name.endswith(".json") else path.name
        return data, stem if stem != MANIFEST_NAME[: -len(".json")] else path.name
    with BundleSource(str(path)) as source:
        header = source.read_header()
        name = source.parts[0].path.name if source.parts else source.name
    return header.manifest, re.sub(r"\.[0-9]{3}$", "", name)


def _looks_like_json(path: Path) -> bool:
    with open(path, "rb") as file:
        return file.read(64).lstrip()[:1] == b"{"


def carry(
    previous: Previous,
    entries: Sequence[Entry],
    files: Mapping[str, Path],
    images: Sequence[Mapping[str, Any]],
    write_subset: WriteSubset,
) -> Carried:
    """Split a full build's entries (and its `images` summary) into what to carry and what to
    require from PREVIOUS; `write_subset` writes an archive of some of one arch's images."""
    delivered = previous.delivered()
    have = previous.images()
    out = Carried(full_size=sum(e.size for e in entries))
    for entry in entries:
        same = delivered.get(entry.path)
        if entry.kind in IMAGE_KINDS and same is not None and same.sha256 == entry.sha256:
            _require(out, same)
        elif entry.kind == "images" and entry.arch is not None:
            wanted = [(i["name"], i["digest"]) for i in images if entry.arch in i["arches"]]
            _carry_images(out, entry, files[entry.path], delivered, have, wanted, write_subset)
        else:
            out.entries.append(entry)
            out.files[entry.path] = files[entry.path]
    return out


def _carry_images(
    out: Carried,
    entry: Entry,
    local: Path,
    delivered: Mapping[str, Requirement],
    have: Set[ImageKey],
    wanted: Sequence[Tuple[str, str]],
    write_subset: WriteSubset,
) -> None:
    """The extra-images archive of one arch: only the images PREVIOUS did not deliver."""
    arch = str(entry.arch)
    archives = [r for r in delivered.values() if r.kind == "images" and r.arch == arch]
    fresh = [n for n, d in wanted if not archives or (n, d, arch) not in have]
    if len(fresh) == len(wanted):  # nothing to rely on: the full archive, as built
        out.entries.append(entry)
        out.files[entry.path] = local
        return
    for required in archives:
        _require(out, required)
    if not fresh:
        return
    path = _update_path(entry.path, [r.path for r in archives])
    written = write_subset(arch, set(fresh), path)
    relied = ", ".join(a.path for a in archives)
    source = {"images": ", ".join(sorted(fresh)), "relies_on": relied}
    out.entries.append(
        Entry(path, written.size, written.sha256, "images", entry.mode, arch, source)
    )
    out.files[path] = written.path
    out.fresh.add(path)


def _require(out: Carried, required: Requirement) -> None:
    if all(r.path != required.path for r in out.requires):
        out.requires.append(required)


def _update_path(full: str, relied: Sequence[str]) -> str:
    """`ARCH/k3bundle-images-ARCH.update-NNN.tar.zst`, NNN one above any archive relied on:
    the name sorts after the full archive's (`.tar` < `.update`) and after earlier updates."""
    folder, _, name = full.rpartition("/")
    stem, dot, suffix = name.partition(".")
    numbers = [int(m.group(1)) for m in (_UPDATE.search(p) for p in relied) if m]
    return f"{folder}/{stem}.update-{max(numbers, default=0) + 1:03d}{dot}{suffix}"


def apply(ctx: BuildContext, produced: Produced) -> Produced:
    """The build's payload with what PREVIOUS (`--since`) delivered left out, and the manifest
    fields naming what the new bundle relies on."""
    assert ctx.settings.since is not None
    previous = read_previous(ctx.settings.since)
    # The images producer leaves what it pulled (the extra images and those charts deploy).
    pulled: Sequence[PulledImage] = produced.notes.get("pulled") or ()

    def write_subset(arch: str, names: Set[str], path: str) -> Written:
        images = [p for p in pulled if p.arch == arch and p.ref.name in names]
        assert len(images) == len(names), f"pulled images missing for {sorted(names)}"
        target = ctx.work / f"since-{arch}" / path.rpartition("/")[2]
        target.parent.mkdir(parents=True, exist_ok=True)
        return write_images(target, images, ctx.cache, ctx.settings.images_format)

    summaries = produced.metadata.get("images") or []
    carried = carry(previous, produced.entries, produced.files, summaries, write_subset)
    info = Since(
        previous.bundle_id, previous.manifest.k3s_version, previous.name, carried.full_size
    )
    return Produced(
        carried.entries,
        carried.files,
        {**produced.metadata, **requires_json(carried.requires, info)},
        (produced.fresh & set(carried.files)) | carried.fresh,
        produced.notes,
    )
