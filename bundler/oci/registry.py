"""The one client for OCI registries: oras-py's Registry with its pitfalls fixed in one place.

oras-py 0.2.43 retries any failure for 131 s with no request timeout, keeps one bearer token per
client (a second repository then gets 401), crashes with Basic auth and no credentials, returns
manifests parsed (their bytes and digests lost) and never verifies blobs. Here every request has
the FetchSettings timeouts and our bounded retries, the auth scheme comes from the registry's
/v2/ challenge, bearer tokens are kept per repository, manifests come back as raw bytes checked
against their digest, and blobs are streamed into the Cache and admitted only when verified.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Tuple

import requests

from k3bundle.bundler.cache import Cache
from k3bundle.bundler.net.fetch import (
    Download,
    NotFoundError,
)
from k3bundle.bundler.net.limits import (
    MAX_MANIFEST,
    check_digest,
    read_bounded,
    too_large,
)
from k3bundle.bundler.net.transport import (
    stream_body,
)
from k3bundle.bundler.oci.mirrors import mirror_error, wire_reference
from k3bundle.bundler.oci.reference import Reference
from k3bundle.bundler.oci.registry_session import RegistrySession, RetryLater, T
from k3bundle.bundler.stream_digest import digest_prefix
from k3bundle.installer.errors import FetchError, IntegrityError, K3BundleError
from k3bundle.installer.format import load_json

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_TYPES = (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST)
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)  # a tag (bundler/oci/reference.py)


@dataclass(frozen=True)
class Fetched:
    """A manifest as the registry sent it: media type, sha256 digest and the exact bytes."""

    media_type: str
    digest: str
    data: bytes


class RegistryClient(RegistrySession):
    """Manifests (raw, verified) and blobs (streamed into the Cache, verified) from registries."""

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

    def _mirrored(self, ref: Reference, call: Callable[[Reference], T]) -> T:
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
                raise RetryLater("the registry refused to resume (HTTP 416); starting over", 0)
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
        digest, size = digest_prefix(partial, offset, chunk=None), download.max_size  # sha256 only
        self.events.started(download, size, offset)

        def received(count: int) -> None:
            self.tally.add(count)
            self.events.advanced(download, count)

        # one byte past the declared size is enough to refuse
        written = stream_body(response, partial, offset, size, digest, self.cancel, received)
        return digest.hexdigest(), written


def _media_type(url: str, data: bytes, content_type: str) -> str:
    parsed = load_json(data, f"the manifest at {url}", FetchError, "Check the image name.")
    declared = parsed.get("mediaType") if isinstance(parsed, dict) else None
    # umoci and Helm write OCI manifests without mediaType; the header is all there is then.
    return declared if isinstance(declared, str) else content_type.split(";", 1)[0].strip()


def _blob_download(ref: Reference, hexdigest: str, size: int, url: str) -> Download:
    """A blob as the event stream names it: the image and the digest's first 12 digits."""
    return Download(url, hexdigest, f"{ref.name} sha256:{hexdigest[:12]}", size)
