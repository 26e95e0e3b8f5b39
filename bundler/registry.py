"""The one client for OCI registries: oras-py's Registry with its pitfalls fixed in one place.

oras-py 0.2.43 retries any failure for 131 s with no request timeout, keeps one bearer token per
client (a second repository then gets 401), crashes with Basic auth and no credentials, returns
manifests parsed (their bytes and digests lost) and never verifies blobs. Here every request has
the FetchSettings timeouts and our bounded retries, the auth scheme comes from the registry's
/v2/ challenge, bearer tokens are kept per repository, manifests come back as raw bytes checked
against their digest, and blobs are streamed into the Cache and admitted only when verified.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Dict, Mapping, Optional, Tuple, TypeVar, Union

import oras.auth  # type: ignore[import-untyped]
import oras.provider  # type: ignore[import-untyped]
import requests

from k3bundle.installer.errors import FetchError, IntegrityError, K3BundleError
from k3bundle.installer.jsondoc import load_json

from .cache import Cache
from .credentials import Credentials, LoginStore, auth_files, registry_host
from .fetch import (
    Download,
    FetchEvents,
    FetchSettings,
    NotFoundError,
    hash_prefix,
)
from .limits import (
    MAX_MANIFEST,
    REDIRECT_ERRORS,
    check_digest,
    read_bounded,
    redirect_error,
    too_large,
)
from .mirrors import mirror_error, wire_reference
from .reference import Reference
from .tokens import ScopedTokenAuth, TokenDenied, fetch_token, tls_error
from .transport import (
    RETRY_STATUS,
    TRANSIENT,
    BoundedSession,
    Cancel,
    Tally,
    retry_after,
    retry_delay,
    stream_body,
)

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_TYPES = (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST)
AUTH_HINT = (
    "Pass --registry-auth {host}=USER:PASSWORD (or log in with 'docker login {host}'), "
    "and check the image name: registries answer 'unauthorized' for names that do not exist."
)
_T = TypeVar("_T")
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)  # a tag (bundler/reference.py)
DEFAULT_SETTINGS = FetchSettings()


@dataclass(frozen=True)
class Fetched:
    """A manifest as the registry sent it: media type, sha256 digest and the exact bytes."""

    media_type: str
    digest: str
    data: bytes


class _Oras(oras.provider.Registry):  # type: ignore[misc]
    """oras' Registry without its retry decorator (sleeps of 3..83 s, 131 s in all)."""

    do_request = oras.provider.Registry.do_request.__wrapped__


class _Retry(Exception):
    def __init__(self, reason: str, delay: Optional[float] = None) -> None:
        super().__init__(reason)
        self.reason, self.delay = reason, delay


