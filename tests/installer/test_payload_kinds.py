"""Every payload kind the format names has a place on the host, per role; an unknown kind is
refused (by the manifest parser and by the placement rules), never a KeyError."""

from __future__ import annotations

import hashlib
import json
import posixpath
from typing import Dict

import pytest

from k3bundle.installer.errors import FormatError
from k3bundle.installer.format import (
    KIND_CHART,
    KIND_HELMCHART_MANIFEST,
    KINDS,
    Entry,
    Manifest,
    parse_manifest,
)
from k3bundle.installer.host.layout import DATA_DIR, is_normal_path, placeable_file
from k3bundle.installer.host.plan import SERVER_ONLY, Options, Plan, plan_install, target_of

ARCH = "amd64"
# Kubernetes runs charts only on servers (k3s's helm controller lives there): an agent carries
# them in the bundle but never places them.
CHART_KINDS = {KIND_CHART, KIND_HELMCHART_MANIFEST}


def _entry(kind: str) -> Entry:
    path = f"{ARCH}/payload-{kind}" if kind != "k3s-binary" else f"{ARCH}/k3s"
    return Entry(path, len(path), hashlib.sha256(path.encode()).hexdigest(), kind, 0o644, ARCH)


def _plan(role: str) -> Plan:
    entries = tuple(_entry(kind) for kind in KINDS)
    manifest = Manifest("v1.31.4+k3s1", (ARCH,), entries)
    extra = {"server_url": "https://server:6443", "token": "K10-agent"} if role == "agent" else {}
    options = Options(bundle="bundle.tar", root="/target", role=role, **extra)  # type: ignore[arg-type]
    return plan_install(manifest, "ab" * 32, options, ARCH, set())


def _placed(plan: Plan) -> Dict[str, str]:
    """kind → target of every payload placement."""
    return {p.entry.kind: p.target for p in plan.files if p.entry is not None}


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_has_a_target_a_server_places(kind: str) -> None:
    target, mode = target_of(_entry(kind))
    assert is_normal_path(target) and placeable_file(target, DATA_DIR)
    assert mode in (0o600, 0o644, 0o755)
    assert _placed(_plan("server"))[kind] == target


@pytest.mark.parametrize("kind", KINDS)
def test_an_agent_places_every_kind_but_the_chart_kinds(kind: str) -> None:
    placed = _placed(_plan("agent"))
    if kind in CHART_KINDS:
        assert kind not in placed  # the rule, stated: charts and HelmCharts are server-only
    else:
        assert placed[kind] == target_of(_entry(kind))[0]


def test_server_only_kinds_are_exactly_the_chart_kinds() -> None:
    assert set(SERVER_ONLY) == CHART_KINDS
    assert set(KINDS) >= CHART_KINDS


def test_kind_targets_are_all_distinct_folders_for_distinct_payloads() -> None:
    folders = {kind: posixpath.dirname(target_of(_entry(kind))[0]) for kind in KINDS}
    assert folders[KIND_CHART] != folders[KIND_HELMCHART_MANIFEST]
    assert len(set(folders.values())) >= 4  # bin, images, charts, manifests


def test_placement_refuses_an_unknown_kind_with_a_clear_error() -> None:
    with pytest.raises(FormatError) as raised:
        target_of(_entry("selinux-rpm"))
    assert "unknown kind 'selinux-rpm'" in raised.value.message
    assert raised.value.hint


def test_manifest_parser_refuses_an_unknown_kind() -> None:
    good = Manifest("v1.31.4+k3s1", (ARCH,), (_entry("k3s-binary"),))
    doc = json.loads(good.to_bytes())
    doc["files"][0]["kind"] = "selinux-rpm"
    with pytest.raises(FormatError) as raised:
        parse_manifest(json.dumps(doc).encode())
    assert "unknown kind 'selinux-rpm'" in raised.value.message
