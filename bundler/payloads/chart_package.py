"""A Helm chart package read as hostile input: its Chart.yaml, values.yaml and subcharts.

One top folder, no absolute or `..` paths, regular files only, and the bounds helm's own loader
uses (5 MiB a file, 100 MiB unpacked, counted while decompressing); YAML without anchors or
aliases. Only Chart.yaml, values.yaml, requirements.yaml and charts/ are read; templates are
helm's business (chart_images.py runs it when it is there).
"""

from __future__ import annotations

import gzip
import io
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Dict, List, Optional, Tuple, Union, cast

from k3bundle.bundler.net.netyaml import load_untrusted_yaml
from k3bundle.installer.errors import FetchError, UsageError

MAX_FILE = 5 << 20  # helm's MaxDecompressedFileSize
MAX_UNPACKED = 100 << 20  # helm's MaxDecompressedChartSize, here for the whole chart tree
MAX_MEMBERS = 10_000
MAX_DEPTH = 4  # charts/ inside charts/ inside ...
LoadYaml = Callable[[str, str], Any]
_KEPT = re.compile(
    r"(?:charts/[^/]+/)*(?:Chart\.yaml|values\.yaml|requirements\.yaml|charts/[^/]+\.tgz)"
)


class ChartArchiveError(FetchError):
    """A chart package that is not a well-formed, bounded Helm chart archive."""

    default_hint = "Check the chart's source (repository, version), or package it again with helm."


def safe_load_yaml(text: str, where: str) -> Any:
    """YAML without anchors or aliases (an alias bomb expands to gigabytes); ChartArchiveError."""
    return load_untrusted_yaml(text, f"{where} is not usable YAML", ChartArchiveError)


@dataclass
class Budget:
    """What the whole chart tree may still unpack, shared by nested packages."""

    left: int = MAX_UNPACKED
    members: int = MAX_MEMBERS


@dataclass(frozen=True)
class Chart:
    """One chart of the tree: its Chart.yaml, values.yaml and subcharts, and where it sits."""

    meta: Dict[str, Any]
    values: Dict[str, Any]
    subcharts: Tuple[Chart, ...]
    where: str  # for errors: "LABEL/charts/SUB"
    rel: str  # for misses: "" or "charts/SUB/"

    @property
    def name(self) -> str:
        """Chart.yaml's name."""
        return str(self.meta["name"])

    @property
    def app_version(self) -> str:
        """Chart.yaml's appVersion, or ''."""
        app = self.meta.get("appVersion")
        return "" if app is None or isinstance(app, bool) else str(app).strip()


def read_chart(chart: Union[bytes, Path]) -> bytes:
    if isinstance(chart, bytes):
        return chart
    try:
        with open(chart, "rb") as handle:
            data = handle.read(MAX_UNPACKED + 1)
    except OSError as exc:
        raise UsageError(f"cannot read chart {chart}: {exc.strerror or exc}") from None
    if len(data) > MAX_UNPACKED:
        raise ChartArchiveError(f"chart {chart} is larger than {MAX_UNPACKED >> 20} MiB")
    return data


def load_chart(
    data: bytes, where: str, rel: str, load: LoadYaml, budget: Budget, depth: int
) -> Chart:
    if depth > MAX_DEPTH:
        raise ChartArchiveError(f"{where}: subcharts nest deeper than {MAX_DEPTH} levels")
    if data[:2] != b"\x1f\x8b":
        raise ChartArchiveError(f"{where} is not a gzip'd tar (a Helm chart package is a .tgz)")
    try:
        files = _kept_members(data, where, budget)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise ChartArchiveError(f"{where} is not a readable chart package: {exc}") from None
    return _chart_at(files, "", where, rel, load, budget, depth)


