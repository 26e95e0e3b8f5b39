"""k3s releases: version and channel resolution, asset names per architecture, checksum files."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Tuple
from urllib.parse import quote, unquote, urlsplit

import requests

from k3bundle.bundler.net.fetch import Download, NotFoundError
from k3bundle.bundler.payloads.produced import Produced
from k3bundle.installer.errors import FetchError, UsageError
from k3bundle.installer.format import KIND_AIRGAP_IMAGES, KIND_K3S_BINARY, Entry, check_arch

if TYPE_CHECKING:  # the context imports this module's defaults
    from k3bundle.bundler.payloads.context import BuildContext

DEFAULT_RELEASE_URL = "https://github.com/k3s-io/k3s/releases/download"
DEFAULT_CHANNEL_URL = "https://update.k3s.io/v1-release/channels"
MAX_LOCATION = 2048  # a channel answer is a redirect to .../tag/<version>; nothing longer is read
IMAGE_FORMATS = {"zst": ".tar.zst", "gz": ".tar.gz", "tar": ".tar"}
_BINARY = {"amd64": "k3s", "arm64": "k3s-arm64", "arm": "k3s-armhf"}
# fullmatch only: `$` also matches before a trailing newline, which then reaches file names.
_VERSION = re.compile(r"v\d+\.\d+\.\d+(-(alpha|beta|rc)\d+)?\+k3s\d+", re.ASCII)
_CHANNEL = re.compile(r"[a-z0-9][a-z0-9.-]{0,62}")
_CHECKSUM_LINE = re.compile(r"([0-9a-fA-F]{64})\s+\*?(\S+)", re.ASCII)


def check_version(version: str) -> str:
    """Return a valid k3s tag (v1.31.4+k3s1, v1.32.4-rc1+k3s1) or raise UsageError."""
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise UsageError(
            f"{version!r} is not a k3s version",
            "Versions look like v1.31.4+k3s1 or v1.32.4-rc1+k3s1 (see the k3s releases page).",
        )
    return version


def binary_name(arch: str) -> str:
    """The release asset of the k3s binary for `arch` (k3s, k3s-arm64, k3s-armhf)."""
    return _BINARY[check_arch(arch)]


def images_name(arch: str, images_format: str) -> str:
    """The airgap image tarball for `arch` (arm's says 'arm', not 'armhf')."""
    if images_format not in IMAGE_FORMATS:
        raise UsageError(f"unknown images format {images_format!r}", "Choose zst, gz or tar.")
    return f"k3s-airgap-images-{check_arch(arch)}{IMAGE_FORMATS[images_format]}"


def checksum_name(arch: str) -> str:
    """The checksum file of `arch`: sha256sum-<arch>.txt."""
    return f"sha256sum-{check_arch(arch)}.txt"


def asset_url(release_url: str, version: str, name: str) -> str:
    """URL of a release asset; '+' in the tag is percent-encoded."""
    return f"{release_url.rstrip('/')}/{quote(version, safe='')}/{name}"


def parse_checksums(text: str, origin: str) -> Dict[str, str]:
    """`sha256sum` output → {file name: sha256}; lines are looked up by name, never position."""
    sums: Dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _CHECKSUM_LINE.fullmatch(stripped)
        if not match:
            raise FetchError(f"{origin} line {number} is not a sha256sum line: {stripped[:80]!r}")
        sums[match.group(2)] = match.group(1).lower()
    return sums


def expected_sha(sums: Dict[str, str], name: str, origin: str) -> str:
    """The sha256 the checksum file lists for `name`, or a FetchError naming both."""
    if name not in sums:
        raise FetchError(
            f"{origin} has no line for {name}",
            "The release may not ship this file (try another --images-format or version).",
        )
    return sums[name]


@dataclass(frozen=True)
class Resolved:
    """A version and how it was found."""

    version: str
    how: str


def resolve_channel(
    session: requests.Session, channel_url: str, channel: str, timeout: Tuple[float, float]
) -> Resolved:
    """Ask the channel server; its 302 Location ends in the tag."""
    if not isinstance(channel, str) or not _CHANNEL.fullmatch(channel):
        raise UsageError(
            f"{channel!r} is not a channel name",
            "Channels look like stable, latest, testing or v1.31.",
        )
    url = f"{channel_url.rstrip('/')}/{channel}"
    try:
        # stream=True and no body read: the answer is its status and Location, nothing more
        with session.get(url, allow_redirects=False, timeout=timeout, stream=True) as response:
            location = response.headers.get("Location", "")[:MAX_LOCATION]
    except requests.RequestException as exc:
        raise FetchError(
            f"cannot reach the channel server at {url}: {exc}", "Pin a release with --version."
        ) from None
    if response.status_code not in (301, 302, 303, 307, 308) or not location:
        raise FetchError(
            f"channel {channel!r} is unknown at {url} (HTTP {response.status_code})",
            "Use stable, latest, testing or vX.Y, or pin a release with --version.",
        )
    tag = urlsplit(location).path.rstrip("/").rsplit("/", 1)[-1]
    version = unquote(tag)
    if not _VERSION.fullmatch(version):
        raise FetchError(
            f"channel {channel!r} at {url} points to {location!r}, which holds no k3s version"
        )
    return Resolved(version, f"channel {channel} at {channel_url}")


def resolve(ctx: BuildContext) -> Resolved:
    """The release to build: --version as given, else the channel's answer (remembered in the
    cache, so an --offline build can reuse it)."""
    settings = ctx.settings
    if settings.version:
        return Resolved(check_version(settings.version), "--version")
    key = f"channel:{settings.channel_url.rstrip('/')}/{settings.channel}"
    if settings.fetch.offline:
        version = ctx.cache.recall(key)
        if version is None:
            raise FetchError(
                f"--offline: channel {settings.channel!r} was never resolved with this cache",
                "Pass --version, or build once with network access.",
            )
        return Resolved(version, f"channel {settings.channel} (cached answer, --offline)")
    resolved = resolve_channel(
        ctx.fetcher._session(), settings.channel_url, settings.channel, settings.fetch.timeout
    )
    ctx.cache.remember(key, resolved.version)
    return resolved


@dataclass(frozen=True)
class _Asset:
    entry_path: str
    kind: str
    mode: int
    arch: str
    download: Download
    checksum_url: str


def produce(ctx: BuildContext, earlier: Produced) -> Produced:
    """The k3s binary and airgap image tarball of every architecture, checked against the
    release's sha256sum files and fetched (or found) in the cache."""
    assets = [a for arch in ctx.settings.arches for a in _assets(ctx, arch)]
    cached = ctx.fetcher.fetch_all([a.download for a in assets])
    produced = Produced()
    for asset in assets:
        local = cached[asset.download.sha256]
        source = {
            "url": asset.download.url,
            "checksum_file": asset.checksum_url,
            "checksum": asset.download.sha256,
        }
        entry = Entry(
            asset.entry_path,
            local.stat().st_size,
            asset.download.sha256,
            asset.kind,
            asset.mode,
            asset.arch,
            source,
            # taken by the download's own hashing pass, of the bytes whose sha256 it checked
            chunks=ctx.fetcher.chunks.get(asset.download.sha256),
        )
        produced.add(entry, local, fresh=asset.download.sha256 in ctx.fetcher.downloaded)
    return produced


def _checksums(ctx: BuildContext, arch: str) -> Tuple[str, Dict[str, str]]:
    settings, cache = ctx.settings, ctx.cache
    url = asset_url(settings.release_url, ctx.version, checksum_name(arch))
    text = cache.recall(url) if settings.fetch.offline else None
    if text is None and settings.fetch.offline:
        raise FetchError(
            f"--offline: {url} is not in the cache",
            "Build once with network access; if the cache was filled from a mirror, pass the same "
            "--release-url (cached checksum files are kept by their URL).",
        )
    if text is None:
        try:
            text = ctx.fetcher.get_text(url)
        except NotFoundError:
            raise FetchError(
                f"k3s {ctx.version} has no {checksum_name(arch)} at {url}",
                f"Either the release does not exist there or it does not ship {arch}; check "
                "--version/--channel, --arch and --release-url.",
            ) from None
        cache.remember(url, text)
    return url, parse_checksums(text, url)


def _assets(ctx: BuildContext, arch: str) -> List[_Asset]:
    checksum_url, sums = _checksums(ctx, arch)
    wanted = [
        (binary_name(arch), KIND_K3S_BINARY, 0o755),
        (images_name(arch, ctx.settings.images_format), KIND_AIRGAP_IMAGES, 0o644),
    ]
    assets = []
    for name, kind, mode in wanted:
        sha = expected_sha(sums, name, checksum_url)
        download = Download(asset_url(ctx.settings.release_url, ctx.version, name), sha, name)
        assets.append(_Asset(f"{arch}/{name}", kind, mode, arch, download, checksum_url))
    return assets
