"""Read the small YAML subset k3s config and registries files use (and JSON), without a library."""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Tuple

from k3bundle.installer.errors import UsageError
from k3bundle.installer.yaml.flow import PLAIN, LineReader, skip_blanks
from k3bundle.installer.yaml.scalars import chomp, resolve

__all__ = ["PLAIN", "load_config_file", "parse_yaml"]

# A mapping key ends at the first ':' before a space or the line end, unless a comment comes first.
_KEY_END = re.compile(r":(?=[ \t]|\Z)|[ \t]#")
_VALUE_COLON = re.compile(r":(?:[ \t]|\Z)")
_COMMENT = re.compile(r"[ \t]#")
_HEADER = re.compile(r"([|>])([-+]?)([1-9]?)([-+]?)(?:[ \t]+#.*)?[ \t]*")


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


class _Reader(LineReader):
    """A recursive-descent reader of the block structure; `row` is the next line to read."""

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
            end = skip_blanks(line, end)
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
        col = skip_blanks(line, col)
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
            col = skip_blanks(line, indent + 1)
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
