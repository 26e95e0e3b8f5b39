"""YAML scalars for yaml_subset: plain scalars by the YAML 1.2 core schema, escapes in
double-quoted ones, and the folding and chomping of block scalars (| and >)."""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Tuple

_INT = re.compile(r"[-+]?[0-9]+")
_INT_BASE = re.compile(r"0o[0-7]+|0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")
_CONSTANTS: Dict[str, Any] = {
    **{word: None for word in ("", "~", "null", "Null", "NULL")},
    **{word: True for word in ("true", "True", "TRUE")},
    **{word: False for word in ("false", "False", "FALSE")},
    **{
        sign + word: float(sign + "inf")
        for sign in ("", "+", "-")
        for word in (".inf", ".Inf", ".INF")
    },
    **{word: float("nan") for word in (".nan", ".NaN", ".NAN")},
}
ESCAPES = dict(zip('0abtnvfre "/\\N_LP\t', '\0\a\b\t\n\v\f\r\x1b "/\\\x85\xa0\u2028\u2029\t'))
HEX_WIDTH = {"x": 2, "u": 4, "U": 8}
_HEX = re.compile(r"[0-9a-fA-F]+", re.ASCII)


def resolve(text: str) -> Any:
    """A plain scalar by the YAML 1.2 core schema; leading-zero integers stay strings."""
    if text in _CONSTANTS:
        return _CONSTANTS[text]
    if _INT.fullmatch(text):
        # "0644" is octal in YAML 1.1 and decimal in 1.2; keep what the user wrote (file modes).
        digits = text.lstrip("+-")
        return text if len(digits) > 1 and digits[0] == "0" else int(text)
    if _INT_BASE.fullmatch(text):
        return int(text[2:], 8 if text[1] == "o" else 16)
    return float(text) if _FLOAT.fullmatch(text) else text


def unescape(line: str, i: int) -> Optional[Tuple[str, int]]:
    """The character a double-quote escape at `i` (after the backslash) stands for, and the
    index after it; None for an unknown escape. A JSON surrogate pair is one character."""
    if line[i] in ESCAPES:
        return ESCAPES[line[i]], i + 1
    width = HEX_WIDTH.get(line[i], 0)
    digits = line[i + 1 : i + 1 + width]
    if not width or len(digits) != width or not _HEX.fullmatch(digits):
        return None
    code, i = int(digits, 16), i + 1 + width
    low = line[i + 2 : i + 6] if line[i : i + 2] == "\\u" else ""
    pair = 0xD800 <= code < 0xDC00 and len(low) == 4 and _HEX.fullmatch(low)
    if pair and 0xDC00 <= int(low, 16) < 0xE000:
        return chr(0x10000 + ((code - 0xD800) << 10) + int(low, 16) - 0xDC00), i + 6
    return chr(code), i


def fold(lines: List[str]) -> str:
    """Folded (>) block scalar text: single breaks between plain lines become spaces."""
    out, blanks = "", 0
    previous: Optional[bool] = None
    for line in lines:
        if not line.strip(" "):
            blanks += 1
            continue
        normal = line[:1] not in (" ", "\t")
        if previous is None:
            out += "\n" * blanks
        elif previous and normal:
            out += "\n" * blanks if blanks else " "
        else:
            out += "\n" * (blanks + 1)
        out, previous, blanks = out + line, normal, 0
    return out


def chomp(lines: List[str], folded: bool, chomp: str) -> str:
    """Block scalar text, trailing line breaks clipped (default), stripped (-) or kept (+)."""
    end = len(lines)
    while end and not lines[end - 1].strip(" "):
        end -= 1
    body = fold(lines[:end]) if folded else "\n".join(lines[:end])
    if not end:
        return "\n" * len(lines) if chomp == "+" else ""
    if chomp == "-":
        return body
    return body + "\n" * (len(lines) - end + 1 if chomp == "+" else 1)
