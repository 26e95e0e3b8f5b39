"""Fuzzing the installer's inputs: mutated bundles, random manifests and parts indexes, YAML.

Each property is the issue-9 contract: the reader either refuses with a K3BundleError (which the
CLI turns into one line and its exit code) or gives the same result as for the valid input. Any
other exception is a bug. `make fuzz` runs these with many more examples (HYPOTHESIS_PROFILE=fuzz).
"""

from __future__ import annotations

import json
import re
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
import yaml
from hypothesis import event, given
from hypothesis import strategies as st

from k3bundle.installer.errors import K3BundleError, UsageError
from k3bundle.installer.format.manifest import Manifest, canonical_json, parse
from k3bundle.installer.format.parts import resolve_parts
from k3bundle.installer.format.signature import parse_signature
from k3bundle.installer.format.verify import describe, inspect_bundle, verify_bundle
from k3bundle.installer.host.install import install
from k3bundle.installer.host.plan import Options
from k3bundle.installer.progress import Progress
from k3bundle.installer.summaries import inspect_lines, verify_lines
from k3bundle.installer.yaml.subset import parse_yaml
from tests.helpers import KeyFiles, make_bundle, make_keys, snapshot

pytestmark = pytest.mark.fuzz

# --- (a) mutated bundles through the real install, verify and inspect ----------------------


@dataclass(frozen=True)
class Pristine:
    """A small valid bundle and what installing it gives."""

    data: bytes = field(repr=False)
    signer: Optional[KeyFiles] = field(repr=False)
    tree: Dict[str, Tuple[int, str]] = field(repr=False)
    headers: Tuple[int, ...]  # offsets of the tar header blocks


def _install(bundle: Path, root: Path, signer: Optional[KeyFiles]) -> None:
    pubkeys = (str(signer.public),) if signer else ()
    options = Options(
        bundle=str(bundle), root=str(root), pubkeys=pubkeys, allow_unsigned=signer is None,
        arch="amd64",
    )  # fmt: skip
    install(options, lambda line: None, Progress())


def _pristine(folder: Path, signed: bool) -> Pristine:
    signer = make_keys(folder / "keys") if signed else None
    bundle = make_bundle(folder / "out", arches=("amd64",), signer=signer, image_size=1024)
    path = bundle.files[0]
    root = folder / "root"
    root.mkdir()
    _install(path, root, signer)
    with tarfile.open(path) as tar:
        headers = tuple(info.offset for info in tar.getmembers())
    return Pristine(path.read_bytes(), signer, snapshot(root), headers)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Dict[bool, Pristine]:
    """The signed and the unsigned bundle, each with its reference install."""
    return {
        signed: _pristine(tmp_path_factory.mktemp(f"s{signed}"), signed) for signed in (True, False)
    }


# (name, offset, length) of the ustar header fields worth overwriting
FIELDS = [("name", 0, 100), ("mode", 100, 8), ("size", 124, 12), ("chksum", 148, 8),
          ("type", 156, 1), ("magic", 257, 8), ("prefix", 345, 155)]  # fmt: skip
Mutation = Callable[[bytearray, Pristine], bytearray]


def _flip(at: int, mask: int) -> Mutation:
    def apply(data: bytearray, _: Pristine) -> bytearray:
        if data:
            data[at % len(data)] ^= mask
        return data

    return apply


def _truncate(at: int) -> Mutation:
    return lambda data, _: data[: at % (len(data) + 1)]


def _insert(at: int, chunk: bytes) -> Mutation:
    def apply(data: bytearray, _: Pristine) -> bytearray:
        where = at % (len(data) + 1)
        return data[:where] + bytearray(chunk) + data[where:]

    return apply


def _field(header: int, field: int, value: bytes, fix_checksum: bool) -> Mutation:
    def apply(data: bytearray, base: Pristine) -> bytearray:
        _, start, length = FIELDS[field % len(FIELDS)]
        at = base.headers[header % len(base.headers)] + start
        if len(data) < at + length:
            return data
        data[at : at + length] = value[:length].ljust(length, b"\0")
        if fix_checksum:  # so the damage reaches the parser instead of the checksum check
            block = base.headers[header % len(base.headers)]
            data[block + 148 : block + 156] = b" " * 8
            data[block + 148 : block + 156] = b"%06o\0 " % sum(data[block : block + 512])
        return data

    return apply


