"""YAML scalars for yaml_subset: plain scalars as k3s's go-yaml v2 reads them (YAML 1.1),
escapes in double-quoted ones, and the folding and chomping of block scalars (| and >)."""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Tuple

# Go's strconv.ParseInt(s, 0, 64), after go-yaml v2 drops every '_': a sign, then 0x/0o/0b,
# a leading 0 (octal) or decimal digits.
_GO_INT = re.compile(r"([-+]?)(0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|0[0-7]*|[1-9][0-9]*)")
_BASES = {"x": 16, "o": 8, "b": 2}
_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")
_INT64 = range(-(2**63), 2**64)  # ParseInt, then ParseUint: beyond both it is a float
# go-yaml v2's resolve table (resolve.go): YAML 1.1 booleans, nulls, and the float words.
_CONSTANTS: Dict[str, Any] = {
    **{word: None for word in ("", "~", "null", "Null", "NULL")},
    **{w: True for w in ("y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON")},
    **{w: False for w in ("n", "N", "no", "No", "NO", "false", "False", "FALSE")},
    **{word: False for word in ("off", "Off", "OFF")},
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
    """A plain scalar as k3s's go-yaml v2 reads it into its config (YAML 1.1 rules): yes/no/
    on/off/y/n are booleans, 0644 is octal (420), 1_000 is 1000; dates stay strings (v2 keeps
    timestamps as text in an interface{}), and there are no sexagesimal numbers."""
    if text in _CONSTANTS:
        return _CONSTANTS[text]
    if text[:1] not in "+-.0123456789":  # go-yaml tries numbers only after these
        return text
    if text[0] == ".":  # strconv.ParseFloat(text) on the text as written
        return float(text) if _FLOAT.fullmatch(text) else text
    plain = text.replace("_", "")
    found = _GO_INT.fullmatch(plain)
    if found:
        value = _go_int(found.group(2))
        value = -value if found.group(1) == "-" else value
        if value in _INT64:
            return value
    return float(plain) if _FLOAT.fullmatch(plain) else text


def _go_int(digits: str) -> int:
    if digits[1:2].lower() in _BASES:
        return int(digits[2:], _BASES[digits[1].lower()])
    return int(digits, 8) if digits[0] == "0" else int(digits)


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
