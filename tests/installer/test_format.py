"""The k3bundle/v1 manifest model: canonical bytes, round trip, and refusal of bad fields."""

from __future__ import annotations

import json
from typing import Any, Callable, Dict

import pytest

from k3bundle.installer.errors import ArchError, FormatError
from k3bundle.installer.format.manifest import FORMAT, Entry, Manifest, canonical_json, parse
from k3bundle.installer.format.manifest_fields import MAX_ENTRY_SIZE

SHA_A = "a" * 64
SHA_B = "b" * 64

Mutation = Callable[[Dict[str, Any]], None]


def _manifest() -> Manifest:
    entries = (
        Entry(
            "amd64/k3s",
            10,
            SHA_A,
            "k3s-binary",
            0o755,
            "amd64",
            {"url": "https://example.test/k3s", "sha256": SHA_A},
        ),
        Entry("amd64/k3s-airgap-images-amd64.tar.zst", 20, SHA_B, "airgap-images", arch="amd64"),
    )
    return Manifest("v1.31.4+k3s1", ("amd64",), entries, install={"role": "server"})


def _doc() -> Dict[str, Any]:
    return _manifest().to_json()


def _parse_doc(doc: Dict[str, Any]) -> Manifest:
    return parse(json.dumps(doc).encode())


def test_manifest_bytes_are_sorted_compact_utf8() -> None:
    data = _manifest().to_bytes()
    assert json.dumps(json.loads(data), sort_keys=True, separators=(",", ":")).encode() == data
    assert b" " not in data.replace(b"v1.31.4+k3s1", b"")
    assert data.startswith(b'{"architectures":["amd64"],"files":[')


def test_canonical_json_keeps_non_ascii_as_utf8() -> None:
    assert canonical_json({"b": "é", "a": 1}) == '{"a":1,"b":"é"}'.encode()


def test_manifest_round_trips_through_parse() -> None:
    original = _manifest()
    parsed = parse(original.to_bytes())
    assert parsed == original
    assert parsed.to_bytes() == original.to_bytes()


def test_unknown_top_level_fields_are_kept_on_round_trip() -> None:
    doc = _doc()
    doc["built_by"] = "k3bundle 0.1.0"
    parsed = _parse_doc(doc)
    assert parsed.extra == {"built_by": "k3bundle 0.1.0"}
    assert parsed.to_bytes() == canonical_json(doc)


def test_manifest_declares_format_v1() -> None:
    assert _doc()["format"] == FORMAT == "k3bundle/v1"


def test_newer_format_is_refused_with_a_message_naming_the_format() -> None:
    """What the released v1 installer said of a v2 bundle, this one says of a v3 bundle."""
    doc = _doc()
    doc["format"] = "k3bundle/v3"
    with pytest.raises(FormatError) as caught:
        _parse_doc(doc)
    assert caught.value.message == (
        "k3bundle.json declares format 'k3bundle/v3'; this installer reads only k3bundle/v1 and "
        "k3bundle/v2"
    )
    assert caught.value.exit_code == 3
    assert "k3bundle-install.pyz that came with the bundle" in caught.value.diagnostics()
    assert "newer k3bundle" in caught.value.diagnostics()


@pytest.mark.parametrize("declared", ["k3bundle/v1", "k3bundle/v2"])
def test_both_v1_and_v2_manifests_parse(declared: str) -> None:
    doc = _doc()
    doc["format"] = declared
    assert _parse_doc(doc).entries == _manifest().entries


def _set_file(key: str, value: Any) -> Mutation:
    def mutate(doc: Dict[str, Any]) -> None:
        doc["files"][0][key] = value

    return mutate


def _duplicate(doc: Dict[str, Any]) -> None:
    doc["files"][1]["path"] = doc["files"][0]["path"]


def _unknown_arch(doc: Dict[str, Any]) -> None:
    doc["architectures"].append("riscv64")


def _unlisted_arch(doc: Dict[str, Any]) -> None:
    doc["files"][0]["arch"] = "arm64"


