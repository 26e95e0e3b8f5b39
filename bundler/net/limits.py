"""What the builder accepts from the network: digests, sizes, redirects, all stated here.

Registries, chart repositories, mirrors and their redirects are hostile until checked
(DESIGN.md, trust boundary). Every digest is checked before any use, every download has a size
bound, and redirects stay on http(s), never downgrade https to http and are bounded in number.
Past a bound a download stops with a FetchError (exit 8) that names the URL.
"""

from __future__ import annotations

import re
from typing import Any, Collection, Optional
from urllib.parse import urlsplit

import requests

from k3bundle.installer.errors import FetchError

MAX_MANIFEST = 4 << 20  # OCI manifests and indexes (distribution refuses larger ones too)
MAX_INDEX_YAML = 64 << 20  # a chart repository's index.yaml (Bitnami's is about 15 MiB)
MAX_TEXT = 1 << 20  # checksum files, channel answers
MAX_TOKEN = 1 << 20  # token server answers
MAX_RELEASE_FILE = 16 << 30  # a k3s binary or airgap tarball, whose size nobody declares upfront
MAX_REDIRECTS = 10
_SHA256_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_HEX = re.compile(r"[0-9a-f]{64}")
REDIRECT_HINT = "Check the URL (and the mirror's redirects); k3bundle follows http(s) only."


def check_digest(digest: Any, where: str) -> str:
    """The 64 hex digits of `digest` if it is exactly sha256:<64 lowercase hex>; else FetchError."""
    found = _SHA256_DIGEST.fullmatch(digest) if isinstance(digest, str) else None
    if found is None:
        raise FetchError(
            f"{where}: {str(digest)[:100]!r} is not a sha256 digest",
            "k3bundle accepts sha256:<64 lowercase hex digits> only; the source is broken or "
            "hostile, nothing was fetched with it.",
        )
    return found.group(1)


def is_hex_key(key: str) -> bool:
    """True for exactly 64 lowercase hex digits (the only names the cache stores content under)."""
    return isinstance(key, str) and _HEX.fullmatch(key) is not None


def check_size(size: Any, where: str) -> int:
    """A declared size: a non-negative int (not a bool, not a string), else FetchError."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise FetchError(f"{where}: size {str(size)[:40]!r} is not a byte count")
    return size


def too_large(url: str, limit: int) -> FetchError:
    """The error for a download that sent more than `limit` bytes."""
    return FetchError(
        f"{url} sent more than {limit} bytes, more than it may (or than it declared)",
        "The server is broken or hostile; nothing from it was kept.",
    )


def read_bounded(response: requests.Response, limit: int, url: str) -> bytes:
    """The whole body of a streamed response, or FetchError once it exceeds `limit` bytes."""
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > limit:
        raise too_large(url, limit)
    data = response.raw.read(limit + 1, decode_content=True)
    if len(data) > limit:
        raise too_large(url, limit)
    return bytes(data)


def redirect_problem(old: str, new: str, insecure: Collection[str] = ()) -> Optional[str]:
    """Why a redirect from `old` to `new` is refused, or None when it may be followed."""
    old_scheme, target = urlsplit(old).scheme.lower(), urlsplit(new)
    if target.scheme.lower() not in ("http", "https"):
        return f"a redirect to {target.scheme or 'a relative'}:// URL"
    downgrade = old_scheme == "https" and target.scheme.lower() == "http"
    if downgrade and target.netloc.lower() not in insecure:
        return "a redirect from https to plain http"
    return None


class SafeSession(requests.Session):
    """A session whose redirects are bounded, http(s) only and never downgrade https.

    requests itself drops Authorization when a redirect changes the host (should_strip_auth);
    here it is dropped on any change of scheme, host or port, so a registry's credentials never
    follow a blob to its storage backend.
    """

    def __init__(self, insecure: Collection[str] = ()) -> None:
        super().__init__()
        self.max_redirects = MAX_REDIRECTS
        self._insecure = frozenset(host.lower() for host in insecure)

    def merge_environment_settings(
        self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> Any:
        """As requests does, except that a CA file set on the session (--ca-file) is not
        replaced by REQUESTS_CA_BUNDLE, which plain requests lets win over session.verify."""
        if verify is None and isinstance(self.verify, str):
            verify = self.verify
        return super().merge_environment_settings(url, proxies, stream, verify, cert)

    def rebuild_auth(self, prepared_request: Any, response: requests.Response) -> None:
        """Refuse unsafe redirects; strip Authorization unless scheme, host and port stay."""
        old, new = str(response.request.url), str(prepared_request.url)
        problem = redirect_problem(old, new, self._insecure)
        if problem is not None:
            raise RedirectRefused(f"{old}: {problem} ({new[:200]})")
        if _origin(old) != _origin(new):
            prepared_request.headers.pop("Authorization", None)
        super().rebuild_auth(prepared_request, response)  # type: ignore[no-untyped-call]


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


class RedirectRefused(requests.exceptions.InvalidURL):
    """A redirect k3bundle does not follow (another scheme, or https → http)."""


# Failures that no retry fixes: the server's redirects break the rules.
REDIRECT_ERRORS = (
    RedirectRefused,
    requests.exceptions.TooManyRedirects,
    requests.exceptions.InvalidSchema,
    requests.exceptions.InvalidURL,
    requests.exceptions.MissingSchema,
)


def redirect_error(url: str, exc: Exception) -> FetchError:
    """A one-line FetchError for a refused or endless redirect chain starting at `url`."""
    if isinstance(exc, requests.exceptions.TooManyRedirects):
        return FetchError(f"{url}: more than {MAX_REDIRECTS} redirects (a loop?)", REDIRECT_HINT)
    reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    return FetchError(f"{url}: refused redirect: {reason}", REDIRECT_HINT)
