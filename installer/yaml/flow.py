"""Lines, errors, quoted scalars and flow collections ([a, b], {k: v}) for yaml_subset.

The line-oriented base of the YAML-subset reader: yaml_subset.py adds the block structure
(indentation) on top of it.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Tuple

from k3bundle.installer.errors import UsageError
from k3bundle.installer.yaml.scalars import resolve, unescape

PLAIN = "write it in plain YAML without anchors, aliases, tags or multiple documents, or as JSON"
_FLOW_END = re.compile(r"[,\[\]{}]|:(?=[ \t,\[\]{}]|\Z)|[ \t]#")
_UNSUPPORTED = {"&": "anchors (&name)", "*": "aliases (*name)", "!": "tags (!name, !!type)"}
# Reading recurses once per nesting level; k3s files nest 4 deep, and a bound keeps a hostile
# `[[[[...` or `- - - -...` a clean error instead of a RecursionError.
MAX_DEPTH = 64


def skip_blanks(line: str, col: int) -> int:
    """The first column at or after `col` that is not a space or a tab."""
    while col < len(line) and line[col] in " \t":
        col += 1
    return col


class LineReader:
    """The document's lines, the next row to read, and the readers that stay on one line or
    span lines only inside brackets."""

    def __init__(self, text: str, origin: str) -> None:
        self.origin = origin
        text = text[1:] if text.startswith("\ufeff") else text
        self.lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        self.row = 0
        self.depth = 0

    def _deeper(self, row: int) -> None:
        """Count one more nesting level; refuse more than MAX_DEPTH."""
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(row, f"lists and mappings nest deeper than {MAX_DEPTH} levels", PLAIN)

    def fail(self, row: int, problem: str, fix: str = PLAIN) -> UsageError:
        """An error naming the origin, the 1-based line and what to change."""
        return UsageError(f"{self.origin}, line {row + 1}: {problem}; {fix}")

    def _check_start(self, row: int, col: int) -> None:
        """Refuse a value that starts with an indicator outside the subset."""
        line = self.lines[row]
        char, spaced = line[col], line[col + 1 : col + 2] in ("", " ", "\t")
        if char in _UNSUPPORTED:
            raise self.fail(row, f"{_UNSUPPORTED[char]} are not supported", PLAIN)
        if char == "?" and spaced:
            raise self.fail(row, "complex keys ('? ') are not supported", PLAIN)
        if char == "-" and spaced:
            raise self.fail(row, "a list item cannot start here", "put '- item' on its own line")
        if char in "%@`,[]{}#|>" or (char == ":" and spaced):
            raise self.fail(row, f"a plain value cannot start with {char!r}", "quote the value")

    # --- scalars and flow collections --------------------------------------------------------

    def _quoted(self, row: int, col: int) -> Tuple[str, int]:
        """A single- or double-quoted scalar at `col` and the column after its closing quote."""
        line, quote, out, i = self.lines[row], self.lines[row][col], [], col + 1
        while i < len(line):
            if line[i] == quote and quote == "'" and line[i + 1 : i + 2] == "'":
                out.append("'")
                i += 2
            elif line[i] == quote:
                return "".join(out), i + 1
            elif line[i] == "\\" and quote == '"' and i + 1 < len(line):
                char, i = self._unescape(row, line, i + 1)
                out.append(char)
            else:
                out.append(line[i])
                i += 1
        fix = "keep a quoted value on one line, or use a block scalar ('key: |')"
        raise self.fail(row, "the quoted value is not closed on its line", fix)

    def _unescape(self, row: int, line: str, i: int) -> Tuple[str, int]:
        """The character a double-quote escape stands for (`i` is after the backslash)."""
        found = unescape(line, i)
        if found is None:
            fix = "use JSON escapes like \\n or \\u00e9"
            raise self.fail(row, f"unknown escape '\\{line[i]}'", fix)
        return found

    def _flow_space(self, row: int, col: int, opened: int) -> Tuple[int, int]:
        """The next token inside a flow collection, across blanks, line ends and comments."""
        while row < len(self.lines):
            line = self.lines[row]
            col = skip_blanks(line, col)
            if col < len(line) and not (
                line[col] == "#" and line[col - 1 : col] in ("", " ", "\t")
            ):
                return row, col
            row, col = row + 1, 0
        raise self.fail(opened, "a '[' or '{' opened on this line is never closed", "close it")

    def _flow_node(self, row: int, col: int) -> Tuple[Any, int, int]:
        """A flow value at (row, col) and the position after it."""
        self._deeper(row)
        node = self._flow_any(row, col)
        self.depth -= 1
        return node

    def _flow_any(self, row: int, col: int) -> Tuple[Any, int, int]:
        char = self.lines[row][col]
        if char == "[":
            return self._flow_sequence(row, col + 1)
        if char == "{":
            return self._flow_mapping(row, col + 1)
        if char in "\"'":
            text, end = self._quoted(row, col)
            return text, row, end
        text, end = self._flow_plain(row, col)
        return resolve(text), row, end

    def _flow_plain(self, row: int, col: int) -> Tuple[str, int]:
        """The text of a plain scalar inside a flow collection and the column after it."""
        self._check_start(row, col)
        found = _FLOW_END.search(self.lines[row], col)
        end = found.start() if found else len(self.lines[row])
        return self.lines[row][col:end].rstrip(" \t"), end

    def _flow_sequence(self, row: int, col: int) -> Tuple[List[Any], int, int]:
        """A [a, b] list whose '[' is just before (row, col)."""
        opened = row
        items: List[Any] = []
        while True:
            row, col = self._flow_space(row, col, opened)
            if self.lines[row][col] == "]":
                return items, row, col + 1
            item, row, col = self._flow_node(row, col)
            items.append(item)
            row, col = self._flow_space(row, col, opened)
            char = self.lines[row][col]
            if char not in ",]":
                fix = "separate items with ',' and write a mapping in a list as {key: value}"
                raise self.fail(row, f"expected ',' or ']' but found {char!r}", fix)
            col += char == ","

    def _flow_mapping(self, row: int, col: int) -> Tuple[Dict[str, Any], int, int]:
        """A {key: value} mapping whose '{' is just before (row, col)."""
        opened = row
        result: Dict[str, Any] = {}
        while True:
            row, col = self._flow_space(row, col, opened)
            char = self.lines[row][col]
            if char == "}":
                return result, row, col + 1
            if char in "[{":
                raise self.fail(row, "a list or mapping as a key", "use a string key")
            key, col = self._quoted(row, col) if char in "\"'" else self._flow_plain(row, col)
            if key in result:
                raise self.fail(row, f"duplicate key {key!r}", "keep only one of them")
            result[key], row, col = self._flow_value(row, col, opened)
            row, col = self._flow_space(row, col, opened)
            char = self.lines[row][col]
            if char not in ",}":
                raise self.fail(row, f"expected ',' or '}}' but found {char!r}", "add a ','")
            col += char == ","

    def _flow_value(self, row: int, col: int, opened: int) -> Tuple[Any, int, int]:
        """The value after a flow mapping key: after its ':', or None for a lone key."""
        row, col = self._flow_space(row, col, opened)
        if self.lines[row][col] != ":":
            return None, row, col
        row, col = self._flow_space(row, col + 1, opened)
        if self.lines[row][col] in ",}":
            return None, row, col
        return self._flow_node(row, col)
