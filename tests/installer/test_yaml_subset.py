"""The YAML-subset reader: k3s config and registries files, JSON, round trips, refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict

import pytest
import yaml

from k3bundle.installer.errors import UsageError
from k3bundle.installer.host.config import dump_yaml
from k3bundle.installer.yaml.subset import load_config_file, parse_yaml


def parse(text: str) -> Dict[str, Any]:
    """parse_yaml with a fixed origin."""
    return parse_yaml(text, "config.yaml")


# --- round trips with dump_yaml ---------------------------------------------------------------

ROUND_TRIPS = [
    {"write-kubeconfig-mode": "0644", "cluster-init": True, "selinux": False, "token": None},
    {"tricky": ["true", "false", "null", "~", "0644", "1e3", "12", "-1.5", "0x1f", ".inf"]},
    {"quotes": ["a: b", "#x", "x #y", "it's", 'say "hi"', "back\\slash", "- dash", "[x]"]},
    {"unicode": ["héllo", "日本語", "emoji 🚀", "tab\there", "line\nbreak", " padded "]},
    {"numbers": [0, -3, 1.5, 1e-07, 10**20], "empty": [], "none": {}, "blank": ""},
    {"a": {"b": {"c": {"d": [1, {"e": "f", "g": [{"h": None}]}]}}}},
    {"list-of-maps": [{"name": "a", "value": 1}, {"name": "b", "sub": {"x": [1, 2]}}]},
    {"registry.example.com:5000": {"auth": {"username": "u", "password": "p@ss:w#rd"}}},
    {"*": {"endpoint": ["https://mirror:5000"]}, "tls-san+": ["extra.example.com"]},
]


@pytest.mark.parametrize("doc", ROUND_TRIPS)
def test_dump_yaml_output_reads_back_to_the_same_document(doc: Dict[str, Any]) -> None:
    assert parse(dump_yaml(doc)) == doc


# --- the k3s examples (reference §6) ----------------------------------------------------------

K3S_CONFIG = """\
# /etc/rancher/k3s/config.yaml
write-kubeconfig-mode: "0644"
tls-san:
  - "foo.local"
  - 10.0.0.10
node-label:
- "foo=bar"
- something=amazing
cluster-init: true
token: K10abc::server:secret
selinux: true
embedded-registry: true
disable: [traefik]
"""


def test_k3s_config_example() -> None:
    assert parse(K3S_CONFIG) == {
        "write-kubeconfig-mode": "0644",
        "tls-san": ["foo.local", "10.0.0.10"],
        "node-label": ["foo=bar", "something=amazing"],
        "cluster-init": True,
        "token": "K10abc::server:secret",
        "selinux": True,
        "embedded-registry": True,
        "disable": ["traefik"],
    }


def test_append_keys_keep_their_plus_suffix() -> None:
    text = "tls-san+: [b.example.com]\nnode-label+:\n  - zone=b\n"
    assert parse(text) == {"tls-san+": ["b.example.com"], "node-label+": ["zone=b"]}


REGISTRIES = """\
mirrors:
  docker.io:
    endpoint:
      - "https://registry.example.com:5000"
      - http://localhost:5001
  "*":
    endpoint: ["https://mirror.internal"]
  registry.k8s.io:
    endpoint: ["https://registry.example.com:5000", "https://backup.example.com"]
    rewrite:
      "^rancher/(.*)": "mirrorproject/rancher-images/$1"
  quay.io:
    rewrite: {"^(.*)$": 'quay/$1'}
configs:
  "registry.example.com:5000":
    auth:
      username: xxx
      password: "p@ss: word"
      auth: dXNlcjpwYXNz
      identity_token: tok
    tls:
      ca_file: /etc/ssl/certs/my-ca.crt
      cert_file: /etc/ssl/certs/client.crt
      key_file: /etc/ssl/private/client.key
      insecure_skip_verify: false
  backup.example.com:443:
    tls: {insecure_skip_verify: true}
  "*":
    auth: {username: anyone, password: secret}