FIELD_VALUES = st.one_of(
    st.binary(max_size=12),
    st.sampled_from([b"\xff" * 12, b"\x80" + (1 << 62).to_bytes(11, "big"), b"77777777777\0",
                     b"-1", b"\xc2\xb2", b"2", b"5", b"x", b"../../etc/passwd", b"."]),
)  # fmt: skip
MUTATIONS = st.one_of(
    st.builds(_flip, st.integers(0, 1 << 20), st.integers(1, 255)),
    st.builds(_truncate, st.integers(0, 1 << 20)),
    st.builds(_insert, st.integers(0, 1 << 20), st.binary(min_size=1, max_size=600)),
    st.builds(_field, st.integers(0, 9), st.integers(0, 9), FIELD_VALUES, st.booleans()),
)


def _mutant(base: Pristine, mutations: List[Mutation]) -> bytes:
    data = bytearray(base.data)
    for mutate in mutations:
        data = mutate(data, base) or bytearray(b"")
    return bytes(data)


@given(signed=st.booleans(), mutations=st.lists(MUTATIONS, min_size=1, max_size=3))
def test_mutated_bundle_installs_identically_or_is_refused(
    pristine: Dict[bool, Pristine], signed: bool, mutations: List[Mutation]
) -> None:
    base = pristine[signed]
    with tempfile.TemporaryDirectory() as tmp:
        bundle, root = Path(tmp, "bundle.tar"), Path(tmp, "root")
        bundle.write_bytes(_mutant(base, mutations))
        root.mkdir()
        try:
            _install(bundle, root, base.signer)
        except K3BundleError as exc:
            event(f"install refused: exit {exc.exit_code}")
            assert exc.exit_code in (3, 4, 5, 6) and exc.message
            assert snapshot(root) == {}  # refused: nothing was changed
            return
        event("installed")
        if signed:  # a signed bundle that installs installs exactly the signed content
            assert snapshot(root) == base.tree


@given(signed=st.booleans(), mutations=st.lists(MUTATIONS, min_size=1, max_size=3))
def test_mutated_bundle_verifies_and_inspects_or_is_refused(
    pristine: Dict[bool, Pristine], signed: bool, mutations: List[Mutation]
) -> None:
    base = pristine[signed]
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp, "bundle.tar")
        bundle.write_bytes(_mutant(base, mutations))
        pubkeys = [str(base.signer.public)] if base.signer else []
        runs: List[Callable[[], List[str]]] = [
            lambda: verify_lines(verify_bundle(str(bundle), pubkeys, tmp, not signed, Progress())),
            lambda: inspect_lines(inspect_bundle(str(bundle))),
        ]
        for run in runs:
            try:
                assert run()
            except K3BundleError as exc:
                assert exc.exit_code in (3, 4, 5) and exc.message


# --- (b) the manifest, signature and parts index parsers on random JSON ---------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


def _valid_doc() -> Dict[str, Any]:
    doc: Dict[str, Any] = json.loads(
        canonical_json(
            {
                "format": "k3bundle/v1",
                "k3s_version": "v1.31.4+k3s1",
                "architectures": ["amd64"],
                "files": [
                    {"path": "amd64/k3s", "size": 3, "sha256": "a" * 64, "kind": "k3s-binary",
                     "mode": "0755", "arch": "amd64", "source": {"url": "https://x/k3s"}},
                ],
                "install": {"config": {"write-kubeconfig-mode": "0644"}},
                "images": [{"name": "docker.io/x", "digest": "d", "arches": ["amd64"], "size": 1}],
                "charts": [{"name": "c", "version": "1", "namespace": "n"}],
            }
        )
    )  # fmt: skip
    return doc


def _replace(doc: Any, path: List[int], value: Any) -> Any:
    """`doc` with the node reached by following `path` (indexes into keys/items) replaced."""
    if not path or not isinstance(doc, (dict, list)) or not doc:
        return value
    keys = list(doc) if isinstance(doc, dict) else list(range(len(doc)))
    key = keys[path[0] % len(keys)]
    doc[key] = _replace(doc[key], path[1:], value)
    return doc


