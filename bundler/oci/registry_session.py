"""A registry connection: per-thread oras clients, the /v2/ auth challenge, credentials,
bounded retries (the transport's one loop) and requests — what every manifest and blob request
of RegistryClient shares.
"""

from __future__ import annotations

import functools
import logging
import threading
from pathlib import Path
from typing import Callable, Collection, Dict, Mapping, Optional, Tuple, TypeVar, Union

import oras.auth  # type: ignore[import-untyped]
import oras.provider  # type: ignore[import-untyped]
import requests

from k3bundle.bundler.net.fetch import Download, FetchEvents, FetchSettings
from k3bundle.bundler.net.limits import REDIRECT_ERRORS, redirect_error
from k3bundle.bundler.net.transport import (
    RETRY_STATUS,
    BoundedSession,
    Cancel,
    RetryLater,
    Tally,
    retry_after,
    with_retries,
)
from k3bundle.bundler.oci.credentials import Credentials, LoginStore, auth_files, registry_host
from k3bundle.bundler.oci.reference import Reference
from k3bundle.bundler.oci.tokens import ScopedTokenAuth, TokenDenied, fetch_token, tls_error
from k3bundle.installer.errors import FetchError

AUTH_HINT = (
    "Pass --registry-auth {host}=USER:PASSWORD (or log in with 'docker login {host}'), "
    "and check the image name: registries answer 'unauthorized' for names that do not exist."
)
T = TypeVar("T")
DEFAULT_SETTINGS = FetchSettings()
__all__ = ["RegistrySession", "RetryLater", "T"]  # RetryLater's home: bundler/net/transport.py


class _Oras(oras.provider.Registry):  # type: ignore[misc]
    """oras' Registry without its retry decorator (sleeps of 3..83 s, 131 s in all)."""

    do_request = oras.provider.Registry.do_request.__wrapped__