"""


def test_registries_example() -> None:
    assert parse(REGISTRIES) == {
        "mirrors": {
            "docker.io": {
                "endpoint": ["https://registry.example.com:5000", "http://localhost:5001"]
            },
            "*": {"endpoint": ["https://mirror.internal"]},
            "registry.k8s.io": {
                "endpoint": ["https://registry.example.com:5000", "https://backup.example.com"],
                "rewrite": {"^rancher/(.*)": "mirrorproject/rancher-images/$1"},
            },
            "quay.io": {"rewrite": {"^(.*)$": "quay/$1"}},
        },
        "configs": {
            "registry.example.com:5000": {
                "auth": {
                    "username": "xxx",
                    "password": "p@ss: word",
                    "auth": "dXNlcjpwYXNz",
                    "identity_token": "tok",
                },
                "tls": {
                    "ca_file": "/etc/ssl/certs/my-ca.crt",
                    "cert_file": "/etc/ssl/certs/client.crt",
                    "key_file": "/etc/ssl/private/client.key",
                    "insecure_skip_verify": False,
                },
            },
            "backup.example.com:443": {"tls": {"insecure_skip_verify": True}},
            "*": {"auth": {"username": "anyone", "password": "secret"}},
        },
    }
    assert parse(REGISTRIES) == yaml.safe_load(REGISTRIES)


def test_unquoted_host_port_key_ends_at_the_last_colon() -> None:
    assert parse("registry.example.com:5000:\n  a: 1\n") == {"registry.example.com:5000": {"a": 1}}
    assert parse("localhost:5000: {endpoint: [x]}") == {"localhost:5000": {"endpoint": ["x"]}}


# --- scalars ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("False", False),
        ("TRUE", True),
        ("yes", True),
        ("no", False),
        ("on", True),
        ("null", None),
        ("~", None),
        ("", None),
        ("12", 12),
        ("-7", -7),
        ("+3", 3),
        ("0", 0),
        ("0644", 420),
        ("0o17", 15),
        ("0x1F", 31),
        ("1.5", 1.5),
        ("1e3", 1000.0),
        ("-.5", -0.5),
        ("-.inf", -math.inf),
        ("1.2.3", "1.2.3"),
        ("10.43.0.0/16", "10.43.0.0/16"),
        ("v1.31.4+k3s1", "v1.31.4+k3s1"),
        ("https://a:5000/v2", "https://a:5000/v2"),
        ("a#b", "a#b"),
        ("it's", "it's"),
        ("'it''s'", "it's"),
        ("''", ""),
        ('""', ""),
        ("'a # b'", "a # b"),
        ('"tab\\tnew\\nquote\\"back\\\\"', 'tab\tnew\nquote"back\\'),
        (
            '"\\u00e9\\x41\\U0001F680\\ud83d\\ude80\\/\\0\\e\\ "',
            "\u00e9A\U0001f680\U0001f680/\0\x1b ",
        ),
    ],
)
def test_scalar_values(text: str, expected: Any) -> None:
    assert parse(f"key: {text}\n") == {"key": expected}


# go-yaml v2 (resolve.go, v2.4.0), which k3s reads its config with: YAML 1.1 words, Go's
# strconv.ParseInt(s, 0, 64) after dropping '_', ParseFloat, and timestamps kept as text.
GO_YAML_V2 = [
    *[(word, True) for word in ("y", "Y", "yes", "Yes", "YES", "on", "On", "ON")],
    *[(word, False) for word in ("n", "N", "no", "No", "NO", "off", "Off", "OFF")],
    ("yES", "yES"),
    ("0644", 420),
    ("-017", -15),
    ("08", 8.0),
    ("0o17", 15),
    ("0b101", 5),
    ("-0x1f", -31),
    ("1_000", 1000),
    ("99999999999999999999", 1e20),
    ("1:30", "1:30"),
    ("2001-12-14", "2001-12-14"),
]


@pytest.mark.parametrize(("text", "expected"), GO_YAML_V2, ids=[t for t, _ in GO_YAML_V2])
def test_plain_scalars_mean_what_they_mean_to_k3s(text: str, expected: Any) -> None:
    got = parse(f"key: {text}\nflow: [{text}]\n")
    assert got == {"key": expected, "flow": [expected]}
    assert type(got["key"]) is type(expected)


def test_nan_is_a_float() -> None:
    assert math.isnan(parse("a: .nan")["a"])


# --- JSON -------------------------------------------------------------------------------------

JSON_DOCS: Dict[str, Any] = {
    "simple": {"write-kubeconfig-mode": "0644", "tls-san": ["a", "b"], "cluster-init": True},
    "nested": {"a": [1, [2, [3, {"b": [{}, []]}]]], "c": {"d": {"e": None}}},
    "numbers": {"i": -12, "f": 3.25, "e": 1.5e-08, "big": 12345678901234567890, "z": 0},
    "strings": {"s": 'q"uo\\te\n\t/é日\U0001f680', "h": "#not a comment", "c": "a: b, [c]"},
    "registries": {
        "mirrors": {"*": {"endpoint": ["https://m:5000"], "rewrite": {"^a/(.*)": "b/$1"}}},
        "configs": {"m:5000": {"tls": {"insecure_skip_verify": True, "ca_file": "/ca.pem"}}},
    },
    "empty": {},
}


@pytest.mark.parametrize("name", sorted(JSON_DOCS))
@pytest.mark.parametrize(
    "dump",
    [
        lambda doc: json.dumps(doc),
        lambda doc: json.dumps(doc, indent=2),
        lambda doc: json.dumps(doc, indent="\t", ensure_ascii=False),
        lambda doc: json.dumps(doc, separators=(",", ":")),
    ],
    ids=["compact", "indented", "tabs", "tight"],
)
def test_json_documents_read_like_json_loads(name: str, dump: Any) -> None:
    text = dump(JSON_DOCS[name])
    assert parse(text) == json.loads(text)


def test_flow_collections_span_lines_with_comments_and_trailing_commas() -> None:
    text = "a: [\n  x,  # first\n  {b: [1,\n 2]},\n]\nc: {d: e,\n  f: }\n"
    assert parse(text) == {"a": ["x", {"b": [1, 2]}], "c": {"d": "e", "f": None}}


# --- comments, markers, layout ----------------------------------------------------------------

COMMENTED = """\
# leading comment
---   # document start
a: 1 # after a value
  # indented comment between keys