def _check_model(manifest: Manifest) -> None:
    """A parsed manifest is fully typed: describing and printing it cannot fail."""
    assert all(isinstance(e.path, str) and isinstance(e.size, int) for e in manifest.entries)
    assert inspect_lines({**describe(manifest, "0" * 64, "b.tar"), "signed_by": None})


@given(JSON_VALUES)
def test_manifest_parser_on_random_json_gives_a_model_or_a_format_error(value: Any) -> None:
    try:
        _check_model(parse(canonical_json(value)))
    except K3BundleError as exc:
        assert exc.exit_code == 3


@given(st.lists(st.integers(0, 50), max_size=5), JSON_VALUES)
def test_manifest_parser_on_mutated_valid_documents(path: List[int], value: Any) -> None:
    doc = _replace(_valid_doc(), path, value)
    try:
        manifest = parse(canonical_json(doc))
    except K3BundleError as exc:
        assert exc.exit_code == 3
        return
    _check_model(manifest)
    assert parse(manifest.to_bytes()) == manifest


@given(JSON_VALUES | st.binary(max_size=64).map(lambda b: b.decode("latin-1")))
def test_signature_parser_on_random_json_gives_a_signature_or_a_format_error(value: Any) -> None:
    data = value.encode() if isinstance(value, str) else canonical_json(value)
    try:
        signature = parse_signature(data)
    except K3BundleError as exc:
        assert exc.exit_code == 3
        return
    assert len(signature.value) == 64


@given(st.lists(st.integers(0, 50), max_size=4), JSON_VALUES)
def test_parts_index_parser_on_mutated_indexes(path: List[int], value: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        part = Path(tmp, "b.tar.000")
        part.write_bytes(b"x" * 3)
        index = {"format": "k3bundle-parts/v1", "bundle": "b.tar",
                 "parts": [{"name": "b.tar.000", "size": 3, "sha256": "a" * 64}]}  # fmt: skip
        Path(tmp, "b.tar.parts.json").write_bytes(canonical_json(_replace(index, path, value)))
        try:
            parts = resolve_parts(part)
        except K3BundleError as exc:
            assert exc.exit_code in (3, 4)
            return
        assert parts is not None and [p.path for p in parts] == [part]


# --- (c) the YAML subset (--config) against PyYAML ------------------------------------------

# Words YAML 1.1 (PyYAML) reads as booleans and YAML 1.2 (the subset) as strings: always quoted.
YAML11_BOOLEANS = {"yes", "no", "on", "off", "y", "n"}
CONSTANTS = {"null", "true", "false", "~"}
PLAIN_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
PLAIN_WORD = st.from_regex(r"[A-Za-z][A-Za-z0-9_.-]{0,10}", fullmatch=True)
# No surrogates, controls or line separators: PyYAML and the subset disagree only on those by
# design (PyYAML folds U+0085/U+2028 breaks), not on the subset's grammar.
TEXT = st.text(
    st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters="\ufeff")
    | st.sampled_from("\n\t #:,[]{}'\"\\-&*!|>%@`"),
    max_size=12,
)
FLOATS = st.floats(allow_nan=False, allow_infinity=False).filter(
    lambda f: "e" not in repr(f) and "." in repr(f)  # PyYAML's 1.1 floats need a dot
)
SCALARS = st.none() | st.booleans() | st.integers(-(10**12), 10**12) | FLOATS | TEXT | PLAIN_WORD
KEYS = PLAIN_WORD | TEXT
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=16,
)


def _plain_ok(text: str) -> bool:
    word = text.lower()
    return bool(PLAIN_RE.fullmatch(text)) and word not in YAML11_BOOLEANS | CONSTANTS


def _scalar(value: Any, draw: Callable[[Any], Any]) -> str:
    if value is None or isinstance(value, bool):
        return str(
            draw(st.sampled_from({None: ["null", "~"], True: ["true"], False: ["false"]}[value]))
        )
    if isinstance(value, (int, float)):
        return repr(value)
    text, style = str(value), draw(st.sampled_from(["plain", "double", "single"]))
    if style == "plain" and _plain_ok(text):
        return text
    if style == "single" and "\n" not in text and "\t" not in text:
        return "'" + text.replace("'", "''") + "'"
    # \uD800\uDC00 pairs are JSON, not YAML: PyYAML keeps two surrogates, so escape the BMP only.
    escape = draw(st.booleans()) and all(ord(char) < 0x10000 for char in text)
    return json.dumps(text, ensure_ascii=escape)


