"""Read the small YAML subset k3s config and registries files use (and JSON), without a library."""

from __future__ import annotations

import re
import string
from typing import Any, Dict, List, Optional, Tuple

from .errors import UsageError
from .yaml_scalars import ESCAPES, HEX_WIDTH, chomp, resolve

PLAIN = "write it in plain YAML without anchors, aliases, tags or multiple documents, or as JSON"
# A mapping key ends at the first ':' before a space or the line end, unless a comment comes first.
_KEY_END = re.compile(r":(?=[ \t]|$)|[ \t]#")
_VALUE_COLON = re.compile(r":(?:[ \t]|$)")
_COMMENT = re.compile(r"[ \t]#")
_FLOW_END = re.compile(r"[,\[\]{}]|:(?=[ \t,\[\]{}]|$)|[ \t]#")
_HEADER = re.compile(r"([|>])([-+]?)([1-9]?)([-+]?)(?:[ \t]+#.*)?[ \t]*")
_UNSUPPORTED = {"&": "anchors (&name)", "*": "aliases (*name)", "!": "tags (!name, !!type)"}
# Reading recurses once per nesting level; k3s files nest 4 deep, and a bound keeps a hostile
# `[[[[...` or `- - - -...` a clean error instead of a RecursionError.
MAX_DEPTH = 64


def parse_yaml(text: str, origin: str) -> Dict[str, Any]:
    """The mapping in `text`, a YAML-subset or JSON document; `origin` names it in errors."""
    return _Reader(text, origin).document()


def load_config_file(path: str) -> Dict[str, Any]:
    """The mapping in the UTF-8 YAML or JSON file at `path`."""
    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text; save it as UTF-8") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}; check the --config path") from None
    return parse_yaml(text, path)


def _is_dash(line: str, col: int) -> bool:
    """True when a block sequence item ('- ') starts at `col`."""
    return line[col : col + 1] == "-" and line[col + 1 : col + 2] in ("", " ", "\t")


def _skip_blanks(line: str, col: int) -> int:
    """The first column at or after `col` that is not a space or a tab."""
    while col < len(line) and line[col] in " \t":
        col += 1
    return col