class _Bounded:
    """A read() that stops the whole tree at budget.left decompressed bytes."""

    def __init__(self, raw: IO[bytes], budget: Budget, where: str) -> None:
        self._raw, self._budget, self._where = raw, budget, where

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes, counted against the budget."""
        data = self._raw.read(size if size >= 0 else self._budget.left + 1)
        self._budget.left -= len(data)
        if self._budget.left < 0:
            raise ChartArchiveError(f"{self._where} unpacks to more than {MAX_UNPACKED >> 20} MiB")
        return data


def _kept_members(data: bytes, where: str, budget: Budget) -> Dict[str, bytes]:
    """Chart.yaml, values.yaml, requirements.yaml and charts/*.tgz of the tree, by chart path."""
    files: Dict[str, bytes] = {}
    top: Optional[str] = None
    raw = cast(IO[bytes], gzip.GzipFile(fileobj=io.BytesIO(data)))
    stream = _Bounded(raw, budget, where)
    with tarfile.open(fileobj=cast(IO[bytes], stream), mode="r|") as tar:
        for member in tar:
            budget.members -= 1
            if budget.members < 0:
                raise ChartArchiveError(f"{where} has more than {MAX_MEMBERS} members")
            parts = _member_parts(member, where)
            top = top or parts[0]
            if parts[0] != top:
                raise ChartArchiveError(f"{where} has more than one top folder ({top}, {parts[0]})")
            rel = "/".join(parts[1:])
            if member.isdir() or not _KEPT.fullmatch(rel):
                continue
            if rel in files:
                raise ChartArchiveError(f"{where} holds {top}/{rel} twice")
            handle = tar.extractfile(member)
            files[rel] = handle.read() if handle else b""
    return files


def _member_parts(member: tarfile.TarInfo, where: str) -> List[str]:
    name = member.name
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if not parts or name.startswith("/") or "\\" in name or ".." in parts:
        raise ChartArchiveError(f"{where} has a member with an unsafe path: {name[:200]!r}")
    if not (member.isfile() or member.isdir()):
        raise ChartArchiveError(f"{where}: {name[:200]!r} is a link or a device, not a file")
    if member.isfile() and len(parts) < 2:
        raise ChartArchiveError(f"{where}: {name[:200]!r} lies outside the chart's top folder")
    if member.size > MAX_FILE:
        raise ChartArchiveError(
            f"{where}: {name[:200]!r} is {member.size} bytes, over helm's {MAX_FILE >> 20} MiB"
        )
    return parts


def _chart_at(
    files: Dict[str, bytes],
    prefix: str,
    where: str,
    rel: str,
    load: LoadYaml,
    budget: Budget,
    depth: int,
) -> Chart:
    meta = _yaml_map(files, prefix + "Chart.yaml", where, load)
    if meta is None:
        raise ChartArchiveError(f"{where} has no Chart.yaml in its top folder")
    if not isinstance(meta.get("name"), str) or not meta["name"]:
        raise ChartArchiveError(f"{where}: Chart.yaml has no name")
    requirements = _yaml_map(files, prefix + "requirements.yaml", where, load) or {}
    if "dependencies" not in meta and isinstance(requirements.get("dependencies"), list):
        meta["dependencies"] = requirements["dependencies"]  # apiVersion v1 charts
    values = _yaml_map(files, prefix + "values.yaml", where, load) or {}
    return Chart(
        meta, values, _subcharts(files, prefix, where, rel, load, budget, depth), where, rel
    )


def _subcharts(
    files: Dict[str, bytes],
    prefix: str,
    where: str,
    rel: str,
    load: LoadYaml,
    budget: Budget,
    depth: int,
) -> Tuple[Chart, ...]:
    """charts/NAME.tgz (a nested package) and charts/NAME/ (a folder), in name order."""
    inner = prefix + "charts/"
    entries = sorted({r[len(inner) :].split("/")[0] for r in files if r.startswith(inner)})
    if entries and depth + 1 > MAX_DEPTH:
        raise ChartArchiveError(f"{where}: subcharts nest deeper than {MAX_DEPTH} levels")
    subs: List[Chart] = []
    for entry in entries:
        at, at_rel = f"{where}/charts/{entry}", f"{rel}charts/{entry}/"
        if inner + entry in files:
            subs.append(load_chart(files[inner + entry], at, at_rel, load, budget, depth + 1))
        else:
            folder = f"{inner}{entry}/"
            subs.append(_chart_at(files, folder, at, at_rel, load, budget, depth + 1))
    return tuple(subs)


def _yaml_map(
    files: Dict[str, bytes], rel: str, where: str, load: LoadYaml
) -> Optional[Dict[str, Any]]:
    if rel not in files:
        return None
    try:
        text = files[rel].decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ChartArchiveError(f"{where}: {rel} is not UTF-8") from None
    parsed = load(text, f"{where}: {rel}")
    if parsed is None:
        return {}
    if not isinstance(parsed, dict):
        raise ChartArchiveError(f"{where}: {rel} is not a mapping")
    return parsed
