"""Extra container images: pick each architecture's manifest, pull its blobs, write OCI archives.

One OCI image-layout tar per architecture holds every extra image. Each index.json entry carries
the fully qualified name in `io.containerd.image.name` (what containerd's importer, and so k3s,
names the image) and the tag in `org.opencontainers.image.ref.name`; blobs shared between images
are stored once, and manifests keep their registry bytes, so digests match the registry's.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, cast

from k3bundle.bundler.cache import Cache
from k3bundle.bundler.net.limits import check_digest, check_size
from k3bundle.bundler.net.transport import Cancel, run_parallel
from k3bundle.bundler.oci.reference import Reference
from k3bundle.bundler.oci.registry import Fetched, RegistryClient
from k3bundle.bundler.stream_digest import READ as BLOB_READ
from k3bundle.bundler.stream_digest import StreamDigest
from k3bundle.bundler.tarwrite import end_of_archive, padding, tar_header
from k3bundle.installer.errors import FetchError, IntegrityError
from k3bundle.installer.format import DEFAULT_CHUNK, Chunks, load_json

INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
OCI_INDEX = INDEX_TYPES[0]
NAME_ANNOTATION = "io.containerd.image.name"
REF_ANNOTATION = "org.opencontainers.image.ref.name"
# k3s's arm is armhf (ARMv7); an ARMv6 image runs there too, so it is the fallback.
_VARIANTS: Mapping[str, Tuple[Optional[str], ...]] = {
    "amd64": (None,),
    "arm64": ("v8", None),
    "arm": ("v7", "v6", None),
}
_PLATFORM_KEYS = ("os", "architecture", "variant")
ZSTD_WINDOW_LOG = 25  # k3s caps its zstd decoder at 1 << 25 bytes


@dataclass(frozen=True)
class PulledImage:
    """One image for one architecture, its blobs in the cache."""

    ref: Reference
    arch: str
    manifest: Fetched
    platform: Mapping[str, str]
    blobs: Tuple[Tuple[str, int], ...]  # (digest, size) of config and layers
    index_digest: str  # what the reference pointed at (an index, or this manifest)

    @property
    def size(self) -> int:
        """Bytes of manifest, config and layers."""
        return len(self.manifest.data) + sum(size for _, size in self.blobs)


def platform_of(descriptor: Mapping[str, Any]) -> Tuple[str, str, Optional[str]]:
    """(os, architecture, variant) of an index entry."""
    platform = descriptor.get("platform")
    platform = platform if isinstance(platform, dict) else {}
    variant = platform.get("variant")
    return (
        str(platform.get("os", ""))[:40],
        str(platform.get("architecture", ""))[:40],
        variant[:40] if isinstance(variant, str) else None,
    )


def select_manifest(index: Mapping[str, Any], arch: str, image: str) -> Mapping[str, Any]:
    """The index entry for linux/`arch`, preferring the variant k3s runs (arm → v7)."""
    listed = index.get("manifests")
    if not isinstance(listed, list):
        raise FetchError(f"image {image}: its index has no list of manifests")
    entries = [d for d in listed if isinstance(d, dict)]
    for variant in _VARIANTS[arch]:
        for entry in entries:
            if platform_of(entry) == ("linux", arch, variant):
                return entry
    have = sorted({"/".join(p for p in platform_of(e) if p) for e in entries})
    raise FetchError(
        f"image {image} has no linux/{arch} platform (it has: {', '.join(have) or 'none'})",
        f"Drop --arch {arch} for this image's bundle, or use an image built for {arch}.",
    )


def get_manifest(
    client: RegistryClient, ref: Reference, cache: Cache, reference: Optional[str] = None
) -> Fetched:
    """A manifest from the registry, kept in the cache (by digest) for --offline builds."""
    wanted = reference or ref.reference
    key = f"manifest:{ref.registry}/{ref.repository}@{wanted}"
    if client.settings.offline:
        return _recall_manifest(cache, key, ref, wanted)
    fetched = client.get_manifest(ref, wanted)
    cache.store(check_digest(fetched.digest, f"image {ref.name}"), fetched.data)
    cache.remember(key, json.dumps({"digest": fetched.digest, "media_type": fetched.media_type}))
    return fetched


def _recall_manifest(cache: Cache, key: str, ref: Reference, wanted: str) -> Fetched:
    memo = cache.recall(key)
    hint = "Run the same build once with network access to fill the cache."
    found = load_json(memo, f"the cache's record of {key}", FetchError, hint) if memo else None
    digest = found.get("digest") if isinstance(found, dict) else None
    media_type = found.get("media_type") if isinstance(found, dict) else None
    path = cache.lookup(check_digest(digest, key)) if memo and isinstance(media_type, str) else None
    if path is None:
        raise FetchError(
            f"--offline: the manifest {wanted} of image {ref.name} is not in the cache", hint
        )
    return Fetched(str(media_type), str(digest), path.read_bytes())


def pull(client: RegistryClient, ref: Reference, arch: str, cache: Cache) -> PulledImage:
    """Resolve `ref` to its linux/`arch` manifest and fetch its config and layers."""
    top = get_manifest(client, ref, cache)
    doc = _json(top, ref)
    manifest, platform = top, {"os": "linux", "architecture": arch}
    if top.media_type in INDEX_TYPES or "manifests" in doc:
        entry = select_manifest(doc, arch, ref.name)
        check_digest(entry.get("digest"), f"image {ref.name}: index entry for {arch}")
        manifest = get_manifest(client, ref, cache, entry["digest"])
        platform = {
            k: v for k, v in zip(("os", "architecture", "variant"), platform_of(entry)) if v
        }
        doc = _json(manifest, ref)
    blobs = _blobs(doc, ref)
    for digest, size in blobs:
        client.fetch_blob(ref, digest, size, cache)
    if manifest is top:
        _check_config_arch(cache, blobs[0][0], arch, ref)
    return PulledImage(ref, arch, manifest, platform, tuple(blobs), top.digest)


def pull_all(
    client_factory: Callable[[], RegistryClient],
    refs: Sequence[Reference],
    arches: Sequence[str],
    cache: Cache,
    jobs: int,
    cancel: Optional[Cancel] = None,
) -> List[PulledImage]:
    """Pull every image for every architecture, `jobs` at a time, in a stable order."""
    pairs = [(ref, arch) for ref in refs for arch in arches]
    local = threading.local()  # one client (and requests session) per worker thread

    def one(pair: Tuple[Reference, str]) -> PulledImage:
        if not hasattr(local, "client"):
            local.client = client_factory()
        return pull(local.client, pair[0], pair[1], cache)

    return run_parallel(one, pairs, jobs, cancel or Cancel())


def _json(fetched: Fetched, ref: Reference) -> Dict[str, Any]:
    doc = load_json(fetched.data, f"image {ref.name}: manifest {fetched.digest}", FetchError)
    if not isinstance(doc, dict):
        raise FetchError(f"image {ref.name}: manifest {fetched.digest} is not a JSON object")
    return doc


def _blobs(doc: Mapping[str, Any], ref: Reference) -> List[Tuple[str, int]]:
    layers = doc.get("layers", [])
    if not isinstance(doc.get("config"), dict) or not isinstance(layers, list):
        raise FetchError(f"image {ref.name}: its manifest lists no config or malformed layers")
    blobs = []
    for number, descriptor in enumerate([doc["config"], *layers]):
        where = f"image {ref.name}: " + (f"layer {number}" if number else "config")
        if not isinstance(descriptor, dict):
            raise FetchError(f"{where} is not a descriptor")
        check_digest(descriptor.get("digest"), where)
        blobs.append((str(descriptor["digest"]), check_size(descriptor.get("size"), where)))
    return blobs


def _check_config_arch(cache: Cache, digest: str, arch: str, ref: Reference) -> None:
    path = cache.lookup(check_digest(digest, f"image {ref.name}: config"))
    config = load_json(path.read_bytes(), f"image {ref.name}: config", FetchError) if path else {}
    config = config if isinstance(config, dict) else {}
    found = (str(config.get("os"))[:40], str(config.get("architecture"))[:40])
    if found != ("linux", arch):
        raise FetchError(
            f"image {ref.name} is a single-platform image for {found[0]}/{found[1]}, "
            f"not linux/{arch}",
            f"Use an image (or a multi-platform index) that has linux/{arch}.",
        )


def image_names(ref: Reference) -> List[Tuple[str, str]]:
    """The names (and ref.name annotations) an image is imported under.

    containerd drops the tag of `name:tag@digest`, and k3s retags and labels only tagged names,
    so such an image gets two entries: `name:tag` (what k3s labels, what pods with the tag
    use) and `name@digest` (what pods pinned to the digest use). A digest-only reference is
    imported as `name@digest`; pods must use exactly that name (k3s cannot label it).
    """
    base = f"{ref.registry}/{ref.repository}"
    names = [(f"{base}:{ref.tag}", ref.tag)] if ref.tag else []
    return names + ([(f"{base}@{ref.digest}", ref.digest)] if ref.digest else [])


def layout_index(images: Sequence[PulledImage]) -> bytes:
    """index.json of the archive: one entry per image name, annotated with the full name."""
    manifests = []
    for image in images:
        for name, ref_name in image_names(image.ref):
            manifests.append(
                {
                    "mediaType": image.manifest.media_type,
                    "digest": image.manifest.digest,
                    "size": len(image.manifest.data),
                    "platform": dict(image.platform),
                    "annotations": {NAME_ANNOTATION: name, REF_ANNOTATION: ref_name},
                }
            )
    doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Written:
    """An archive this build wrote: where, how many bytes, and their sha256 (measured as the
    bytes were written, so nothing reads the file again to learn it)."""

    path: Path
    size: int
    sha256: str
    chunks: Optional[Chunks] = None  # DEFAULT_CHUNK slices, hashed in the same pass as sha256


def write_images(
    target: Path, images: Sequence[PulledImage], cache: Cache, images_format: str
) -> Written:
    """The per-architecture image archive in `images_format` (zst, gz or tar)."""
    if images_format != "gz":
        return _write_layout(target, images, cache, compress=images_format == "zst")
    plain = _write_layout(target.with_suffix(""), images, cache, compress=False, hashed=False)
    tmp = target.with_name(f".{target.name}.tmp")
    with open(plain.path, "rb") as source, open(tmp, "wb") as raw:
        out = _HashingWriter(raw)
        # mtime=0 and no file name in the gzip header keep the archive reproducible.
        with gzip.GzipFile(filename="", mode="wb", fileobj=out.io(), mtime=0) as packed:
            for chunk in iter(lambda: source.read(1 << 20), b""):
                packed.write(chunk)
    plain.path.unlink()
    tmp.replace(target)
    return out.written(target)


def write_archive(
    target: Path, images: Sequence[PulledImage], cache: Cache, compress: bool
) -> Path:
    """Write an OCI layout tar (optionally zstd) of `images`; each blob stored once."""
    return _write_layout(target, images, cache, compress).path


def _write_layout(
    target: Path,
    images: Sequence[PulledImage],
    cache: Cache,
    compress: bool,
    hashed: bool = True,
) -> Written:
    """write_archive, the archive's bytes hashed as they go to disk (unless `hashed` is False:
    the plain tar that gzip then reads)."""
    tmp = target.with_name(f".{target.name}.tmp")
    with open(tmp, "wb") as raw:
        hashing = _HashingWriter(raw) if hashed else None
        out = hashing.io() if hashing is not None else raw
        sink = _zstd_writer(out) if compress else out
        tar = _TarStream(sink)
        tar.add_bytes("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        tar.add_bytes("index.json", layout_index(images))
        tar.add_dir("blobs")
        tar.add_dir("blobs/sha256")
        for digest, source in sorted(_unique_blobs(images, cache).items()):
            _add_blob(tar, digest, source, cache)
        tar.close()
        if compress:
            sink.close()
    tmp.replace(target)
    if hashing is None:
        return Written(target, target.stat().st_size, "")
    return hashing.written(target)


def _unique_blobs(images: Sequence[PulledImage], cache: Cache) -> Dict[str, Any]:
    blobs: Dict[str, Any] = {}
    for image in images:
        blobs[image.manifest.digest] = image.manifest.data
        for digest, _size in image.blobs:
            path = cache.lookup(digest.split(":", 1)[-1])
            if path is None:
                raise FetchError(f"image {image.ref.name}: blob {digest} vanished from the cache")
            blobs[digest] = path
    return blobs


class _TarStream:
    """An uncompressed PAX tar written front to back with the bundle writer's own pieces
    (tarwrite: headers, padding, the end of the archive), so it is byte for byte what tarfile's
    "w|" mode wrote for the same members on Python 3.9+; a blob's data goes through in 1 MiB
    writes, not tarfile's 10 KiB ones: the writes are what the archive's hashing and
    compression see."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out, self.offset = out, 0

    def _write(self, data: bytes | memoryview) -> None:
        self.out.write(data)
        self.offset += len(data)

    def header(
        self, name: str, size: int, mode: int = 0o644, kind: bytes = tarfile.REGTYPE
    ) -> None:
        """One member's header block(s): uid/gid 0, no user names, mtime 0."""
        self._write(tar_header(name, size, mode, 0, kind))

    def data(self, data: bytes | memoryview) -> None:
        """Part of the current member's data."""
        self._write(data)

    def pad(self) -> None:
        """NULs up to the next 512-byte block, after a member's data."""
        self._write(padding(self.offset))

    def add_bytes(self, name: str, data: bytes) -> None:
        """A regular file member holding `data`."""
        self.header(name, len(data))
        self.data(data)
        self.pad()

    def add_dir(self, name: str) -> None:
        """A directory member."""
        self.header(name, 0, 0o755, tarfile.DIRTYPE)

    def close(self) -> None:
        """The end of the archive, as tarfile's close writes it."""
        self._write(end_of_archive(self.offset))


