"""Write the small YAML subset k3s reads (config.yaml, registries.yaml) without a YAML library."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping


def dump_yaml(doc: Mapping[str, Any]) -> str:
    """Block-style YAML for nested mappings, lists and scalars; strings are double-quoted."""
    lines: List[str] = []
    _mapping(doc, 0, lines)
    return "".join(line + "\n" for line in lines)


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    # A JSON string is a valid YAML double-quoted scalar (YAML 1.2 is a superset of JSON).
    return json.dumps(str(value), ensure_ascii=False)


def _mapping(doc: Mapping[str, Any], indent: int, lines: List[str]) -> None:
    pad = " " * indent
    for key in sorted(doc):
        value = doc[key]
        name = _scalar(str(key))
        if isinstance(value, Mapping) and value:
            lines.append(f"{pad}{name}:")
            _mapping(value, indent + 2, lines)
        elif isinstance(value, (list, tuple)) and value:
            lines.append(f"{pad}{name}:")
            _sequence(value, indent + 2, lines)
        else:
            empty = (
                "{}"
                if isinstance(value, Mapping)
                else "[]"
                if isinstance(value, (list, tuple))
                else None
            )
            lines.append(f"{pad}{name}: {empty or _scalar(value)}")


def _sequence(items: Any, indent: int, lines: List[str]) -> None:
    pad = " " * indent
    for item in items:
        if isinstance(item, Mapping) and item:
            nested: List[str] = []
            _mapping(item, indent + 2, nested)
            lines.append(f"{pad}- {nested[0].lstrip()}")
            lines.extend(nested[1:])
        else:
            lines.append(f"{pad}- {_scalar(item)}")


def apply_layer(config: Dict[str, Any], layer: Mapping[str, Any]) -> None:
    """k3s's rule for a later config file: `key` replaces, `key+` appends to the value so far."""
    for key, value in layer.items():
        if key.endswith("+"):
            config[key[:-1]] = [*as_list(config.get(key[:-1])), *as_list(value)]
        else:
            config[key] = value


def as_list(value: Any) -> List[Any]:
    """A config value as a list (k3s repeats a flag once per item)."""
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
