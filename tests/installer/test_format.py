"""The k3bundle/v1 manifest model: canonical bytes, round trip, and refusal of bad fields."""

from __future__ import annotations

import json
from typing import Any, Callable, Dict

import pytest

from k3bundle.installer.errors import FormatError
from k3bundle.installer.manifest import FORMAT, Entry, Manifest, canonical_json, parse

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
    doc = _doc()
    doc["format"] = "k3bundle/v2"
    with pytest.raises(FormatError) as caught:
        _parse_doc(doc)
    assert "k3bundle/v2" in caught.value.message
    assert "k3bundle/v1" in caught.value.message
    assert caught.value.exit_code == 3
    assert "newer k3bundle" in caught.value.diagnostics()


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