class RegistrySession:
    """Connections to registries: clients, auth and retries, shared by every request."""

    def __init__(
        self,
        settings: FetchSettings = DEFAULT_SETTINGS,
        insecure: Collection[str] = (),
        auth: Mapping[str, Credentials] = {},
        docker_config: Optional[Path] = None,
        sleep: Optional[Callable[[float], None]] = None,
        mirrors: Mapping[str, str] = {},
        ca_files: Mapping[str, str] = {},
        events: Optional[FetchEvents] = None,
        tally: Optional[Tally] = None,
        cancel: Optional[Cancel] = None,
    ) -> None:
        logging.getLogger("oras.logger").setLevel(logging.CRITICAL)  # errors are ours to report
        self.settings = settings
        self.cancel = cancel or Cancel()
        self._sleep = sleep or self.cancel.sleep  # a backoff ends at once on Ctrl-C
        self._insecure = {registry_host(host) for host in insecure}
        self._auth = {registry_host(host): creds for host, creds in auth.items()}
        self._mirrors = {registry_host(host): to for host, to in mirrors.items()}
        self._ca_files = {registry_host(host): path for host, path in ca_files.items()}
        self._logins = LoginStore([docker_config] if docker_config else auth_files())
        self._challenges: Dict[str, str] = {}
        self._local = threading.local()
        self.events = events or FetchEvents()
        self.tally = tally or Tally()  # the build's Fetcher shares its own: one byte count

    @property
    def transferred(self) -> int:
        """Bytes received so far (by every client sharing this client's tally)."""
        return self.tally.total

    # --- requests, auth, retries --------------------------------------------------------------

    def _with_retries(self, ref: Reference, once: Callable[[], T], url: str) -> T:
        """`once` through the transport's one retry loop; redirect and TLS failures are named
        for this registry (a TLS failure is a ConnectionError, but never transient)."""

        def attempt() -> T:
            try:
                return once()
            except REDIRECT_ERRORS as exc:  # InvalidURL is a ValueError: before oras' ValueError
                raise redirect_error(ref.endpoint, exc) from None
            except requests.exceptions.SSLError as exc:
                raise tls_error(exc, ref.endpoint, ref.name, ref.registry) from None

        def give_up(attempts: int, reason: str) -> FetchError:
            return FetchError(
                f"giving up on {ref.name} after {attempts} attempts: {reason}",
                f"Check the network and the registry address {ref.endpoint}, then build "
                "again: finished blobs are cached and an interrupted one resumes.",
            )

        def retried(number: int, reason: str, delay: float) -> None:
            self.events.retried(Download(url, "", ref.name), number, reason, delay)

        return with_retries(attempt, self.settings, self.cancel, retried, give_up, self._sleep)

    def _request(self, ref: Reference, url: str, headers: Dict[str, str]) -> requests.Response:
        """One GET through oras (which answers a 401 challenge once), bearer token per repo."""
        client, tokens = self._client(ref)
        key = f"{ref.endpoint}/{ref.repository}"
        bearer = isinstance(client.auth, ScopedTokenAuth)
        if bearer:
            client.auth.token = tokens.get(key)
        elif isinstance(client.auth, oras.auth.BasicAuth):
            headers.update(client.auth.get_auth_header())  # spare the 401 round trip
        try:
            response: requests.Response = client.do_request(
                url, "GET", headers=headers, stream=True
            )
        except REDIRECT_ERRORS as exc:
            raise redirect_error(url, exc) from None
        except TokenDenied as exc:
            raise self._denied(ref, exc.message) from None
        except ValueError:  # oras: a 401 without a challenge to answer
            raise self._denied(ref, "the registry sent no challenge to answer") from None
        if bearer:
            tokens[key] = client.auth.token
        return response

    def _client(self, ref: Reference) -> Tuple[_Oras, Dict[str, Optional[str]]]:
        # requests sessions and oras' token state are not thread-safe: one set per thread.
        if not hasattr(self._local, "clients"):
            self._local.clients, self._local.tokens = {}, {}
        clients: Dict[str, _Oras] = self._local.clients
        if ref.endpoint not in clients:
            clients[ref.endpoint] = self._new_client(ref)
        return clients[ref.endpoint], self._local.tokens

    def _new_client(self, ref: Reference) -> _Oras:
        scheme = self._challenge(ref)
        credentials = self._credentials(ref)
        if scheme == "basic" and credentials is None:
            raise self._denied(ref, "the registry wants a user name and password")
        backend = "basic" if scheme == "basic" else "k3b-scoped-token"
        verify = self._verify(ref)  # oras passes it on every request: it must be ours
        client = _Oras(
            ref.endpoint, insecure=self._is_insecure(ref), tls_verify=verify, auth_backend=backend
        )
        session = BoundedSession(self.settings.timeout, self._insecure, verify)
        client.session = client.auth.session = session
        if backend == "basic" and credentials is not None:
            client.auth.set_basic_auth(*credentials)  # sent to this registry's host only
        if backend != "basic":
            base = self._url(ref, "")
            client.auth.fetch = functools.partial(
                fetch_token,
                session,
                registry_url=base,
                credentials=credentials,
                insecure=self._insecure,
            )
        return client

    def _challenge(self, ref: Reference) -> str:
        """The auth scheme /v2/ asks for ("none", "basic" or "bearer"), once per endpoint."""
        if ref.endpoint not in self._challenges:
            probe = f"{'http' if self._is_insecure(ref) else 'https'}://{ref.endpoint}/v2/"
            self._challenges[ref.endpoint] = self._with_retries(
                ref, lambda: self._probe(ref), probe
            )
        return self._challenges[ref.endpoint]

    def _probe(self, ref: Reference) -> str:
        scheme = "http" if self._is_insecure(ref) else "https"
        session = BoundedSession(self.settings.timeout, self._insecure, self._verify(ref))
        with session, session.get(f"{scheme}://{ref.endpoint}/v2/", stream=True) as response:
            status, challenge = response.status_code, response.headers.get("Www-Authenticate")
            after = retry_after(response)
        if status in RETRY_STATUS:
            raise RetryLater(f"HTTP {status} from {ref.endpoint}/v2/", after)
        if status == 401 and challenge:
            return challenge.split(" ", 1)[0].lower()
        if status < 400:
            return "none"
        raise FetchError(
            f"{ref.endpoint} is not an OCI registry (HTTP {status} on /v2/) for {ref.name}",
            "Check the registry host in the image name.",
        )

    def _check_status(self, ref: Reference, response: requests.Response) -> None:
        status = response.status_code
        if status in RETRY_STATUS:
            raise RetryLater(f"HTTP {status}", retry_after(response))
        if status in (401, 403):
            raise self._denied(ref, f"HTTP {status}")
        if status >= 400:
            raise FetchError(
                f"{ref.endpoint} answered HTTP {status} for {ref.name}",
                "Check the image name and your access to the registry.",
            )

    def _denied(self, ref: Reference, why: str) -> FetchError:
        found = "with the credentials found" if self._credentials(ref) else "without credentials"
        return FetchError(
            f"access denied to {ref.name} {found} ({why})", AUTH_HINT.format(host=ref.registry)
        )

    def _credentials(self, ref: Reference) -> Optional[Credentials]:
        host = registry_host(ref.registry)
        if host in self._auth:
            return self._auth[host]
        return self._logins.lookup(host)

    def _verify(self, ref: Reference) -> Union[bool, str]:
        """requests' verify: the host's own CA file, else --ca-file, else the default bundle."""
        return self._ca_files.get(registry_host(ref.registry)) or self.settings.ca_file or True

    def _is_insecure(self, ref: Reference) -> bool:
        return registry_host(ref.registry) in self._insecure

    def _url(self, ref: Reference, path: str) -> str:
        scheme = "http" if self._is_insecure(ref) else "https"
        return f"{scheme}://{ref.endpoint}/v2/{ref.repository}/{path}"
