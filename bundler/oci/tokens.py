"""Registry sessions and bearer tokens, without handing credentials to anyone else.

A registry's 401 challenge names a realm, which may be another host (docker.io sends clients to
auth.docker.io). The realm is hostile input: credentials go to it only over https, or over plain
HTTP when the registry itself was declared plain HTTP (--insecure-registry) and the realm is on
that same host. An https registry pointing at a plain-HTTP realm is refused outright.
"""

from __future__ import annotations

import base64
import re
from typing import Any, Callable, Collection, Dict, Optional, Tuple
from urllib.parse import urlsplit

import oras.auth  # type: ignore[import-untyped]
import requests

from k3bundle.bundler.net.limits import MAX_TOKEN, read_bounded
from k3bundle.bundler.oci.credentials import TOKEN_USER
from k3bundle.installer.errors import FetchError
from k3bundle.installer.format import load_json

Credentials = Tuple[str, str]
_PARAM = re.compile(r'([A-Za-z]+)="([^"]*)"')
_TOKEN = re.compile(r"[\x21-\x7e]+")  # what fits in an Authorization header, nothing more
PLAIN_HTTP_HINT = (
    "{host} answered https in plain HTTP; if it is plain HTTP on your network, mark it "
    "insecure (--insecure-registry {host})."
)
TLS_HINT = (
    "If {host} has a certificate from a private or corporate CA, pass --ca-file CA.pem (or set "
    "SSL_CERT_FILE, or registries.{host}.ca_file in the site config); check it names {host}."
)


class ScopedTokenAuth(oras.auth.TokenAuth):  # type: ignore[misc]
    """Bearer auth: a fresh token for the scope asked for (oras resends its last one), fetched
    by bundler/oci/tokens.py, which checks the realm before any credential leaves."""

    fetch: Callable[[str], str]

    def authenticate_request(
        self, original: requests.Response, headers: Dict[str, str], refresh: bool = False
    ) -> Any:
        """Answer a 401 challenge with a token for its scope."""
        challenge = original.headers.get("Www-Authenticate")
        if not challenge:
            return headers, False
        self.token = self.fetch(challenge)
        headers["Authorization"] = f"Bearer {self.token}"
        return headers, True


oras.auth.auth_backends.setdefault("k3b-scoped-token", ScopedTokenAuth)


class TokenDenied(FetchError):
    """The token server refused the credentials (or their absence)."""


def challenge_params(challenge: str) -> Dict[str, str]:
    """realm, service and scope of a `Bearer realm="…",service="…"` challenge."""
    return {key.lower(): value for key, value in _PARAM.findall(challenge)}


def realm_problem(registry_url: str, realm: str, insecure: Collection[str]) -> Optional[str]:
    """Why a token must not be fetched from `realm` for `registry_url`, or None."""
    target, registry = urlsplit(realm), urlsplit(registry_url)
    if target.scheme not in ("http", "https") or not target.hostname:
        return f"its token realm {realm[:200]!r} is not an http(s) URL"
    if target.scheme == "https":
        return None
    same_host = registry.scheme == "http" and target.hostname == registry.hostname
    if same_host or target.netloc.lower() in insecure:
        return None
    return f"its token realm {realm[:200]} is plain HTTP (a password would travel in clear)"


def fetch_token(
    session: requests.Session,
    challenge: str,
    registry_url: str,
    credentials: Optional[Credentials],
    insecure: Collection[str],
) -> str:
    """A bearer token for the challenge's scope; FetchError naming the realm otherwise."""
    params = challenge_params(challenge)
    realm = params.get("realm", "")
    if not realm:
        raise FetchError(
            f"{registry_url} asked for a bearer token but named no realm",
            "The registry's Www-Authenticate header is malformed; report it to its operator.",
        )
    problem = realm_problem(registry_url, realm, insecure)
    if problem is not None:
        raise FetchError(
            f"refusing the token server of {registry_url}: {problem}",
            "Nothing was sent. Use the registry over https, or if it really is plain HTTP on "
            "your network, mark the token host insecure too (--insecure-registry HOST:PORT).",
        )
    query = {key: params[key] for key in ("service", "scope") if params.get(key)}
    with _ask(session, realm, query, credentials) as response:
        if response.status_code in (401, 403):
            raise TokenDenied(f"the token server {realm} said HTTP {response.status_code}")
        if response.status_code != 200:
            raise FetchError(f"the token server {realm} answered HTTP {response.status_code}")
        data = read_bounded(response, MAX_TOKEN, realm)
    return _token_of(load_json(data, f"the token answer of {realm}", FetchError), realm)


def _ask(
    session: requests.Session,
    realm: str,
    query: Dict[str, str],
    credentials: Optional[Credentials],
) -> requests.Response:
    """GET with Basic credentials, or for an identity token the OAuth2 refresh-token POST."""
    headers = {"Accept": "application/json"}
    if credentials is not None and credentials[0] == TOKEN_USER:
        form = {**query, "grant_type": "refresh_token", "refresh_token": credentials[1]}
        form["client_id"] = "k3bundle"
        return session.post(realm, data=form, headers=headers, stream=True)
    if credentials is not None:
        pair = f"{credentials[0]}:{credentials[1]}".encode()
        headers["Authorization"] = f"Basic {base64.b64encode(pair).decode()}"
    return session.get(realm, params=query, headers=headers, stream=True)


def _token_of(doc: object, realm: str) -> str:
    token = (doc.get("token") or doc.get("access_token")) if isinstance(doc, dict) else None
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise FetchError(
            f"the token server {realm} answered without a usable token",
            "Check the registry's token service; its answer holds no 'token' string.",
        )
    return token


def tls_error(exc: Exception, endpoint: str, name: str, host: str) -> FetchError:
    """A failed TLS handshake: the certificate problem and the way to trust a private CA (or,
    when the server answered in plain HTTP, the way to say so)."""
    plain = "WRONG_VERSION_NUMBER" in str(exc) or "record layer" in str(exc)
    hint = PLAIN_HTTP_HINT if plain else TLS_HINT
    return FetchError(
        f"TLS failed talking to {endpoint} for {name}: {_tls_reason(exc)}", hint.format(host=host)
    )


def _tls_reason(exc: Exception) -> str:
    """The certificate problem itself, without urllib3's pool and retry wrapping."""
    text = str(exc)
    for marker in ("certificate verify failed: ", "SSLError("):
        if marker in text:
            text = text.split(marker, 1)[1]
    return text.split(" (_ssl.c")[0].rstrip("')\"")[:200]
