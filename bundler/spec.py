"""Declarative bundle specs (YAML), validated against manifests/bundle.schema.json.

Errors name the field and the line it is on, so a user can fix a spec without guessing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import jsonschema
import yaml

import k3bundle.manifests
from k3bundle.bundler.oci.mirrors import check_mirrors
from k3bundle.installer.errors import UsageError

SCHEMA_PATH = Path(k3bundle.manifests.__file__).with_name("bundle.schema.json")
MAX_DEPTH = 32  # the schema nests 5 deep; chart values and install config a little deeper
_PLAIN = (str, int, float, bool, type(None))  # what JSON can hold (the manifest is JSON)
# The schema's patterns end in `$`, which also matches before a trailing newline: these fields
# become file names and tags, so they are checked again in full.
_FULL = {
    ("metadata", "name"): re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", re.ASCII),
    ("k3s", "version"): re.compile(r"v\d+\.\d+\.\d+(-(alpha|beta|rc)\d+)?\+k3s\d+", re.ASCII),
    ("k3s", "channel"): re.compile(r"[a-z0-9][a-z0-9.-]{0,62}"),
}
_HINT = (
    "See manifests/*.yaml for commented examples and manifests/bundle.schema.json for every field."
)


@dataclass(frozen=True)
class Spec:
    """A validated bundle spec; every field optional so the command line can fill gaps."""

    version: Optional[str] = None
    channel: Optional[str] = None
    arches: Tuple[str, ...] = ()
    images_format: Optional[str] = None
    name: Optional[str] = None
    images: Tuple[str, ...] = ()
    images_files: Tuple[Path, ...] = ()  # imagesFile, relative to the spec's folder
    charts: Tuple[Mapping[str, Any], ...] = ()
    chart_images: Optional[str] = None  # chartImages: auto or off
    install: Mapping[str, Any] = field(default_factory=dict)
    mirrors: Mapping[str, str] = field(default_factory=dict)  # build-time only, never recorded
    base_dir: Path = Path(".")  # the spec's folder: valuesFile paths are relative to it


def load_schema() -> Dict[str, Any]:
    """The bundle spec's JSON schema."""
    schema: Dict[str, Any] = json.loads(SCHEMA_PATH.read_text("utf-8"))
    return schema


def load_spec(path: Path) -> Spec:
    """Read, validate and convert a spec file; UsageError names the field and line."""
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read spec {path}: {exc.strerror}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise UsageError(f"{path} nests deeper than {MAX_DEPTH} levels", _HINT) from None
    check_plain(doc, node, str(path))
    validate(doc, node, str(path))
    _check_full(doc, node, str(path))
    listed = (doc or {}).get("imagesFile") or []
    files = tuple((path.parent / name).resolve() for name in _as_list(listed))
    return replace(_to_spec(doc), base_dir=path.parent, images_files=files)


def _as_list(value: Union[str, Sequence[str]]) -> List[str]:
    """imagesFile: one file name, or a list of them."""
    return [value] if isinstance(value, str) else list(value)


def check_plain(doc: Any, node: Optional[yaml.Node], origin: str) -> None:
    """Refuse what JSON cannot hold: YAML dates, sets, binary, non-string keys, deep nesting."""
    stack: List[Tuple[Any, List[Union[str, int]]]] = [(doc, [])]
    while stack:
        value, path = stack.pop()
        if len(path) > MAX_DEPTH:
            _refuse(node, path, origin, f"nests deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    _refuse(node, path, origin, f"the key {str(key)[:60]!r} is not a string")
                stack.append((item, [*path, key]))
        elif isinstance(value, list):
            stack.extend((item, [*path, number]) for number, item in enumerate(value))
        elif not isinstance(value, _PLAIN):
            kind = type(value).__name__
            _refuse(node, path, origin, f"YAML reads {str(value)[:60]!r} as a {kind}; quote it")


def _refuse(node: Optional[yaml.Node], path: List[Union[str, int]], origin: str, why: str) -> None:
    line = _line(node, path)
    at = f" (line {line})" if line else ""
    raise UsageError(f"{origin}: {_field_name(path)}{at}: {why}", _HINT)


def _check_full(doc: Mapping[str, Any], node: Optional[yaml.Node], origin: str) -> None:
    for (section, key), pattern in _FULL.items():
        value = (doc.get(section) or {}).get(key)
        if value is not None and not pattern.fullmatch(value):
            _refuse(node, [section, key], origin, f"{value!r} is not a valid {key}")


def validate(doc: Any, node: Optional[yaml.Node], origin: str) -> None:
    """Check `doc` against the schema; the first error (by position) becomes a UsageError."""
    validator = jsonschema.Draft202012Validator(load_schema())
    errors = sorted(validator.iter_errors(doc), key=lambda e: _line(node, _error_path(e)))
    if not errors:
        return
    error = errors[0]
    where = _field_name(_error_path(error))
    line = _line(node, _error_path(error))
    at = f" (line {line})" if line else ""
    raise UsageError(f"{origin}: {where}{at}: {_explain(error)}", _HINT)


def _error_path(error: jsonschema.ValidationError) -> List[Union[str, int]]:
    """Where the error is; for unknown fields, the first unknown field rather than its parent."""
    path = list(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
        unknown = [key for key in error.instance if key not in known]
        if unknown:
            path.append(unknown[0])
    return path


def _explain(error: jsonschema.ValidationError) -> str:
    if error.validator == "not" and error.validator_value == {"required": ["version", "channel"]}:
        return "give either 'version' or 'channel', not both"
    if error.validator == "additionalProperties":
        return str(error.message).replace(
            "Additional properties are not allowed", "unknown field(s)"
        )
    return str(error.message)


def _field_name(path: Sequence[Union[str, int]]) -> str:
    if not path:
        return "the document"
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _line(node: Optional[yaml.Node], path: List[Union[str, int]]) -> int:
    """The 1-based line of the field (its key) or item at `path`, or of its nearest parent."""
    if node is None:
        return 0
    current, mark = node, node.start_mark
    for part in path:
        child = _child(current, part)
        if child is None:
            break
        label, current = child
        mark = label.start_mark
    return int(mark.line) + 1


def _child(node: yaml.Node, part: Union[str, int]) -> Optional[Tuple[yaml.Node, yaml.Node]]:
    """(key, value) of a mapping field, or (item, item) of a sequence item."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == part:
                return key, value
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        return node.value[part], node.value[part]
    return None


def _to_spec(doc: Mapping[str, Any]) -> Spec:
    k3s = doc.get("k3s") or {}
    return Spec(
        version=k3s.get("version"),
        channel=k3s.get("channel"),
        arches=tuple(k3s.get("arches") or ()),
        images_format=k3s.get("images"),
        name=(doc.get("metadata") or {}).get("name"),
        images=tuple(doc.get("images") or ()),
        charts=tuple(doc.get("charts") or ()),
        chart_images=_chart_images(doc.get("chartImages")),
        install=dict(doc.get("install") or {}),
        mirrors=check_mirrors(doc.get("mirrors") or {}, "the spec's mirrors"),
    )


def _chart_images(value: Any) -> Optional[str]:
    """chartImages: auto or off; YAML 1.1 reads a bare `off` as false (and `on` as true)."""
    if isinstance(value, bool):
        return "auto" if value else "off"
    return None if value is None else str(value)
