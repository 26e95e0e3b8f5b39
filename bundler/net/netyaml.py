"""YAML from outside (a chart repository's index.yaml, a chart's own files): no anchors, no
aliases, one error.

PyYAML expands aliases while it constructs, so nine lines of nested aliases (an alias bomb)
take minutes and gigabytes. A Helm index has no use for them, so they are refused outright.
"""

from __future__ import annotations

from typing import Any, Optional, Type

import yaml

from k3bundle.installer.errors import FetchError, K3BundleError


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors and aliases: an alias bomb expands to gigabytes."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        """Refuse an alias (*name) or an anchor (&name) before anything is expanded."""
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(
                None, None, "anchors and aliases are not accepted here", event.start_mark
            )
        return super().compose_node(parent, index)


def load_index_yaml(text: str, index_url: str) -> Any:
    """A chart repository's index.yaml, read without anchors or aliases; FetchError otherwise."""
    return load_untrusted_yaml(
        text, f"{index_url} is not a usable index.yaml", FetchError, "Check the repository URL."
    )


def load_untrusted_yaml(
    text: str, problem: str, error: Type[K3BundleError] = FetchError, hint: Optional[str] = None
) -> Any:
    """YAML read without anchors or aliases; `error(f"{problem}: REASON", hint)` otherwise."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)
    except (yaml.YAMLError, RecursionError) as exc:
        reason = " ".join(str(exc).split())[:300]
        raise error(f"{problem}: {reason}", hint) from None