b:   # after a key
  # before a nested key
  c: "x # not a comment"  # but this is
  d: 'y # nor this'
list:  # a list
  # before an item
  - one  # after an item
  -   # empty item
  - [p, q]  # after a flow list
# between
e: {f: g}  # after a flow mapping
...
# after the end
"""


def test_comments_everywhere() -> None:
    assert parse(COMMENTED) == {
        "a": 1,
        "b": {"c": "x # not a comment", "d": "y # nor this"},
        "list": ["one", None, ["p", "q"]],
        "e": {"f": "g"},
    }


def test_empty_values_and_documents() -> None:
    assert parse("") == {}
    assert parse("# only a comment\n\n---\n") == {}
    assert parse("a:\nb:  # nothing\nc: ~\n") == {"a": None, "b": None, "c": None}


def test_sequences_at_the_key_indent_and_nested_mappings_in_lists() -> None:
    text = """\
servers:
- name: a
  labels:
  - x=1
  - y=2
  extra:
    deep: true
-   name: b
    ports: [80, 443]
- - nested
  - list
-
  name: c
"""
    assert parse(text) == yaml.safe_load(text)


def test_crlf_and_byte_order_mark_are_accepted() -> None:
    assert parse("\ufeffa: 1\r\nb:\r\n  - x\r\n") == {"a": 1, "b": ["x"]}


# --- block scalars ----------------------------------------------------------------------------

BLOCK_SCALARS = """\
ca: |
  -----BEGIN CERTIFICATE-----
  MIIB
    indented line

  -----END CERTIFICATE-----
strip: |-
  no newline
keep: |+
  kept

folded: >
  one
  two

  three
    more indented
  four
folded-strip: >-
  a
  b
explicit: |2
    two extra spaces
  # a comment-looking line
in-list:
  - |
    item text
  - after
