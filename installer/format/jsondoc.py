"""JSON from untrusted bytes: bounded nesting and size, one error class, never a RecursionError.

`json.loads` recurses once per nesting level, so a document of 100,000 `[` raises RecursionError
(or worse, on a small stack, crashes). Every JSON k3bundle reads from a bundle, a state file, a
registry or a chart repository goes through `load_json`, which measures the nesting first (with
regular expressions, at C speed) and then parses.
"""

from __future__ import annotations

import json
import re
from typing import Any, Type, Union

from k3bundle.installer.errors import FormatError, K3BundleError

MAX_DEPTH = 64  # k3bundle's own documents nest 5 deep; OCI manifests and indexes about 4
MAX_BYTES = 64 * 1024 * 1024  # a manifest of 100,000 entries is about 40 MiB


def exceeds_depth(text: str, max_depth: int) -> bool:
    """True when [ and { nest deeper than `max_depth` in a JSON text (strings ignored).

    Works with regular expressions only (C speed): drop strings and everything but brackets,
    then peel innermost pairs `max_depth` times; a pair left over nests deeper.
    """
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text).translate(_JSON_PUNCTUATION))
    for _ in range(max_depth):
        if not brackets:
            return False
        brackets = _INNERMOST.sub("", brackets)
    return bool(_INNERMOST.search(brackets))  # unbalanced leftovers are the parser's to refuse


_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_JSON_PUNCTUATION = {ord(char): None for char in ",:0123456789.eE+- \t\r\ntruefalsn"}
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_INNERMOST = re.compile(r"[\[{][\]}]")


def load_json(
    data: Union[bytes, str],
    what: str,
    error: Type[K3BundleError] = FormatError,
    hint: Union[str, None] = None,
    max_depth: int = MAX_DEPTH,
    max_bytes: int = MAX_BYTES,
) -> Any:
    """Parse `data` (UTF-8 JSON) or raise `error` naming `what`; depth and size are bounded."""
    if len(data) > max_bytes:
        raise error(f"{what} is larger than {max_bytes} bytes", hint)
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError:
        raise error(f"{what} is not UTF-8 text", hint) from None
    if exceeds_depth(text, max_depth):
        raise error(f"{what} nests deeper than {max_depth} levels", hint)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise error(f"{what} is not valid JSON ({exc})", hint) from None