def _add_blob(tar: _TarStream, digest: str, source: Any, cache: Cache) -> None:
    name = f"blobs/sha256/{digest.split(':', 1)[-1]}"
    if isinstance(source, bytes):
        tar.add_bytes(name, source)
        return
    check = hashlib.sha256()  # a cached blob may have rotted since it was verified
    buffer = memoryview(bytearray(BLOB_READ))  # one buffer, not a new bytes object per read
    with open(source, "rb", buffering=0) as handle:
        left = os.fstat(handle.fileno()).st_size
        tar.header(name, left)
        while left:
            count = handle.readinto(buffer[: min(BLOB_READ, left)])
            if not count:
                break
            check.update(buffer[:count])
            tar.data(buffer[:count])
            left -= count
    tar.pad()
    if left or check.hexdigest() != source.name:
        evicted = cache.evict_rotted([source])
        raise IntegrityError(
            f"the cache entry {source} (blob {digest}) no longer matched its sha256"
            + (": evicted from the cache, so the next build fetches it again" if evicted else ""),
            "Run the build again; if this happens again, check the disk that holds the cache "
            "and that nothing else writes to it.",
        )


class _HashingWriter:
    """A file whose bytes are hashed and counted as they are written to it: whole, and in
    DEFAULT_CHUNK slices (the bundle's chunk digests), in one pass over the same bytes
    (StreamDigest). So the bundle writer needs to read the archive neither for its sha256 nor
    for its chunk digests: both describe exactly the bytes written, and the installer checks the
    copy chunk by chunk."""

    def __init__(self, handle: IO[bytes], chunk: int = DEFAULT_CHUNK) -> None:
        self.handle, self.digest = handle, StreamDigest(chunk)

    def write(self, data: bytes | memoryview) -> int:
        """Hash (whole and by slice), count and write."""
        self.digest.update(data)
        return self.handle.write(data)

    def written(self, target: Path) -> Written:
        """What was written to `target`: size, sha256 and (above one chunk) chunk digests."""
        return Written(target, self.digest.size, self.digest.hexdigest(), self.digest.chunks())

    def flush(self) -> None:
        """Flush the file."""
        self.handle.flush()

    def io(self) -> IO[bytes]:
        """This writer where a binary file is expected (tarfile, gzip and zstandard only call
        write and flush)."""
        return cast(IO[bytes], self)


def _zstd_writer(raw: IO[bytes]) -> IO[bytes]:
    import zstandard  # only builds that compress image archives need it

    # Level 3: layers are already compressed, so higher levels buy nothing but memory (level 10
    # took the builder past 100 MiB in bench/images_vs_skopeo.py). Its window stays far below
    # k3s's 2^25 decoder limit; the explicit cap documents that limit.
    params = zstandard.ZstdCompressionParameters.from_level(3)
    if params.window_log > ZSTD_WINDOW_LOG:
        params = zstandard.ZstdCompressionParameters.from_level(3, window_log=ZSTD_WINDOW_LOG)
    writer: IO[bytes] = zstandard.ZstdCompressor(compression_params=params).stream_writer(
        raw, closefd=False
    )
    return writer
