"""`k3bundle build`: a k3s release turned into one signed bundle, its installer and SHA256SUMS."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from k3bundle.bundler import uptodate
from k3bundle.bundler.cache import Cache
from k3bundle.bundler.keys import Prompt, Signer, load_signer
from k3bundle.bundler.net.fetch import Download, Fetcher, FetchEvents, FetchSettings, NotFoundError
from k3bundle.bundler.net.transport import DISK_ERRORS
from k3bundle.bundler.oci.reference import Reference
from k3bundle.bundler.payloads import release
from k3bundle.bundler.payloads.charts import ChartSpec
from k3bundle.bundler.payloads.extras import RegistryOptions, collect, parse_images
from k3bundle.bundler.writer import (
    BundleOutput,
    source_date_epoch,
    stage_bundle,
    writer_code_sha256,
)
from k3bundle.bundler.zipapp import write_zipapp
from k3bundle.installer.errors import FetchError, IntegrityError, build_error
from k3bundle.installer.format import PARTS_SUFFIX, Entry, Manifest, check_arch, sha256_file
from k3bundle.installer.progress import Progress

INSTALLER_NAME = "k3bundle-install.pyz"
SUMS_NAME = "SHA256SUMS"
Warn = Callable[[str], None]


@dataclass(frozen=True)
class BuildSettings:
    """Everything one build needs, merged from the spec and the command line."""

    arches: Tuple[str, ...]
    cache_dir: Path
    version: Optional[str] = None
    channel: str = "stable"
    images_format: str = "zst"
    sign_key: Optional[Path] = None
    output: Path = Path("dist")
    split: Optional[int] = None
    release_url: str = release.DEFAULT_RELEASE_URL
    channel_url: str = release.DEFAULT_CHANNEL_URL
    fetch: FetchSettings = field(default_factory=FetchSettings)
    install: Mapping[str, Any] = field(default_factory=dict)
    name: Optional[str] = None
    images: Tuple[str, ...] = ()
    charts: Tuple[ChartSpec, ...] = ()
    registries: RegistryOptions = field(default_factory=RegistryOptions)
    force: bool = False  # write everything again even when DIR already holds this build


@dataclass
class BuildResult:
    """What a build wrote and how it got there."""

    version: str
    resolved_by: str
    arches: Tuple[str, ...]
    bundle: BundleOutput
    installer: Path
    sums: Path
    signed_by: Optional[str]
    downloaded_bytes: int
    files: List[Path] = field(default_factory=list)
    up_to_date: bool = False  # DIR already held this very build; nothing was rewritten


@dataclass(frozen=True)
class _Asset:
    entry_path: str
    kind: str
    mode: int
    arch: str
    download: Download
    checksum_url: str


def build(
    settings: BuildSettings,
    events: Optional[FetchEvents] = None,
    progress: Optional[Progress] = None,
    warn: Warn = lambda message: None,
    prompt: Optional[Prompt] = None,
) -> BuildResult:
    """Resolve, download (or reuse), verify and bundle one k3s release."""
    _refuse_unsupported(settings)
    signer = load_signer(settings.sign_key, prompt) if settings.sign_key else None
    if signer is None:
        warn(
            "no --sign-key given: the bundle is UNSIGNED and hosts must install it "
            "with --allow-unsigned"
        )
    cache = Cache(settings.cache_dir)
    fetcher = Fetcher(cache, settings.fetch, events)
    refs = parse_images(settings.images, warn)
    resolved = _resolve(settings, fetcher, cache)
    assets = [
        a
        for arch in settings.arches
        for a in _assets(settings, resolved.version, arch, fetcher, cache)
    ]
    cached = fetcher.fetch_all([a.download for a in assets])
    manifest = _manifest(settings, resolved.version, assets, cached)
    files = {a.entry_path: cached[a.download.sha256] for a in assets}
    work = Path(tempfile.mkdtemp(prefix="build-", dir=cache.root))
    try:
        return _finish(
            settings, resolved, manifest, files, refs, cache, fetcher, work, signer, progress
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _finish(
    settings: BuildSettings,
    resolved: release.Resolved,
    manifest: Manifest,
    files: Dict[str, Path],
    refs: Sequence[Reference],
    cache: Cache,
    fetcher: Fetcher,
    work: Path,
    signer: Optional[Signer],
    progress: Optional[Progress],
) -> BuildResult:
    extras = collect(
        refs,
        settings.charts,
        settings.arches,
        settings.images_format,
        cache,
        fetcher,
        settings.registries,
        work,
    )
    manifest = replace(manifest, entries=(*manifest.entries, *extras.entries), extra=extras.meta)
    files.update(extras.files)
    output = settings.output
    output.mkdir(parents=True, exist_ok=True)
    target = output / f"{settings.name or default_name(resolved.version, settings.arches)}.tar"
    installer = write_zipapp(work / INSTALLER_NAME)
    installer_sha256 = sha256_file(installer)
    digest = uptodate.recipe(
        manifest.to_bytes(),
        writer_code_sha256(),
        signer.key_id if signer else None,
        settings.split,
        target.name,
        installer_sha256,
        source_date_epoch(),
    )
    stamp = None if settings.force else uptodate.current(cache, output, digest)
    if stamp is not None:
        bundle = _recorded_bundle(output, stamp, manifest)
    else:
        uptodate.forget(cache, output)
        bundle, sha256s = _write(
            settings, manifest, files, target, (installer, installer_sha256), fetcher, signer,
            progress,
        )  # fmt: skip
        record = {"bundle": {"files": [p.name for p in bundle.files], "size": bundle.size}}
        uptodate.save(cache, output, digest, _outputs(output, bundle), sha256s, record)
    return BuildResult(
        resolved.version,
        resolved.how,
        settings.arches,
        bundle,
        output / INSTALLER_NAME,
        output / SUMS_NAME,
        signer.key_id if signer else None,
        fetcher.transferred,
        _outputs(output, bundle),
        up_to_date=stamp is not None,
    )


def _write(
    settings: BuildSettings,
    manifest: Manifest,
    files: Mapping[str, Path],
    target: Path,
    installer: Tuple[Path, str],
    fetcher: Fetcher,
    signer: Optional[Signer],
    progress: Optional[Progress],
) -> Tuple[BundleOutput, Dict[str, str]]:
    """Write the bundle, the installer (path, sha256) and SHA256SUMS, all under temporary
    names, then rename them into place together and remove the previous build's other files:
    a build that fails leaves the previous one whole. Returns the bundle and every output's
    sha256."""
    output = settings.output
    previous = _previous_outputs(output)
    bar = progress or Progress()
    bar.start(f"Writing {target.name}", sum(e.size for e in manifest.entries))
    fresh = {e.path for e in manifest.entries if e.sha256 in fetcher.downloaded}
    try:
        staged = stage_bundle(target, manifest, files, signer, settings.split, bar.advance, fresh)
    except IntegrityError as exc:
        raise _evicted(fetcher.cache, files.values(), exc) from None
    except OSError as exc:
        if exc.filename is not None or exc.errno not in DISK_ERRORS:
            raise
        raise build_error(exc, "write", target) from None  # name the file the disk refused
    bar.finish()
    bundle = staged.output
    try:
        staged.add(output / INSTALLER_NAME, lambda tmp: _copy_installer(installer[0], tmp))
        text = _sums_text(bundle, installer[1])
        staged.add(output / SUMS_NAME, lambda tmp: tmp.write_bytes(text.encode("utf-8")))
    except BaseException:
        staged.abort()
        raise
    staged.commit()
    _remove(output, previous - {final.name for _, final in staged.renames})
    sha256s = {**bundle.sha256s, INSTALLER_NAME: installer[1]}
    sha256s[SUMS_NAME] = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return bundle, sha256s


def _evicted(cache: Cache, paths: Iterable[Path], error: IntegrityError) -> IntegrityError:
    """`error`, and what was done about it: cache entries found rotted are evicted."""
    rotted = cache.evict_rotted(paths)
    if not rotted:
        return error
    named = str(rotted[0]) in error.message
    first = error.message if named else f"the cache entry {rotted[0]} no longer matched its sha256"
    more = f" (and {len(rotted) - 1} more)" if len(rotted) > 1 else ""
    return IntegrityError(
        f"{first}{more}: evicted from the cache, so the next build fetches it again",
        "Run the build again; if this happens again, check the disk that holds the cache.",
    )


def _copy_installer(installer: Path, tmp: Path) -> None:
    shutil.copyfile(installer, tmp)
    os.chmod(tmp, 0o755)  # it runs as ./k3bundle-install.pyz too (a shebang line)


def _outputs(output: Path, bundle: BundleOutput) -> List[Path]:
    return [*bundle.files, output / INSTALLER_NAME, output / SUMS_NAME]


def _recorded_bundle(output: Path, stamp: Mapping[str, Any], manifest: Manifest) -> BundleOutput:
    """The BundleOutput of the build DIR already holds, from its stamp."""
    names = [str(name) for name in stamp["bundle"]["files"]]
    index = next((output / n for n in names if n.endswith(PARTS_SUFFIX)), None)
    return BundleOutput(
        [output / n for n in names],
        hashlib.sha256(manifest.to_bytes()).hexdigest(),
        int(stamp["bundle"]["size"]),
        index,
        {n: str(stamp["files"][n]["sha256"]) for n in names},
    )


def default_name(version: str, arches: Sequence[str]) -> str:
    """k3s-v1.31.4-k3s1-amd64-arm64: the tag with '+' made file-name safe, then the arches."""
    return f"k3s-{version.replace('+', '-')}-{'-'.join(arches)}"


def _refuse_unsupported(settings: BuildSettings) -> None:
    for arch in settings.arches:
        check_arch(arch)


def _resolve(settings: BuildSettings, fetcher: Fetcher, cache: Cache) -> release.Resolved:
    if settings.version:
        return release.Resolved(release.check_version(settings.version), "--version")
    key = f"channel:{settings.channel_url.rstrip('/')}/{settings.channel}"
    if settings.fetch.offline:
        version = cache.recall(key)
        if version is None:
            raise FetchError(
                f"--offline: channel {settings.channel!r} was never resolved with this cache",
                "Pass --version, or build once with network access.",
            )
        return release.Resolved(version, f"channel {settings.channel} (cached answer, --offline)")
    resolved = release.resolve_channel(
        fetcher._session(), settings.channel_url, settings.channel, settings.fetch.timeout
    )
    cache.remember(key, resolved.version)
    return resolved


def _checksums(
    settings: BuildSettings, version: str, arch: str, fetcher: Fetcher, cache: Cache
) -> Tuple[str, Dict[str, str]]:
    url = release.asset_url(settings.release_url, version, release.checksum_name(arch))
    text = cache.recall(url) if settings.fetch.offline else None
    if text is None and settings.fetch.offline:
        raise FetchError(
            f"--offline: {url} is not in the cache",
            "Build once with network access; if the cache was filled from a mirror, pass the same "
            "--release-url (cached checksum files are kept by their URL).",
        )
    if text is None:
        try:
            text = fetcher.get_text(url)
        except NotFoundError:
            raise FetchError(
                f"k3s {version} has no {release.checksum_name(arch)} at {url}",
                f"Either the release does not exist there or it does not ship {arch}; check "
                "--version/--channel, --arch and --release-url.",
            ) from None
        cache.remember(url, text)
    return url, release.parse_checksums(text, url)


def _assets(
    settings: BuildSettings, version: str, arch: str, fetcher: Fetcher, cache: Cache
) -> List[_Asset]:
    checksum_url, sums = _checksums(settings, version, arch, fetcher, cache)
    wanted = [
        (release.binary_name(arch), "k3s-binary", 0o755),
        (release.images_name(arch, settings.images_format), "airgap-images", 0o644),
    ]
    assets = []
    for name, kind, mode in wanted:
        sha = release.expected_sha(sums, name, checksum_url)
        download = Download(release.asset_url(settings.release_url, version, name), sha, name)
        assets.append(_Asset(f"{arch}/{name}", kind, mode, arch, download, checksum_url))
    return assets


def _manifest(
    settings: BuildSettings, version: str, assets: Sequence[_Asset], cached: Mapping[str, Path]
) -> Manifest:
    entries = []
    for asset in assets:
        source = {
            "url": asset.download.url,
            "checksum_file": asset.checksum_url,
            "checksum": asset.download.sha256,
        }
        size = cached[asset.download.sha256].stat().st_size
        entries.append(
            Entry(
                asset.entry_path,
                size,
                asset.download.sha256,
                asset.kind,
                asset.mode,
                asset.arch,
                source,
            )
        )
    install = {k: v for k, v in settings.install.items() if v}
    return Manifest(version, settings.arches, tuple(entries), install=install)


def _previous_outputs(output: Path) -> Set[str]:
    """The files a previous build listed in DIR/SHA256SUMS (and SHA256SUMS itself)."""
    sums = output / SUMS_NAME
    if not sums.is_file():
        return set()
    names = {line.split("  ", 1)[-1].strip() for line in sums.read_text("utf-8").splitlines()}
    return {n for n in names if n and "/" not in n and not n.startswith(".")} | {SUMS_NAME}


def _remove(output: Path, names: Set[str]) -> None:
    """Remove a previous build's files once the new one is in place, so DIR holds one bundle.

    Only after: a build that fails leaves the previous bundle, installer and SHA256SUMS as they
    were, still matching each other.
    """
    for name in sorted(names):
        (output / name).unlink(missing_ok=True)


def _sums_text(bundle: BundleOutput, installer_sha256: str) -> str:
    """SHA256SUMS: every bundle file and the installer, as `sha256sum -c` reads them."""
    hashes = {**bundle.sha256s, INSTALLER_NAME: installer_sha256}
    return "".join(f"{sha}  {name}\n" for name, sha in sorted(hashes.items()))
