"""`k3bundle build`: a k3s release turned into one signed bundle, its installer and SHA256SUMS."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from k3bundle.bundler import since, uptodate
from k3bundle.bundler.background import Background
from k3bundle.bundler.cache import Cache
from k3bundle.bundler.keys import Prompt, load_signer
from k3bundle.bundler.net.fetch import Fetcher, FetchEvents
from k3bundle.bundler.net.limits import is_hex_key
from k3bundle.bundler.net.transport import DISK_ERRORS, GRACE, Cancelled
from k3bundle.bundler.payloads import extras, release
from k3bundle.bundler.payloads.context import BuildContext, BuildSettings, Producer
from k3bundle.bundler.payloads.produced import Produced, combined
from k3bundle.bundler.writer import (
    BundleOutput,
    source_date_epoch,
    stage_bundle,
    writer_code_sha256,
)
from k3bundle.bundler.zipapp import write_zipapp
from k3bundle.installer.errors import IntegrityError, build_error
from k3bundle.installer.format import PARTS_SUFFIX, Manifest, check_arch, sha256_file
from k3bundle.installer.progress import Progress

__all__ = ["PRODUCERS", "BuildResult", "BuildSettings", "build", "default_name"]

INSTALLER_NAME = "k3bundle-install.pyz"
SUMS_NAME = "SHA256SUMS"
Warn = Callable[[str], None]
# What a bundle carries, in bundle order. A new kind of payload is one producer module and one
# line here; each producer sees what the ones before it produced (the image producer adds the
# images the charts deploy, so the charts come first).
PRODUCERS: Tuple[Producer, ...] = (release.produce, extras.produce_charts, extras.produce_images)
# What each producer reads from earlier ones (a producer not named here reads them all): the
# release's files come from the release server, the charts from chart repositories, and only
# the images need the charts (the images they deploy). So all three fetch at once, and the
# extras' local work (writing image archives) overlaps the release's transfer, the longest.
READS: Mapping[Producer, Tuple[Producer, ...]] = {
    release.produce: (),
    extras.produce_charts: (),
    extras.produce_images: (extras.produce_charts,),
}


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


def build(
    settings: BuildSettings,
    events: Optional[FetchEvents] = None,
    progress: Optional[Progress] = None,
    warn: Warn = lambda message: None,
    prompt: Optional[Prompt] = None,
) -> BuildResult:
    """Resolve, download (or reuse), verify and bundle one k3s release: resolve → producers →
    write, every step handed the one BuildContext."""
    _refuse_unsupported(settings)
    signer = load_signer(settings.sign_key, prompt) if settings.sign_key else None
    if signer is None:
        warn(
            "no --sign-key given: the bundle is UNSIGNED and hosts must install it "
            "with --allow-unsigned"
        )
    images = extras.check_inputs(settings.images, settings.charts, warn)
    cache = Cache(settings.cache_dir)
    fetcher = Fetcher(cache, settings.fetch, events)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=cache.root))
    # compiled while the release is resolved and fetched, not after
    zipapp = Background(lambda: write_zipapp(work / INSTALLER_NAME), "k3bundle-zipapp")
    try:
        ctx = BuildContext(
            settings, cache, fetcher, work, progress or Progress(), warn, signer, images
        )
        resolved = release.resolve(ctx)
        ctx = replace(ctx, version=resolved.version)
        produced = produce(ctx, PRODUCERS)
        if settings.since is not None:  # every producer's entries known, nothing written yet
            produced = since.apply(ctx, produced)
        return _finish(ctx, resolved, produced, zipapp)
    finally:
        try:
            with contextlib.suppress(Exception):  # its error matters only to _finish
                zipapp.result()  # nothing writes into `work` once it is removed
        finally:  # a second Ctrl-C while waiting still removes it
            shutil.rmtree(work, ignore_errors=True)


def produce(
    ctx: BuildContext,
    producers: Sequence[Producer],
    reads: Mapping[Producer, Sequence[Producer]] = READS,
) -> Produced:
    """Run every producer, each on its own thread as soon as the producers it reads from (all
    earlier ones unless `reads` says) are done, seeing what they produced. Results in
    `producers` order.

    The first error is raised; an error in any producer cancels the others (their transfers
    stop at once), and Ctrl-C cancels them all.
    """
    runners: List[_Runner] = []
    for producer in producers:
        wanted = reads.get(producer)
        needs = list(runners) if wanted is None else [r for r in runners if r.producer in wanted]
        runners.append(_Runner(ctx, producer, needs))
    try:
        parts = [runner.job.result() for runner in runners]
    except BaseException as exc:
        ctx.fetcher.cancel.set()
        deadline = time.monotonic() + GRACE
        for runner in runners:
            runner.job.thread.join(max(0.0, deadline - time.monotonic()))
        cause = next((r.job.error for r in runners if r.failed()), None)
        if cause is not None and cause is not exc:
            raise cause from None  # what went wrong first, not the cancel it caused here
        raise
    return combined(parts)


class _Runner:
    """One producer on its own (daemon) thread, started once those it reads from are done; its
    failure cancels the build's transfers."""

    def __init__(self, ctx: BuildContext, producer: Producer, needs: Sequence[_Runner]) -> None:
        self.producer, self.needs = producer, tuple(needs)
        self.job = Background(lambda: self._produce(ctx), failed=lambda _: ctx.fetcher.cancel.set())

    def _produce(self, ctx: BuildContext) -> Produced:
        for need in self.needs:
            need.job.thread.join()
            if need.job.error is not None:
                raise Cancelled()  # it failed: its error is the one raised
        earlier = combined([need.job.value for need in self.needs if need.job.value is not None])
        return self.producer(ctx, earlier)

    def failed(self) -> bool:
        """Whether it stopped with an error of its own (not the cancel another one caused)."""
        return self.job.error is not None and not isinstance(self.job.error, Cancelled)