def _drop(key: str) -> Mutation:
    def mutate(doc: Dict[str, Any]) -> None:
        del doc[key]

    return mutate


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_set_file("kind", "kernel-module"), "unknown kind 'kernel-module'"),
        (_set_file("sha256", "A" * 64), "malformed sha256"),
        (_set_file("sha256", "a" * 63), "malformed sha256"),
        (_set_file("sha256", 7), "'sha256'"),
        (_duplicate, "'amd64/k3s' twice"),
        (_unknown_arch, "unknown architecture 'riscv64'"),
        (_unlisted_arch, "'arm64' not listed"),
        (_set_file("size", -1), "negative size"),
        (_set_file("size", True), "'size'"),
        (_set_file("mode", "rwxr-xr-x"), "malformed mode"),
        (_set_file("path", "../etc/passwd"), "leaves the bundle"),
        (_set_file("path", "/usr/local/bin/k3s"), "absolute"),
        (_set_file("path", "k3bundle.json"), "does not allow"),
        (_drop("k3s_version"), "'k3s_version'"),
        (_drop("files"), "'files'"),
        (_drop("format"), "declares format None"),
    ],
    ids=[
        "unknown-kind",
        "uppercase-sha",
        "short-sha",
        "sha-not-string",
        "duplicate-path",
        "unknown-architecture",
        "arch-not-listed",
        "negative-size",
        "bool-size",
        "bad-mode",
        "dotdot-path",
        "absolute-path",
        "reserved-name",
        "no-version",
        "no-files",
        "no-format",
    ],
)
def test_parse_refuses_bad_fields(mutate: Mutation, expected: str) -> None:
    doc = _doc()
    mutate(doc)
    with pytest.raises(FormatError) as caught:
        _parse_doc(doc)
    assert expected in caught.value.message
    assert caught.value.exit_code == 3


@pytest.mark.parametrize("data", [b"not json", b"[1,2]", b"\xff\xfe", b""])
def test_parse_refuses_bytes_that_are_not_a_json_object(data: bytes) -> None:
    with pytest.raises(FormatError, match=r"k3bundle\.json"):
        parse(data)


def test_for_arch_selects_own_and_neutral_entries() -> None:
    manifest = Manifest(
        "v1.31.4+k3s1",
        ("amd64", "arm64"),
        (
            Entry("amd64/k3s", 1, SHA_A, "k3s-binary", arch="amd64"),
            Entry("arm64/k3s-arm64", 1, SHA_A, "k3s-binary", arch="arm64"),
            Entry("charts/x.tgz", 1, SHA_B, "chart"),
        ),
    )
    assert [e.path for e in manifest.for_arch("arm64")] == ["arm64/k3s-arm64", "charts/x.tgz"]


# --- every field's type and shape (issue 9: wrong types were AttributeErrors and TypeErrors) ---


def _set(key: str, value: Any) -> Mutation:
    def mutate(doc: Dict[str, Any]) -> None:
        doc[key] = value

    return mutate


def _set_install(key: str, value: Any) -> Mutation:
    def mutate(doc: Dict[str, Any]) -> None:
        doc["install"][key] = value

    return mutate