empty: |
last: done
"""


def test_block_scalars() -> None:
    got = parse(BLOCK_SCALARS)
    assert got == yaml.safe_load(BLOCK_SCALARS)
    assert got["ca"] == (
        "-----BEGIN CERTIFICATE-----\nMIIB\n  indented line\n\n-----END CERTIFICATE-----\n"
    )
    assert got["strip"] == "no newline"
    assert got["keep"] == "kept\n\n"
    assert got["folded"] == "one two\nthree\n  more indented\nfour\n"
    assert got["explicit"] == "  two extra spaces\n# a comment-looking line\n"
    assert got["in-list"] == ["item text\n", "after"]
    assert got["empty"] == ""


# --- refusals ---------------------------------------------------------------------------------

REFUSALS = [
    ("a: &anchor 1\nb: *anchor\n", 1, "anchors (&name) are not supported"),
    ("a: 1\nb: *anchor\n", 2, "aliases (*name) are not supported"),
    ("a: !!str 1\n", 1, "tags (!name, !!type) are not supported"),
    ("a: [!custom x]\n", 1, "tags"),
    ("&x key: 1\n", 1, "anchors"),
    ("a: 1\n---\nb: 2\n", 2, "a second document"),
    ("--- a: 1\n", 1, "a second document or content after '---'"),
    ("a: 1\n...\nb: 2\n", 3, "content after the document end"),
    ("%YAML 1.2\n---\na: 1\n", 1, "directives"),
    ("a:\n\tb: 1\n", 2, "a tab in the indentation"),
    ("a: 1\na: 2\n", 2, "duplicate key 'a'"),
    ("a: {b: 1, b: 2}\n", 1, "duplicate key 'b'"),
    ("a: 1\n  b: 2\n", 2, "indented more than the key above"),
    ("a:\n  - x\n    - y\n", 3, "indented more than the item above"),
    ("a:\n    b: 1\n  c: 2\n", 3, "indented more than the key above"),
    ("  a: 1\nb: 2\n", 2, "does not fit the indentation"),
    ("a: 1\n- b\n", 2, "a list item where a key was expected"),
    ("a: 1\njust text\n", 2, "expected 'key: value'"),
    ("- a\n- b\n", 1, "the top level is not a mapping"),
    ("[1, 2]\n", 1, "the top level is not a mapping"),
    ("a: b: c\n", 1, "a value cannot hold ': '"),
    ("a: - b\n", 1, "a list item cannot start here"),
    ("? complex\n: key\n", 1, "complex keys"),
    ('a: "open\n  close"\n', 1, "the quoted value is not closed"),
    ("a: 'x' y\n", 1, "unexpected 'y' after the value"),
    ("a: [x]#c\n", 1, "unexpected '#c'"),
    ("a: [x, y\nb: 2\n", 2, "expected ',' or ']'"),
    ("a: [x,\n  y\n", 1, "never closed"),
    ("a: {b: 1 c: 2}\n", 1, "expected ',' or '}' but found ':'"),
    ("a: {b: 1] \n", 1, "expected ',' or '}'"),
    ("a: [x: 1]\n", 1, "write a mapping in a list as {key: value}"),
    ("a: [x,,y]\n", 1, "cannot start with ','"),
    ("a: {[x]: 1}\n", 1, "a list or mapping as a key"),
    ('a: "\\q"\n', 1, "unknown escape '\\q'"),
    ('a: "\\u12"\n', 1, "unknown escape '\\u'"),
    ("a: @x\n", 1, "cannot start with '@'"),
    ("a: |x\n  b\n", 1, "a bad block scalar header"),
    ("a: |-+\n  b\n", 1, "a bad block scalar header"),
]


@pytest.mark.parametrize(("text", "line", "problem"), REFUSALS)
def test_refuses_outside_the_subset_naming_origin_and_line(
    text: str, line: int, problem: str
) -> None:
    with pytest.raises(UsageError) as caught:
        parse_yaml(text, "/etc/k3bundle/site.yaml")
    message = caught.value.message
    assert message.startswith(f"/etc/k3bundle/site.yaml, line {line}: ")
    assert problem in message
    assert "; " in message.split(": ", 1)[1]  # every message says what to change


def test_anchor_refusal_suggests_plain_yaml_or_json() -> None:
    with pytest.raises(UsageError, match=r"write it in plain YAML without anchors.*or as JSON"):
        parse("a: &x 1\n")


# --- load_config_file -------------------------------------------------------------------------


def test_load_config_file_reads_utf8_yaml_and_json(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("node-label: [zone=é]\n", encoding="utf-8")
    (tmp_path / "c.json").write_text('{"disable": ["traefik"]}', encoding="utf-8")
    assert load_config_file(str(tmp_path / "c.yaml")) == {"node-label": ["zone=é"]}
    assert load_config_file(str(tmp_path / "c.json")) == {"disable": ["traefik"]}


def test_load_config_file_refuses_missing_binary_and_non_mapping_files(tmp_path: Path) -> None:
    (tmp_path / "latin1.yaml").write_bytes("a: \xe9\n".encode("latin-1"))
    (tmp_path / "list.yaml").write_text("- a\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"cannot read .*missing\.yaml"):
        load_config_file(str(tmp_path / "missing.yaml"))
    with pytest.raises(UsageError, match="is not UTF-8 text"):
        load_config_file(str(tmp_path / "latin1.yaml"))
    with pytest.raises(UsageError, match=r"list\.yaml, line 1: the top level is not a mapping"):
        load_config_file(str(tmp_path / "list.yaml"))


# --- against PyYAML, for documents inside the subset (where YAML 1.1 and 1.2 agree) -----------

SAME_AS_PYYAML = [
    K3S_CONFIG,
    REGISTRIES,
    COMMENTED,
    BLOCK_SCALARS,
    "a: 1\n",
    "a: b\nc: d\n",
    "a:\n  b:\n    c: [1, 2]\n",
    "a: [1, 2.5, -3, true, false, null, ~, x]\n",
    "a: {b: c, d: [e, f], g: {h: i}}\n",
    "a: []\nb: {}\nc: ''\nd: \"\"\n",
    "key with spaces: value with spaces\n",
    "a: 'single ''quoted'''\nb: \"double \\\"quoted\\\"\"\n",
    'a: "\\u00e9\\n\\t"\n',
    "url: https://example.com:8443/path?q=1#frag\n",
    "a: x#y\nb: x # y\n",
    "list:\n- a\n- b\n",
    "list:\n  - a\n  -  b\n  - - c\n    - d\n",
    "list:\n  - k: v\n    k2: v2\n  - k: w\n",
    "list:\n  -\n    k: v\n  - [a, b]\n  - {c: d}\n",
    "a:\n  - b:\n      - c: 1\n",
    "a: 1.5\nb: -0.25\nc: .5\nd: 1.0e+3\n",
    "a: 12\nb: -7\nc: 0\n",
    "a: .inf\nb: -.Inf\n",
    "a: True\nb: FALSE\nc: Null\nd: NULL\n",
    "ip: 10.0.0.1\ncidr: 10.42.0.0/16\nversion: v1.31.4+k3s1\n",
    "\"quoted key\": 1\n'single key': 2\n",
    '"*":\n  endpoint: ["https://m"]\n',
    "tls-san+:\n  - x\n",
    "a: |\n  line1\n  line2\n",
    "a: |-\n  line1\n\n  line3\n",
    "a: >\n  folded\n  text\n\n  para\n",
    "a: >+\n  keep\n\n\nb: 1\n",
    "a: |\n  x\n\n\nb: 1\n",
    "---\na: 1\n...\n",
    "# c\n---\n# c\na: 1\n",
    '{"a": 1, "b": [true, null, "x"]}',
    "{a: 1, b: [x, z]}\n",  # not y: a boolean to go-yaml v2, a string to PyYAML
    "a: [\n  1,\n  2,\n]\n",
    "a: {\n  b: 1,\n  c: [x, {d: e}]\n}\n",
    "a:\n  b: 1\n\n\n  c: 2\n",
    "a:   spaced   \nb:  x\n",
    "a: -x\nb: :x\nc: x:y\nd: ?x\n",
    "path: C:\\dir\\file\n",
    "a: [a b, 'c d', \"e f\"]\n",
    "emoji: 🚀\njp: 日本語\n",
]


@pytest.mark.parametrize("text", SAME_AS_PYYAML)
def test_reads_like_pyyaml_safe_load(text: str) -> None:
    assert parse(text) == yaml.safe_load(text)