class RegistryClient:
    """Manifests (raw, verified) and blobs (streamed into the Cache, verified) from registries."""

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

    # --- public API -------------------------------------------------------------------------

    def get_manifest(self, ref: Reference, reference: Optional[str] = None) -> Fetched:
        """GET a manifest or index by tag or digest; the exact bytes, checked against the digest."""
        wanted = reference or ref.reference
        if not _TAG.fullmatch(wanted):
            check_digest(wanted, f"image {ref.name}")  # it becomes part of a URL path
        return self._mirrored(
            ref,
            lambda wire: self._with_retries(
                wire,
                lambda: self._get_manifest_once(wire, wanted),
                self._url(wire, f"manifests/{wanted}"),
            ),
        )

    def fetch_blob(self, ref: Reference, digest: str, size: int, cache: Cache) -> Path:
        """A blob of `ref` in the cache: from it when present, else streamed and verified."""
        hexdigest = check_digest(digest, f"image {ref.name}")
        with cache.downloading(hexdigest) as partial:
            cached = cache.lookup(hexdigest)
            if cached is not None:
                self.events.finished(_blob_download(ref, hexdigest, size, ""), cached=True)
                return cached
            if self.settings.offline:
                raise FetchError(
                    f"--offline: blob {digest} of {ref.name} is not in the cache {cache.root}",
                    "Run the same build once with network access to fill the cache.",
                )
            return self._mirrored(
                ref,
                lambda wire: self._with_retries(
                    wire,
                    lambda: self._fetch_blob_once(wire, hexdigest, size, cache, partial),
                    self._url(wire, f"blobs/sha256:{hexdigest}"),
                ),
            )

    def _mirrored(self, ref: Reference, call: Callable[[Reference], _T]) -> _T:
        """`call` with the reference on the wire; a mirror's failure names the original too."""
        wire = wire_reference(ref, self._mirrors)
        if wire is ref:
            return call(ref)
        try:
            return call(wire)
        except K3BundleError as exc:
            raise mirror_error(exc, ref, wire) from None

    # --- manifests ----------------------------------------------------------------------------

    def _get_manifest_once(self, ref: Reference, wanted: str) -> Fetched:
        url = self._url(ref, f"manifests/{wanted}")
        headers = {"Accept": ", ".join(MANIFEST_TYPES)}
        with self._request(ref, url, headers) as response:
            if response.status_code == 404:
                kind = "manifest" if wanted.startswith("sha256:") else "tag"
                raise NotFoundError(
                    f"no {kind} {wanted} in {ref.registry}/{ref.repository} (asked for {ref.name})",
                    "Check the image name and tag; the registry has no such manifest.",
                )
            self._check_status(ref, response)
            data = read_bounded(response, MAX_MANIFEST, url)
            content_type = response.headers.get("Content-Type", "")
            expected = response.headers.get("Docker-Content-Digest", "")
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        expected = wanted if wanted.startswith("sha256:") else expected
        if expected.startswith("sha256:") and expected != digest:
            raise IntegrityError(
                f"the manifest of {ref.name} does not match its digest: "
                f"expected {expected}, got {digest}",
                "The registry (or a proxy in between) changed the manifest; nothing was kept.",
            )
        return Fetched(_media_type(url, data, content_type), digest, data)

    # --- blobs --------------------------------------------------------------------------------

    def _fetch_blob_once(
        self, ref: Reference, hexdigest: str, size: int, cache: Cache, partial: Path
    ) -> Path:
        have = partial.stat().st_size if partial.exists() else 0
        have = have if 0 < have < size else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        url = self._url(ref, f"blobs/sha256:{hexdigest}")
        with self._request(ref, url, headers) as response:
            if response.status_code == 404:
                raise NotFoundError(
                    f"blob sha256:{hexdigest} of {ref.name} is not in the registry",
                    "The image is incomplete on the registry; push it again or pick another tag.",
                )
            if response.status_code == 416:
                partial.unlink()
                raise _Retry("the registry refused to resume (HTTP 416); starting over", 0)
            self._check_status(ref, response)
            offset = have if have and response.status_code == 206 else 0
            length = response.headers.get("Content-Length", "")
            if length.isdigit() and offset + int(length) > size:
                partial.unlink(missing_ok=True)
                raise too_large(url, size)
            download = _blob_download(ref, hexdigest, size, url)
            with self.cancel.watching(response):
                actual = self._stream(download, response, partial, offset)
        if actual[1] > size:
            partial.unlink()
            raise too_large(url, size)
        if actual != (hexdigest, size):
            partial.unlink()
            raise IntegrityError(
                f"blob sha256:{hexdigest} of {ref.name} does not match: expected {size} bytes, "
                f"got {actual[1]} bytes with sha256 {actual[0]}",
                "The registry's copy is damaged or was replaced; nothing was cached.",
            )
        path = cache.admit(partial, hexdigest)
        self.events.finished(download, cached=False)
        return path

    def _stream(
        self, download: Download, response: requests.Response, partial: Path, offset: int
    ) -> Tuple[str, int]:
        digest, size = hash_prefix(partial, offset), download.max_size
        self.events.started(download, size, offset)

        def received(count: int) -> None:
            self.tally.add(count)
            self.events.advanced(download, count)

        # one byte past the declared size is enough to refuse
        written = stream_body(response, partial, offset, size, digest, self.cancel, received)
        return digest.hexdigest(), written

    # --- requests, auth, retries --------------------------------------------------------------

    def _with_retries(self, ref: Reference, once: Callable[[], _T], url: str) -> _T:
        for attempt in range(self.settings.retries + 1):
            self.cancel.check()
            try:
                return once()
            except _Retry as retry:
                reason, delay = retry.reason, retry.delay
            except REDIRECT_ERRORS as exc:  # InvalidURL is a ValueError: before oras' ValueError
                raise redirect_error(ref.endpoint, exc) from None
            except requests.exceptions.SSLError as exc:  # a ConnectionError, but not transient
                raise tls_error(exc, ref.endpoint, ref.name, ref.registry) from None
            except TRANSIENT as exc:  # also raised mid-body, while a blob streams
                reason, delay = f"{type(exc).__name__}: {exc}", None
            self.cancel.check()  # a transfer cut short by Ctrl-C is not retried
            if attempt >= self.settings.retries:
                raise FetchError(
                    f"giving up on {ref.name} after {attempt + 1} attempts: {reason}",
                    f"Check the network and the registry address {ref.endpoint}, then build "
                    "again: finished blobs are cached and an interrupted one resumes.",
                )
            delay = retry_delay(self.settings, attempt, delay)
            about = Download(url, "", ref.name)
            self.events.retried(about, attempt + 1, reason, delay)
            self._sleep(delay)
        raise AssertionError("unreachable")

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
            raise _Retry(f"HTTP {status} from {ref.endpoint}/v2/", after)
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
            raise _Retry(f"HTTP {status}", retry_after(response))
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


def _media_type(url: str, data: bytes, content_type: str) -> str:
    parsed = load_json(data, f"the manifest at {url}", FetchError, "Check the image name.")
    declared = parsed.get("mediaType") if isinstance(parsed, dict) else None
    # umoci and Helm write OCI manifests without mediaType; the header is all there is then.
    return declared if isinstance(declared, str) else content_type.split(";", 1)[0].strip()


def _blob_download(ref: Reference, hexdigest: str, size: int, url: str) -> Download:
    """A blob as the event stream names it: the image and the digest's first 12 digits."""
    return Download(url, hexdigest, f"{ref.name} sha256:{hexdigest[:12]}", size)
