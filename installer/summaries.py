"""What status, inspect and verify print for people (--json prints the summaries as they are)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from k3bundle.installer.progress import human_size


def status_lines(summary: Dict[str, Any]) -> List[str]:
    """`k3bundle status`: version, bundle, service, previous generation, files that differ."""
    bad = [f for f in summary["files"] if f["state"] != "ok"]
    previous = (summary.get("previous") or {}).get("k3s_version") or "none"
    lines = [
        f"k3s version:   {summary['k3s_version']} ({summary['arch']}, {summary['role']})",
        f"bundle id:     {summary['bundle_id']}",
        f"service:       {summary['service']}",
        f"previous:      {previous} (k3bundle rollback restores it)",
        f"files:         {len(summary['files'])} recorded, "
        + ("all match the record" if not bad else f"{len(bad)} do not match"),
    ]
    lines += [f"  {item['state']}: {item['path']}" for item in bad]
    return lines


def inspect_lines(summary: Dict[str, Any]) -> List[str]:
    """`k3bundle inspect`: what the bundle holds, file by file, with provenance."""
    signed = summary["signed_by"] or "NOT SIGNED"
    out = [
        f"bundle:        {summary['bundle']}",
        f"bundle id:     {summary['bundle_id']}",
        f"k3s version:   {summary['k3s_version']}",
        f"architectures: {', '.join(summary['architectures'])}",
        *slice_lines(summary),
        f"signed by:     {signed}",
        f"payload:       {len(summary['files'])} files, {human_size(summary['size'])}"
        + _held_part(summary),
        *since_lines(summary),
    ]
    for part in summary.get("parts", []):
        out.append(f"part:          {part['name']} ({human_size(part['size'])})")
    for image in summary.get("images", []):
        arches = ",".join(image.get("arches", []))
        out.append(
            f"image:         {image.get('name')} ({arches}, {human_size(image.get('size', 0))})"
        )
        out.append(f"               digest {image.get('digest')}")
        if image.get("charts"):  # pulled in because these charts deploy it (--chart-images)
            out.append(f"               for chart {', '.join(image['charts'])}")
    for chart in summary.get("charts", []):
        out.append(
            f"chart:         {chart.get('name')} {chart.get('version')} "
            f"-> namespace {chart.get('namespace')}"
        )
    for item in summary["files"]:
        origin = item["source"]
        source = (
            origin.get("url") or origin.get("images") or origin.get("generated") or "local file"
        )
        absent = "" if _held(summary, item) else "  (not in this slice)"
        out.append(
            f"  {item['kind']:<18} {item['arch'] or '-':<6} "
            f"{human_size(item['size']):>10}  {item['path']}{absent}"
        )
        out.append(f"  {'':<18} sha256 {item['sha256']}  from {source}")
    return out


def since_lines(summary: Dict[str, Any]) -> List[str]:
    """An upgrade bundle's (build --since) base, the files it relies on and the bytes saved."""
    since: Optional[Dict[str, Any]] = summary.get("since")
    if not since:
        return []
    required = summary.get("requires") or []
    relied = sum(int(r["size"]) for r in required)
    carried = int(summary["size"])
    full = int(since.get("full_size") or carried + relied)
    saved = max(full - carried, 0)
    share = f", {100 * saved // full} %" if full else ""
    lines = [
        f"upgrade of:    {since['name']} (k3s {since['k3s_version']}, "
        f"id {since['bundle_id'][:12]}); installs only where that bundle is installed",
        f"relies on:     {len(required)} files ({human_size(relied)}) the host already holds",
        f"saving:        carries {human_size(carried)} of the {human_size(full)} a full bundle "
        f"would: {human_size(saved)} not carried{share}",
    ]
    for item in required:
        lines.append(
            f"  {'required ' + item['kind']:<18} {item['arch']:<6} "
            f"{human_size(item['size']):>10}  {item['path']}"
        )
        lines.append(f"  {'':<18} sha256 {item['sha256']}  (on the host, not in this bundle)")
    return lines


def verify_lines(summary: Dict[str, Any]) -> List[str]:
    """`k3bundle verify`: one OK line saying what was checked and how."""
    signer = summary["signed_by"]
    how = (
        f"signature by {signer} good ({summary['verifier']})"
        if signer
        else "unsigned (allowed by --allow-unsigned)"
    )
    files = _held_files(summary)
    size = sum(item["size"] for item in files)
    lines = [
        f"OK: {summary['bundle']} — k3s {summary['k3s_version']}, {len(files)} files, "
        f"{human_size(size)} verified; {how}."
    ]
    held = summary.get("slice")
    if held:
        lines.append(
            f"It is a slice: it holds {', '.join(held['holds'])} of {', '.join(held['of'])} "
            f"and installs only {' or '.join(held['holds'])}."
        )
    return lines


def slice_lines(summary: Dict[str, Any]) -> List[str]:
    """The line saying what a slice holds (none for a full bundle)."""
    held: Optional[Dict[str, Any]] = summary.get("slice")
    if not held:
        return []
    return [f"slice:         holds {', '.join(held['holds'])} of {', '.join(held['of'])}"]


def _held_part(summary: Dict[str, Any]) -> str:
    if not summary.get("slice"):
        return ""
    files = _held_files(summary)
    return f" (this slice holds {len(files)}, {human_size(sum(f['size'] for f in files))})"


def _held_files(summary: Dict[str, Any]) -> List[Dict[str, Any]]:
    return [item for item in summary["files"] if _held(summary, item)]


def _held(summary: Dict[str, Any], item: Dict[str, Any]) -> bool:
    """Whether the archive holds this file (a slice leaves out other architectures' files)."""
    held = summary.get("slice")
    return not held or item["arch"] is None or item["arch"] in held["holds"]