def _flow(value: Any, draw: Callable[[Any], Any]) -> str:
    if isinstance(value, dict):
        items = [f"{_scalar(k, draw)}: {_flow(v, draw)}" for k, v in value.items()]
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_flow(v, draw) for v in value) + "]"
    return _scalar(value, draw)


def _comment(draw: Callable[[Any], Any]) -> str:
    return str(draw(st.sampled_from(["", "", " # note", "  #: [x] {y}"])))


def _block(value: Any, indent: int, draw: Callable[[Any], Any]) -> List[str]:
    """Lines of `value` (a non-empty dict or list) in block style at `indent`."""
    pad = " " * indent
    lines: List[str] = []
    items = value.items() if isinstance(value, dict) else ((None, v) for v in value)
    for key, item in items:
        lead = f"{pad}{_scalar(key, draw)}:" if isinstance(value, dict) else f"{pad}-"
        nested = isinstance(item, (dict, list)) and item and draw(st.booleans())
        if nested:
            step = (
                0
                if isinstance(value, dict) and isinstance(item, list) and draw(st.booleans())
                else 2
            )
            lines += [lead + _comment(draw), *_block(item, indent + step, draw)]
        else:
            lines.append(f"{lead} {_flow(item, draw)}{_comment(draw)}")
        if draw(st.integers(0, 5)) == 0:
            lines.append(draw(st.sampled_from(["", "# a comment line", "   "])))
    return lines


@st.composite
def yaml_documents(draw: Callable[[Any], Any]) -> Tuple[Dict[str, Any], str]:
    """A mapping and its rendering in a mix of block and flow styles."""
    value = draw(st.dictionaries(KEYS, VALUES, min_size=1, max_size=5))
    if draw(st.integers(0, 4)) == 0:
        return value, _flow(value, draw) + "\n"
    return value, "\n".join(_block(value, 0, draw)) + "\n"


def _same(left: Any, right: Any) -> bool:
    """Equal, with int/float and bool kept apart (1 == True in Python)."""
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(_same(left[k], right[k]) for k in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(_same, left, right))
    return type(left) is type(right) and left == right


@given(yaml_documents())
def test_yaml_subset_reads_generated_documents_like_pyyaml(
    document: Tuple[Dict[str, Any], str],
) -> None:
    value, text = document
    assert _same(yaml.safe_load(text), value), text
    assert _same(parse_yaml(text, "config.yaml"), value), text


REFUSED = ["&anchor ", "*alias", "!!str ", "!tag "]


@given(yaml_documents(), st.sampled_from(REFUSED), st.integers(0, 1000))
def test_yaml_subset_refuses_anchors_aliases_and_tags_anywhere_in_a_value(
    document: Tuple[Dict[str, Any], str], marker: str, where: int
) -> None:
    _, text = document
    lines = text.splitlines()
    row = where % len(lines)
    head, sep, tail = lines[row].partition(": ")
    if not sep or tail.startswith(("'", '"')) or "#" in lines[row]:
        return  # only a value position the marker can stand in front of
    lines[row] = f"{head}: {marker}{tail}"
    with pytest.raises(UsageError):
        parse_yaml("\n".join(lines), "config.yaml")


@pytest.mark.parametrize(
    "text",
    ["a: " + "[" * 100_000, "a: " + "{b: " * 10_000 + "}" * 10_000,
     "".join(" " * i + "- \n" for i in range(0, 3000, 2)) + "x: 1",
     "".join(" " * i + f"k{i}:\n" for i in range(0, 4000, 2)) + "z: 1",
     "a: " + "- " * 5000 + "x"],
    ids=["flow-lists", "flow-maps", "block-lists", "block-maps", "compact-lists"],
)  # fmt: skip
def test_deeply_nested_config_is_a_clean_usage_error(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_yaml(text, "config.yaml")
    assert caught.value.exit_code == 2 and "config.yaml, line" in caught.value.message
