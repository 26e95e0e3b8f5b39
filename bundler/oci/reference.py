"""Image references, normalised the way Docker does it (pure: no I/O).

``nginx`` is ``docker.io/library/nginx:latest``; a first component is a registry only when it has
a ``.`` or a ``:`` or is ``localhost``. The grammar is the one of distribution/reference: lowercase
repository components joined by ``.``, ``_``, ``__`` or dashes, a tag of at most 128 word
characters, dots and dashes, and (here) only ``sha256`` digests, which is what we verify.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Tuple

from k3bundle.installer.errors import UsageError

DOCKER_HUB = "docker.io"
DOCKER_HUB_ENDPOINT = "registry-1.docker.io"
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io"}
_DOMAIN = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"(?::[0-9]+)?"
)
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)  # ASCII: Python's \w is Unicode
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
_MAX_NAME = 255
_HINT = "Write it as [REGISTRY/]REPOSITORY[:TAG][@sha256:DIGEST], e.g. ghcr.io/org/app:1.2."


@dataclass(frozen=True)
class Reference:
    """A fully qualified image reference: registry, repository, and a tag and/or a digest."""

    registry: str
    repository: str
    tag: Optional[str]
    digest: Optional[str]
    implicit_latest: bool = False

    @property
    def name(self) -> str:
        """The fully qualified name, e.g. docker.io/library/nginx:latest or name:tag@sha256:…."""
        text = f"{self.registry}/{self.repository}"
        text += f":{self.tag}" if self.tag else ""
        return text + (f"@{self.digest}" if self.digest else "")

    @property
    def endpoint(self) -> str:
        """The host to talk to: registry-1.docker.io for Docker Hub, else the registry itself."""
        return DOCKER_HUB_ENDPOINT if self.registry == DOCKER_HUB else self.registry

    @property
    def reference(self) -> str:
        """What goes in /v2/<repository>/manifests/<reference>: the digest if any, else the tag."""
        found = self.digest or self.tag
        assert found is not None, "a Reference always has a tag or a digest"
        return found

    def __str__(self) -> str:
        return self.name


def parse_reference(text: str) -> Reference:
    """Parse and normalise an image reference; UsageError when it is not one."""
    given = text.strip()
    if not given or any(c.isspace() for c in given) or "://" in given:
        raise UsageError(f"not an image reference: {text!r}", _HINT)
    remainder, _, digest = given.partition("@")
    if digest and not _DIGEST.fullmatch(digest):
        raise UsageError(
            f"bad digest in image reference {given!r}: {digest!r}",
            "Use sha256:<64 lowercase hex digits> (the only digest algorithm k3bundle verifies).",
        )
    name, tag = _split_tag(remainder, given)
    registry, repository = _split_registry(name, given)
    if len(f"{registry}/{repository}") > _MAX_NAME:
        raise UsageError(f"image name longer than {_MAX_NAME} characters: {given!r}", _HINT)
    implicit = tag is None and not digest
    return Reference(registry, repository, "latest" if implicit else tag, digest or None, implicit)


def _split_tag(remainder: str, given: str) -> Tuple[str, Optional[str]]:
    name, colon, tag = remainder.rpartition(":")
    if not colon or "/" in tag:
        return remainder, None  # the colon belonged to a registry port
    if not _TAG.fullmatch(tag):
        raise UsageError(
            f"bad tag in image reference {given!r}: {tag!r}",
            "A tag is up to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'.",
        )
    return name, tag


def _split_registry(name: str, given: str) -> Tuple[str, str]:
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        if not _DOMAIN.fullmatch(first):
            raise UsageError(f"bad registry host in image reference {given!r}: {first!r}", _HINT)
        registry, repository = first.lower(), rest
    else:
        registry, repository = DOCKER_HUB, name
    if registry in _HUB_ALIASES:
        registry = DOCKER_HUB
        repository = repository if "/" in repository else f"library/{repository}"
    for component in repository.split("/"):
        if not _COMPONENT.fullmatch(component):
            raise UsageError(f"bad repository name in image reference {given!r}", _repo_hint(name))
    return registry, repository


def _repo_hint(name: str) -> str:
    if name != name.lower():
        return f"Repository names must be lowercase: {name.lower()!r}."
    return "Repository components are lowercase letters and digits, joined by '.', '_' or '-'."
