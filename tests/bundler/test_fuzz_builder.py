"""Property-based fuzzing of the builder's parsers (issue 9, deliverable 7).

(a) the spec loader, fed random YAML-ish documents: a valid Spec or a UsageError, nothing else;
(b) the image reference parser against Docker's normalisation rules (distribution/reference):
references generated from the grammar normalise component by component; junk is refused.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import pytest
import yaml
from hypothesis import assume, given
from hypothesis import strategies as st

from k3bundle.bundler.oci.reference import Reference, parse_reference
from k3bundle.bundler.spec import Spec, load_spec
from k3bundle.installer.errors import UsageError

pytestmark = pytest.mark.fuzz

# --- (a) the spec loader ------------------------------------------------------------------------

KEYS = [
    "apiVersion",
    "kind",
    "metadata",
    "name",
    "k3s",
    "version",
    "channel",
    "arches",
    "images",
    "charts",
    "repo",
    "values",
    "install",
    "config",
    "description",
    "x",
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["amd64", "zst", "k3bundle/v1", "Bundle", "v1.31.4+k3s1"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)
    ),
    max_leaves=20,
)
# What PyYAML reads as something JSON cannot hold, and YAML that is merely odd.
YAML_ODDITIES = [
    "2024-01-01",
    "2024-01-01T10:00:00Z",
    "!!set {a: null}",
    "!!binary aGVsbG8=",
    "&a [*a]",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
    "{? [a, b] : c}",
    "{1: 2}",
    "!!python/object:os.system x",
    "'v1.31.4+k3s1\\n'",
    '"v1.31.4+k3s1\\n"',
    "|\n    v1.31.4+k3s1\n",
    ".nan",
    "0x1F",
    "~",
    "*undefined",
    "\t- x",
]
BASE = {"apiVersion": "k3bundle/v1", "kind": "Bundle", "k3s": {"version": "v1.31.4+k3s1"}}


def load(tmp_path: Path, text: str) -> Optional[Spec]:
    """load_spec on `text`: the Spec, or None when it was refused with a UsageError."""
    path = tmp_path / "spec.yaml"
    path.write_text(text, "utf-8")
    try:
        spec = load_spec(path)
    except UsageError as error:
        assert error.exit_code == 2 and error.message
        return None
    assert isinstance(spec, Spec)
    return spec


@given(doc=VALUES)
def test_fuzz_spec_loader_random_documents_load_or_give_a_usage_error(
    tmp_path: Path, doc: Any
) -> None:
    load(tmp_path, yaml.safe_dump(doc))


@given(
    section=st.sampled_from(["k3s", "metadata", "install", "images", "charts", "top"]),
    key=st.sampled_from(KEYS),
    value=st.one_of(
        VALUES.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()),
        st.sampled_from(YAML_ODDITIES),
        st.text(max_size=30),
    ),
)
def test_fuzz_spec_loader_a_valid_spec_with_one_odd_value_loads_or_gives_a_usage_error(
    tmp_path: Path, section: str, key: str, value: str
) -> None:
    base = yaml.safe_dump(BASE, default_flow_style=False)
    inner = f"{section}:\n  {key}: {value}\n" if section != "top" else f"{key}: {value}\n"
    spec = load(
        tmp_path,
        base + inner
        if section not in ("k3s",)
        else base.replace("k3s:\n", f"k3s:\n  {key}: {value}\n", 1),
    )
    if spec is not None:  # whatever loads is well-formed where it becomes names and paths
        assert spec.version is None or re.fullmatch(r"v\d+\.\d+\.\d+(-\w+)?\+k3s\d+", spec.version)
        assert spec.name is None or "\n" not in spec.name


@given(text=st.text(max_size=200))
def test_fuzz_spec_loader_arbitrary_text_loads_or_gives_a_usage_error(
    tmp_path: Path, text: str
) -> None:
    load(tmp_path, text)


# --- (b) image references against Docker's normalisation ---------------------------------------

ALNUM = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=6)
SEPARATOR = st.sampled_from([".", "_", "__", "-", "--"])
COMPONENT = st.builds(
    lambda first, rest: first + "".join(sep + more for sep, more in rest),
    ALNUM,
    st.lists(st.tuples(SEPARATOR, ALNUM), max_size=2),
)
LABEL = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,5}[a-zA-Z0-9])?", fullmatch=True)
PORT = st.integers(1, 65535).map(lambda port: f":{port}")
DOMAIN = st.one_of(
    st.builds(lambda port: "localhost" + port, st.one_of(st.just(""), PORT)),
    st.builds(lambda a, b, port: f"{a}.{b}{port}", LABEL, LABEL, st.one_of(st.just(""), PORT)),
    st.builds(lambda a, port: a + port, LABEL, PORT),
)
TAG = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,30}", fullmatch=True)
DIGEST = st.text("0123456789abcdef", min_size=64, max_size=64).map(lambda hex: f"sha256:{hex}")
HUB = {"docker.io", "index.docker.io", "registry-1.docker.io"}


def expected(
    domain: Optional[str], path: Tuple[str, ...], tag: Optional[str], digest: Optional[str]
) -> Tuple[str, str, Optional[str], Optional[str]]:
    """What Docker normalises to: (registry, repository, tag, digest)."""
    registry = domain.lower() if domain else "docker.io"
    if registry in HUB:
        registry = "docker.io"
    repository = "/".join(path)
    if registry == "docker.io" and len(path) == 1:
        repository = f"library/{repository}"
    return registry, repository, tag or (None if digest else "latest"), digest


@given(
    domain=st.one_of(st.none(), DOMAIN, st.sampled_from(sorted(HUB))),
    path=st.lists(COMPONENT, min_size=1, max_size=3).map(tuple),
    tag=st.one_of(st.none(), TAG),
    digest=st.one_of(st.none(), DIGEST),
)
def test_fuzz_reference_valid_grammar_normalises_like_docker(
    domain: Optional[str], path: Tuple[str, ...], tag: Optional[str], digest: Optional[str]
) -> None:
    # a first component with a "." is a registry host to Docker too: tested with `domain`
    assume(domain or len(path) == 1 or not ("." in path[0] or path[0] == "localhost"))
    text = "/".join(([domain] if domain else []) + list(path))
    text += (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == expected(
        domain, path, tag, digest
    )
    assert ref.implicit_latest == (tag is None and digest is None)
    assert parse_reference(ref.name) == Reference(ref.registry, ref.repository, ref.tag, ref.digest)


def _junk(draw: Any) -> str:
    path = list(draw(st.lists(COMPONENT, min_size=1, max_size=3)))
    how = draw(
        st.sampled_from(
            [
                "upper",
                "empty",
                "long-tag",
                "bad-tag",
                "bad-digest",
                "space",
                "scheme",
                "trailing-slash",
                "char",
                "bad-port",
                "unicode-tag",
            ]
        )
    )
    where = draw(st.integers(0, len(path) - 1))
    tag, digest = "1.0", ""
    if how == "upper" and len(path) > 1:
        where = max(where, 1)  # Docker reads an uppercase first of several as a registry host
    if how == "upper":
        path[where] = path[where].upper() if path[where].upper() != path[where] else "A"
    elif how == "empty":
        path.insert(where, "")
    elif how == "long-tag":
        tag = "t" * 129
    elif how == "bad-tag":
        tag = draw(st.sampled_from([".x", "-x", "a/b", "a+b", "a!", "ä"]))
    elif how == "unicode-tag":
        tag = "v\u0661"  # Arabic-Indic digit one: Python's \w takes it, Docker's does not
    elif how == "bad-digest":
        digest = "@" + draw(
            st.sampled_from(
                [
                    "sha256:" + "A" * 64,
                    "sha256:" + "a" * 63,
                    "sha512:" + "a" * 128,
                    "sha256:",
                    "md5:abc",
                ]
            )
        )
    elif how == "space":
        path[where] += draw(st.sampled_from([" ", "\t", "\n", "\u00a0"])) + "x"
    elif how == "scheme":
        path.insert(0, "https://registry.example.com")
    elif how == "trailing-slash":
        path.append("")
    elif how == "char":
        path[where] += draw(st.sampled_from(["!", "$", "%", "+", "~", "é", "*", "\\", "\0"]))
    elif how == "bad-port":
        path.insert(0, "registry.example.com:" + draw(st.sampled_from(["", "x", "-1", "80a"])))
    return "/".join(path) + (f":{tag}" if tag else "") + digest


@given(data=st.data())
def test_fuzz_reference_junk_is_refused_with_a_usage_error(data: st.DataObject) -> None:
    text = data.draw(st.composite(lambda draw: _junk(draw))())
    with pytest.raises(UsageError) as caught:
        parse_reference(text)
    assert caught.value.exit_code == 2


COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")


@given(text=st.text(max_size=80))
def test_fuzz_reference_arbitrary_text_is_a_valid_reference_or_a_usage_error(text: str) -> None:
    try:
        ref = parse_reference(text)
    except UsageError:
        return
    assert all(COMPONENT_RE.fullmatch(part) for part in ref.repository.split("/"))
    assert ref.tag is None or re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", ref.tag)
    assert ref.digest is None or re.fullmatch(r"sha256:[0-9a-f]{64}", ref.digest)
    assert not any(char.isspace() for char in ref.name)


def test_fuzz_reference_examples_from_the_docker_documentation() -> None:
    cases: Dict[str, Tuple[str, str, Optional[str]]] = {
        "nginx": ("docker.io", "library/nginx", "latest"),
        "localhost:5000/x": ("localhost:5000", "x", "latest"),
        "localhost/x:1": ("localhost", "x", "1"),
        "rancher/k3s:v1.31.4-k3s1": ("docker.io", "rancher/k3s", "v1.31.4-k3s1"),
        "index.docker.io/nginx": ("docker.io", "library/nginx", "latest"),
        "Ghcr.IO/org/app:1.2": ("ghcr.io", "org/app", "1.2"),
    }
    for text, want in cases.items():
        ref = parse_reference(text)
        assert (ref.registry, ref.repository, ref.tag) == want, text