def _finish(
    ctx: BuildContext, resolved: release.Resolved, produced: Produced, zipapp: Background[Path]
) -> BuildResult:
    settings, signer = ctx.settings, ctx.signer
    install = {k: v for k, v in settings.install.items() if v}
    manifest = Manifest(
        resolved.version,
        settings.arches,
        tuple(produced.entries),
        install=install,
        extra=produced.metadata,
    )
    output = settings.output
    output.mkdir(parents=True, exist_ok=True)
    target = output / f"{settings.name or default_name(resolved.version, settings.arches)}.tar"
    installer = zipapp.result()
    installer_sha256 = sha256_file(installer)
    digest = uptodate.recipe(
        # Chunk digests follow from the bytes, and a download takes them while a cached file
        # does not: the same inputs are the same recipe whether the cache was warm or cold.
        _without_chunks(manifest).to_bytes(),
        writer_code_sha256(),
        signer.key_id if signer else None,
        settings.split,
        target.name,
        installer_sha256,
        source_date_epoch(),
    )
    stamp = None if settings.force else uptodate.current(ctx.cache, output, digest)
    bundle = _recorded_bundle(output, stamp) if stamp is not None else None
    up_to_date = bundle is not None
    if bundle is None:
        uptodate.forget(ctx.cache, output)
        bundle, sha256s = _write(ctx, manifest, produced, target, (installer, installer_sha256))
        names = [p.name for p in bundle.files]
        record = {"bundle": {"files": names, "size": bundle.size, "id": bundle.bundle_id}}
        uptodate.save(ctx.cache, output, digest, _outputs(output, bundle), sha256s, record)
    return BuildResult(
        resolved.version,
        resolved.how,
        settings.arches,
        bundle,
        output / INSTALLER_NAME,
        output / SUMS_NAME,
        signer.key_id if signer else None,
        ctx.fetcher.transferred,
        _outputs(output, bundle),
        up_to_date=up_to_date,
    )


def _write(
    ctx: BuildContext,
    manifest: Manifest,
    produced: Produced,
    target: Path,
    installer: Tuple[Path, str],
) -> Tuple[BundleOutput, Dict[str, str]]:
    """Write the bundle, the installer (path, sha256) and SHA256SUMS, all under temporary
    names, then rename them into place together and remove the previous build's other files:
    a build that fails leaves the previous one whole. Returns the bundle and every output's
    sha256."""
    output, files = ctx.settings.output, produced.files
    previous = _previous_outputs(output)
    bar = ctx.progress
    bar.start(f"Writing {target.name}", sum(e.size for e in manifest.entries))
    try:
        staged = stage_bundle(
            target, manifest, files, ctx.signer, ctx.settings.split, bar.advance, produced.fresh
        )
    except IntegrityError as exc:
        raise _evicted(ctx.cache, files.values(), exc) from None
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


def _recorded_bundle(output: Path, stamp: Mapping[str, Any]) -> Optional[BundleOutput]:
    """The BundleOutput of the build DIR already holds, from its stamp (None when the stamp
    does not say, or not in the expected shape: the build is then written anew)."""
    try:
        names = [str(name) for name in stamp["bundle"]["files"]]
        bundle_id = stamp["bundle"]["id"]
        if not (isinstance(bundle_id, str) and is_hex_key(bundle_id)):
            return None
        index = next((output / n for n in names if n.endswith(PARTS_SUFFIX)), None)
        return BundleOutput(
            [output / n for n in names],
            bundle_id,
            int(stamp["bundle"]["size"]),
            index,
            {n: str(stamp["files"][n]["sha256"]) for n in names},
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _without_chunks(manifest: Manifest) -> Manifest:
    return replace(manifest, entries=tuple(replace(e, chunks=None) for e in manifest.entries))


def default_name(version: str, arches: Sequence[str]) -> str:
    """k3s-v1.31.4-k3s1-amd64-arm64: the tag with '+' made file-name safe, then the arches."""
    return f"k3s-{version.replace('+', '-')}-{'-'.join(arches)}"


def _refuse_unsupported(settings: BuildSettings) -> None:
    for arch in settings.arches:
        check_arch(arch)


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
