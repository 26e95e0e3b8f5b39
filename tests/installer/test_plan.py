"""plan.py with in-memory manifests: where each kind lands, roles, conflicts, the install record."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, Mapping, Optional, Sequence, Set

import pytest

from k3bundle.installer.errors import ArchError, UsageError
from k3bundle.installer.format.manifest import Entry, Manifest
from k3bundle.installer.host.plan import (
    RECORD_FORMAT,
    RECORD_PATH,
    Link,
    Options,
    Placement,
    Plan,
    plan_install,
    target_of,
)
from k3bundle.installer.host.record import Record, parse_record

BUNDLE_ID = "ab" * 32
IMAGES = "/var/lib/rancher/k3s/agent/images"


def entry(path: str, kind: str, arch: Optional[str] = None, mode: int = 0o644) -> Entry:
    """An entry whose sha256 and size are derived from its path (no file behind it)."""
    return Entry(path, len(path), hashlib.sha256(path.encode()).hexdigest(), kind, mode, arch)


def manifest(
    entries: Sequence[Entry],
    arches: Sequence[str] = ("amd64", "arm64"),
    install: Optional[Mapping[str, Any]] = None,
) -> Manifest:
    """A manifest holding `entries`."""
    return Manifest("v1.31.4+k3s1", tuple(arches), tuple(entries), install=dict(install or {}))


BINARY = entry("amd64/k3s", "k3s-binary", "amd64", 0o755)
BINARY_ARM64 = entry("arm64/k3s-arm64", "k3s-binary", "arm64", 0o755)
FULL = manifest(
    [
        entry("amd64/k3s", "k3s-binary", "amd64", 0o755),
        entry("amd64/k3s-airgap-images-amd64.tar.zst", "airgap-images", "amd64"),
        entry("arm64/k3s-arm64", "k3s-binary", "arm64", 0o755),
        entry("arm64/k3s-airgap-images-arm64.tar.zst", "airgap-images", "arm64"),
        entry("images/extra-amd64.tar", "images", "amd64"),
        entry("charts/traefik-27.0.0.tgz", "chart"),
        entry("manifests/traefik.yaml", "helmchart-manifest"),
    ]
)


def plan(
    source: Manifest = FULL,
    arch: str = "amd64",
    existing: Optional[Set[str]] = None,
    previous: Optional[Record] = None,
    bundle_id: str = BUNDLE_ID,
    **options: Any,
) -> Plan:
    """plan_install with test defaults: an amd64 server installed under /target."""
    opts = Options(bundle="bundle.tar", **{"root": "/target", **options})
    return plan_install(source, bundle_id, opts, arch, existing or set(), previous)


def targets(result: Plan) -> Dict[str, Placement]:
    """Placements by target path."""
    return {p.target: p for p in result.files}


def record_of(result: Plan) -> Dict[str, Any]:
    """The install record the plan will write."""
    record = result.files[-1]
    assert record.target == RECORD_PATH and record.content is not None
    doc: Dict[str, Any] = json.loads(record.content)
    return doc


# --- target_of ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "path", "target", "mode"),
    [
        ("k3s-binary", "amd64/k3s", "/usr/local/bin/k3s", 0o755),
        ("k3s-binary", "arm64/k3s-arm64", "/usr/local/bin/k3s", 0o755),
        ("k3s-binary", "arm/k3s-armhf", "/usr/local/bin/k3s", 0o755),
        ("airgap-images", "amd64/k3s-airgap-images-amd64.tar.zst", None, 0o644),
        ("images", "images/extra-amd64.tar", f"{IMAGES}/extra-amd64.tar", 0o644),
        (
            "chart",
            "charts/traefik-27.0.0.tgz",
            "/var/lib/rancher/k3s/server/static/charts/traefik-27.0.0.tgz",
            0o644,
        ),
        (
            "helmchart-manifest",
            "manifests/traefik.yaml",
            "/var/lib/rancher/k3s/server/manifests/traefik.yaml",
            0o600,
        ),
    ],
)
def test_target_of_places_each_kind_by_k3s_convention(
    kind: str, path: str, target: Optional[str], mode: int
) -> None:
    expected = target or f"{IMAGES}/{path.rsplit('/', 1)[1]}"
    assert target_of(entry(path, kind, mode=0o600)) == (expected, mode)


# --- choosing entries -----------------------------------------------------------------------


def test_plan_places_only_the_chosen_arch_and_neutral_entries() -> None:
    result = plan(arch="amd64")
    placed = {p.entry.path for p in result.files if p.entry is not None}
    assert placed == {
        "amd64/k3s",
        "amd64/k3s-airgap-images-amd64.tar.zst",
        "images/extra-amd64.tar",
        "charts/traefik-27.0.0.tgz",
        "manifests/traefik.yaml",
    }
    assert {e.path for e in result.skipped} == {
        "arm64/k3s-arm64",
        "arm64/k3s-airgap-images-arm64.tar.zst",
    }
    assert targets(result)["/usr/local/bin/k3s"].entry == FULL.entries[0]


def test_plan_for_arm64_places_the_arm64_binary_as_k3s() -> None:
    result = plan(arch="arm64")
    binary = targets(result)["/usr/local/bin/k3s"]
    assert binary.entry is not None and binary.entry.path == "arm64/k3s-arm64"
    assert "images/extra-amd64.tar" in {e.path for e in result.skipped}


def test_plan_for_agent_skips_server_only_kinds() -> None:
    result = plan(role="agent", server_url="https://server:6443", token="K10-agent-token")
    kinds = {p.entry.kind for p in result.files if p.entry is not None}
    assert kinds == {"k3s-binary", "airgap-images", "images"}
    assert {e.path for e in result.skipped} >= {
        "charts/traefik-27.0.0.tgz",
        "manifests/traefik.yaml",
    }
    assert result.service == "k3s-agent"
    assert "/etc/systemd/system/k3s-agent.service" in targets(result)
    assert "/usr/local/bin/k3s-agent-uninstall.sh" in targets(result)
    assert "/etc/systemd/system/k3s.service" not in targets(result)


def test_plan_for_server_keeps_charts_and_helmchart_manifests() -> None:
    result = plan(role="server")
    found = targets(result)
    assert found["/var/lib/rancher/k3s/server/static/charts/traefik-27.0.0.tgz"].mode == 0o644
    assert found["/var/lib/rancher/k3s/server/manifests/traefik.yaml"].mode == 0o600
    assert result.service == "k3s"


def test_plan_refuses_two_members_with_the_same_target() -> None:
    clash = manifest(
        [BINARY, entry("a/extra.tar", "images"), entry("b/extra.tar", "images")],
        arches=("amd64",),
    )
    with pytest.raises(UsageError) as caught:
        plan(clash)
    assert "a/extra.tar" in caught.value.message and "b/extra.tar" in caught.value.message
    assert f"{IMAGES}/extra.tar" in caught.value.message


def test_plan_refuses_two_binaries_for_the_same_arch() -> None:
    clash = manifest(
        [entry("amd64/k3s", "k3s-binary", "amd64"), entry("amd64/k3s-2", "k3s-binary", "amd64")],
        arches=("amd64",),
    )
    with pytest.raises(UsageError, match="/usr/local/bin/k3s"):
        plan(clash)


def test_plan_allows_same_name_in_different_arches() -> None:
    same = manifest(
        [
            BINARY,
            entry("amd64/extra.tar", "images", "amd64"),
            entry("arm64/extra.tar", "images", "arm64"),
        ]
    )
    placement = targets(plan(same))[f"{IMAGES}/extra.tar"]
    assert placement.entry is not None and placement.entry.path == "amd64/extra.tar"


def test_plan_refuses_arch_the_bundle_lacks() -> None:
    with pytest.raises(ArchError, match="arm"):
        plan(arch="arm")


def test_plan_refuses_listed_arch_without_a_k3s_binary() -> None:
    no_binary = manifest([entry("amd64/images.tar", "airgap-images", "amd64"), BINARY_ARM64])
    with pytest.raises(ArchError) as caught:
        plan(no_binary)
    assert caught.value.exit_code == 6
    assert "no k3s binary for architecture amd64 (it carries: arm64)" in caught.value.message
    assert "--arch" in caught.value.hint


def test_plan_index_finds_every_placement_at_scale() -> None:
    """100,000 entries plan (linear work), and each entry finds its own placement."""
    many = [BINARY, *(entry(f"images/x{n}.tar", "images") for n in range(100_000))]
    result = plan(manifest(many))
    found = [result.placement_for(e) for e in many]
    assert all(p is not None and p.entry is e for p, e in zip(found, many))
    assert result.placement_for(BINARY_ARM64) is None
    assert sum(p.entry is not None for p in result.files) == len(many)
    assert len({p.target for p in result.files}) == len(result.files)


# --- generated files and links --------------------------------------------------------------


def test_plan_generates_unit_env_and_scripts_with_their_modes() -> None:
    found = targets(plan())
    modes = {
        "/etc/systemd/system/k3s.service": 0o644,
        "/etc/systemd/system/k3s.service.env": 0o600,
        "/usr/local/bin/k3s-killall.sh": 0o755,
        "/usr/local/bin/k3s-uninstall.sh": 0o755,
        RECORD_PATH: 0o600,
    }
    assert {t: found[t].mode for t in modes} == modes
    assert "/etc/rancher/k3s/config.yaml" not in found


def test_plan_writes_config_and_registries_from_install_defaults() -> None:
    source = manifest(
        FULL.entries,
        install={"config": {"node-name": "a"}, "registries": {"mirrors": {}}, "other": 1},
    )
    found = targets(plan(source))
    config = found["/etc/rancher/k3s/config.yaml"]
    assert config.mode == 0o600 and config.content is not None
    assert b"node-name" in config.content
    assert found["/etc/rancher/k3s/registries.yaml"].mode == 0o600


def test_plan_puts_token_in_env_file_only() -> None:
    found = targets(plan(token="s3cret", environ={"K3S_URL": "https://a:6443", "HOME": "/x"}))
    # K3S_URL without a server/agent command makes an agent, as in install.sh
    env = found["/etc/systemd/system/k3s-agent.service.env"].content or b""
    unit = found["/etc/systemd/system/k3s-agent.service"].content or b""
    assert b'K3S_TOKEN="s3cret"' in env and b'K3S_URL="https://a:6443"' in env
    assert b"HOME" not in env
    assert b"s3cret" not in unit


def test_plan_links_commands_except_existing_ones() -> None:
    result = plan(existing={"kubectl"})
    assert Link("/usr/local/bin/crictl", "k3s") in result.links
    assert Link("/usr/local/bin/ctr", "k3s") in result.links
    assert all(not link.path.endswith("/kubectl") for link in result.links)


def test_plan_with_root_enables_unit_by_wants_link() -> None:
    wants = Link(
        "/etc/systemd/system/multi-user.target.wants/k3s.service",
        "/etc/systemd/system/k3s.service",
    )
    assert wants in plan(root="/target").links
    assert all("wants" not in link.path for link in plan(root="/").links)


# --- the install record ---------------------------------------------------------------------


def test_record_lists_every_placed_file_and_link() -> None:
    result = plan(existing={"ctr"})
    record = record_of(result)
    assert record["format"] == RECORD_FORMAT
    assert (record["bundle_id"], record["arch"], record["role"]) == (BUNDLE_ID, "amd64", "server")
    assert record["k3s_version"] == "v1.31.4+k3s1"
    others = result.files[:-1]
    assert record["files"] == [
        {
            "path": p.target,
            "sha256": p.sha256,
            "size": p.size,
            "mode": f"{p.mode:04o}",
            "kind": p.entry.kind if p.entry is not None else "generated",
        }
        for p in others
    ]
    assert record["links"] == [{"path": k.path, "target": k.target} for k in result.links]
    assert record["previous"] is None


def test_record_sha256_of_generated_file_is_of_its_content() -> None:
    record = record_of(plan())
    found = targets(plan())
    unit = found["/etc/systemd/system/k3s.service"]
    listed = {f["path"]: f["sha256"] for f in record["files"]}
    assert listed[unit.target] == hashlib.sha256(unit.content or b"").hexdigest()
    assert listed["/usr/local/bin/k3s"] == FULL.entries[0].sha256


def test_record_names_the_previous_bundle_when_upgrading() -> None:
    old = Record("cd" * 32, "v1.30.0+k3s1", "amd64", "server", previous={"bundle_id": "x"})
    assert record_of(plan(previous=old))["previous"] == {
        "bundle_id": "cd" * 32,
        "k3s_version": "v1.30.0+k3s1",
    }


def test_record_keeps_the_earlier_previous_when_reinstalling_the_same_bundle() -> None:
    earlier = {"bundle_id": "cd" * 32, "k3s_version": "v1.30.0+k3s1"}
    old = Record(BUNDLE_ID, "v1.31.4+k3s1", "amd64", "server", previous=earlier)
    assert record_of(plan(previous=old))["previous"] == earlier


def test_record_of_reinstall_is_identical_to_the_first_one() -> None:
    first = plan()
    again = plan(previous=parse_record(first.files[-1].content or b"", "the record"))
    assert again.files[-1].content == first.files[-1].content


def test_record_is_the_last_placement_and_is_private() -> None:
    record = plan().files[-1]
    assert (record.target, record.mode, record.entry) == (RECORD_PATH, 0o600, None)