class _Reader:
    """A recursive-descent reader over the document's lines; `row` is the next line to read."""

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

    def document(self) -> Dict[str, Any]:
        """The top-level mapping; an empty document is an empty mapping."""
        self._markers()
        indent = self._next_content()
        if indent is None:
            return {}
        first = self.row
        root = self._block(indent, -1)
        if self._next_content() is not None:
            raise self.fail(self.row, "this line does not fit the indentation above", "align it")
        if not isinstance(root, dict):
            raise self.fail(first, "the top level is not a mapping", "write 'key: value' lines")
        return root

    def _markers(self) -> None:
        """Blank out '---' and '...' markers; refuse directives and a second document."""
        started = ended = False
        for row, line in enumerate(self.lines):
            marker = line[:3] if line[3:4] in ("", " ", "\t") else ""
            blank = line.strip(" \t")[:1] in ("", "#")
            if ended and not blank:
                raise self.fail(row, "content after the document end '...'", PLAIN)
            if marker == "---" and (started or line[3:].strip(" \t")[:1] not in ("", "#")):
                raise self.fail(row, "a second document or content after '---'", PLAIN)
            if marker in ("---", "..."):
                self.lines[row], started, ended = "", True, marker == "..."
            elif line.startswith("%") and not started:
                raise self.fail(row, "directives (%YAML, %TAG) are not supported", PLAIN)
            elif not blank:
                started = True

    def _next_content(self) -> Optional[int]:
        """Move to the next line that is not blank or a comment: its indentation, or None."""
        while self.row < len(self.lines):
            line = self.lines[self.row]
            text = line.lstrip(" ")
            if text.strip(" \t")[:1] not in ("", "#"):
                if text[0] == "\t":
                    raise self.fail(self.row, "a tab in the indentation", "indent with spaces")
                return len(line) - len(text)
            self.row += 1
        return None

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

    # --- block structure ---------------------------------------------------------------------

    def _block(self, col: int, parent: int) -> Any:
        """The node starting at `col` of the current line, inside a collection indented `parent`."""
        self._deeper(self.row)
        node = self._block_node(col, parent)
        self.depth -= 1
        return node

    def _block_node(self, col: int, parent: int) -> Any:
        line = self.lines[self.row]
        if _is_dash(line, col):
            return self._sequence(col)
        if self._key(self.row, col) is not None:
            return self._mapping(col)
        return self._inline(col, parent)

    def _key(self, row: int, col: int) -> Optional[Tuple[str, int]]:
        """The mapping key at `col` and the column after its ':', or None when there is none."""
        line = self.lines[row]
        if line[col] in "\"'":
            key, end = self._quoted(row, col)
            end = _skip_blanks(line, end)
            return (key, end + 1) if _KEY_END.match(line, end) else None
        if line[col] in "[{|>" or _is_dash(line, col):
            return None
        self._check_start(row, col)
        found = _KEY_END.search(line, col)
        key = line[col : found.start()].rstrip(" \t") if found and found.group() == ":" else ""
        return (key, found.end()) if key and found else None

    def _mapping(self, indent: int) -> Dict[str, Any]:
        """A block mapping whose keys sit at column `indent`, the first on the current line."""
        result: Dict[str, Any] = {}
        while True:
            found = self._key(self.row, indent)
            if found is None and _is_dash(self.lines[self.row], indent):
                raise self.fail(self.row, "a list item where a key was expected", "indent it")
            if found is None:
                raise self.fail(self.row, "expected 'key: value'", "add the key or fix the indent")
            if found[0] in result:
                raise self.fail(self.row, f"duplicate key {found[0]!r}", "keep only one of them")
            result[found[0]] = self._value(found[1], indent)
            next_indent = self._next_content()
            if next_indent is None or next_indent < indent:
                return result
            if next_indent > indent:
                raise self.fail(
                    self.row, "this line is indented more than the key above", "align it"
                )

    def _value(self, col: int, indent: int) -> Any:
        """A mapping value: the rest of the key's line, or the block below it."""
        line = self.lines[self.row]
        col = _skip_blanks(line, col)
        if col < len(line) and line[col] != "#":
            return self._inline(col, indent)
        self.row += 1
        below = self._next_content()
        if below is not None and (
            below > indent or (below == indent and _is_dash(self.lines[self.row], indent))
        ):
            return self._block(below, indent)
        return None

    def _sequence(self, indent: int) -> List[Any]:
        """A block sequence whose '- ' marks sit at column `indent`."""
        items: List[Any] = []
        while True:
            line = self.lines[self.row]
            col = _skip_blanks(line, indent + 1)
            if col < len(line) and line[col] != "#":
                items.append(self._block(col, indent))
            else:
                self.row += 1
                below = self._next_content()
                items.append(
                    self._block(below, indent) if below is not None and below > indent else None
                )
            next_indent = self._next_content()
            if next_indent is None or next_indent < indent:
                return items
            if next_indent > indent:
                raise self.fail(
                    self.row, "this line is indented more than the item above", "align it"
                )
            if not _is_dash(self.lines[self.row], indent):
                return items

    def _inline(self, col: int, parent: int) -> Any:
        """A value written on the current line from `col` (a flow collection may span lines)."""
        row, line = self.row, self.lines[self.row]
        if line[col] in "|>":
            return self._block_scalar(col, parent)
        if line[col] in "[{":
            value, row, end = self._flow_node(row, col)
        elif line[col] in "\"'":
            value, end = self._quoted(row, col)
        else:
            self._check_start(row, col)
            found = _COMMENT.search(line, col)
            end = found.start() if found else len(line)
            text = line[col:end].rstrip(" \t")
            if _VALUE_COLON.search(text):
                raise self.fail(row, "a value cannot hold ': ' or end with ':'", "quote the value")
            value = resolve(text)
        self._line_end(row, end)
        self.row = row + 1
        return value

    def _line_end(self, row: int, col: int) -> None:
        """Refuse anything but blanks and a comment after a value."""
        rest = self.lines[row][col:]
        tail = rest.lstrip(" \t")
        if tail and not (tail[0] == "#" and len(tail) < len(rest)):
            fix = "quote the whole value; a comment needs a space before '#'"
            raise self.fail(row, f"unexpected {tail[:20]!r} after the value", fix)

    def _block_scalar(self, col: int, parent: int) -> str:
        """A literal (|) or folded (>) block scalar whose header is at `col`."""
        header = _HEADER.fullmatch(self.lines[self.row], col)
        if header is None or (header.group(2) and header.group(4)):
            fix = "write '|' or '>', optionally with '-' or '+' and one indentation digit"
            raise self.fail(self.row, "a bad block scalar header", fix)
        digit = header.group(3)
        lines = self._scalar_lines(parent + int(digit) if digit else None, parent)
        return chomp(lines, header.group(1) == ">", header.group(2) or header.group(4))

    def _scalar_lines(self, indent: Optional[int], parent: int) -> List[str]:
        """The block scalar's lines below the header, with `indent` (or the first's) removed."""
        start = self.row = self.row + 1
        if indent is None:
            first = next((line for line in self.lines[start:] if line.strip(" ")), "")
            indent = len(first) - len(first.lstrip(" "))
        if indent <= parent:
            return []
        lines: List[str] = []
        for line in self.lines[start:]:
            if line.strip(" ") and len(line) - len(line.lstrip(" ")) < indent:
                break
            lines.append(line[indent:])
        self.row = start + len(lines)
        return lines

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
        if line[i] in ESCAPES:
            return ESCAPES[line[i]], i + 1
        width = HEX_WIDTH.get(line[i], 0)
        digits = line[i + 1 : i + 1 + width]
        if not width or len(digits) != width or not set(digits) <= set(string.hexdigits):
            raise self.fail(
                row, f"unknown escape '\\{line[i]}'", "use JSON escapes like \\n or \\u00e9"
            )
        code, i = int(digits, 16), i + 1 + width
        low = line[i + 2 : i + 6] if line[i : i + 2] == "\\u" else ""
        pair = 0xD800 <= code < 0xDC00 and len(low) == 4 and set(low) <= set(string.hexdigits)
        if pair and 0xDC00 <= int(low, 16) < 0xE000:  # a JSON surrogate pair is one character
            return chr(0x10000 + ((code - 0xD800) << 10) + int(low, 16) - 0xDC00), i + 6
        return chr(code), i

    def _flow_space(self, row: int, col: int, opened: int) -> Tuple[int, int]:
        """The next token inside a flow collection, across blanks, line ends and comments."""
        while row < len(self.lines):
            line = self.lines[row]
            col = _skip_blanks(line, col)
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