WRONG_TYPES = {
    "format-int": (_set("format", 1), "declares format 'int'"),
    "version-int": (_set("k3s_version", 131), "'k3s_version'"),
    "version-newline": (_set("k3s_version", "v1.31.4+k3s1\n"), "'k3s_version'"),
    "version-slash": (_set("k3s_version", "v1.31.4+k3s1/../x"), "'k3s_version'"),
    "arches-string": (_set("architectures", "amd64"), "'architectures'"),
    "arch-item-int": (_set("architectures", [1]), "unknown architecture 1"),
    "arch-twice": (_set("architectures", ["amd64", "amd64"]), "architecture twice"),
    "files-object": (_set("files", {}), "'files'"),
    "files-item-list": (_set("files", [[]]), "files[0] is not an object"),
    "images-int": (_set("images", 5), "'images'"),
    "images-item-str": (_set("images", ["x"]), "images[0] is not an object"),
    "image-size-str": (
        _set("images", [{"name": "a", "digest": "d", "arches": [], "size": "1"}]),
        "'size'",
    ),
    "image-arches-int": (
        _set("images", [{"name": "a", "digest": "d", "arches": [3], "size": 1}]),
        "unknown architecture",
    ),
    "charts-object": (_set("charts", {}), "'charts'"),
    "chart-name-int": (_set("charts", [{"name": 1, "version": "1", "namespace": "x"}]), "'name'"),
    "install-list": (_set("install", []), "'install'"),
    "install-config-list": (_set_install("config", []), "'config'"),
    "install-registries-str": (_set_install("registries", "mirrors"), "'registries'"),
    "path-int": (_set_file("path", 5), "'path'"),
    "path-list": (_set_file("path", ["a"]), "'path'"),
    "size-str": (_set_file("size", "10"), "'size'"),
    "size-float": (_set_file("size", 10.0), "'size'"),
    "size-huge": (_set_file("size", 1 << 62), "more than the maximum"),
    "sha-upper-hex-64": (_set_file("sha256", "ABCDEF" + "a" * 58), "malformed sha256"),
    "sha-newline": (_set_file("sha256", "a" * 64 + "\n"), "malformed sha256"),
    "kind-int": (_set_file("kind", 3), "'kind'"),
    "mode-int": (_set_file("mode", 420), "malformed mode"),
    "mode-too-big": (_set_file("mode", "17777"), "malformed mode"),
    "mode-newline": (_set_file("mode", "0644\n"), "malformed mode"),
    "arch-int": (_set_file("arch", 1), "architecture 1 not listed"),
    "source-list": (_set_file("source", []), "'source'"),
    "source-nested": (_set_file("source", {"url": {"a": 1}}), "source.'url'"),
    "source-escape": (_set_file("source", {"url": "\x1b[2J"}), "not a printable string"),
}


@pytest.mark.parametrize(("mutate", "expected"), WRONG_TYPES.values(), ids=WRONG_TYPES.keys())
def test_parse_refuses_every_wrong_field_type_with_a_format_error(
    mutate: Mutation, expected: str
) -> None:
    doc = _doc()
    mutate(doc)
    with pytest.raises(FormatError) as caught:
        _parse_doc(doc)
    assert expected in caught.value.message
    assert caught.value.exit_code == 3


def test_parse_accepts_setuid_modes_and_sizes_up_to_the_maximum() -> None:
    doc = _doc()
    doc["files"][0].update(mode="4755", size=MAX_ENTRY_SIZE)
    entry = _parse_doc(doc).entries[0]
    assert (entry.mode, entry.size) == (0o4755, MAX_ENTRY_SIZE)


BAD_PATHS = [
    ".", "", "a/./b", "a//b", "amd64/", "amd64\\k3s", "a\0b", "a\nb", "a\tb", "a\x7fb",
    "amd64/.k3s.k3bundle-tmp", "amd64/.k3s.k3bundle-tmp-x1y2", "k3s.k3bundle-tmp",
    "x" * 256, "./k3s", "amd64/..", "é/k3s", "amd64/.cache.json", ".hidden/k3s",
    "amd64/k3s.k3bundle-tmp-1", "amd64/k3s\u200b",
]  # fmt: skip


@pytest.mark.parametrize("path", BAD_PATHS)
def test_parse_refuses_unsafe_or_ambiguous_member_paths(path: str) -> None:
    doc = _doc()
    doc["files"][0]["path"] = path
    with pytest.raises(FormatError) as caught:
        _parse_doc(doc)
    assert "bundle member" in caught.value.message and caught.value.exit_code == 3


@pytest.mark.parametrize("depth", [65, 100_000])
def test_parse_refuses_deeply_nested_json_without_recursing(depth: int) -> None:
    doc = _doc()
    doc["extra"] = "@"
    data = canonical_json(doc).replace(b'"@"', b"[" * depth + b"]" * depth)
    with pytest.raises(FormatError, match="nests deeper than 64 levels"):
        parse(data)


def test_for_arch_refuses_an_arch_that_has_no_k3s_binary() -> None:
    manifest = Manifest(
        "v1.31.4+k3s1",
        ("amd64", "arm64"),
        (
            Entry("amd64/images.tar", 1, SHA_A, "airgap-images", arch="amd64"),
            Entry("arm64/k3s-arm64", 1, SHA_A, "k3s-binary", arch="arm64"),
        ),
    )
    with pytest.raises(ArchError) as caught:
        manifest.for_arch("amd64")
    assert "(it carries: arm64)" in caught.value.message and caught.value.exit_code == 6
