"""One build's settings and the things every payload producer shares: the cache, the fetcher
(with its events, byte tally and Ctrl-C), the registry clients, progress, warnings, the work
folder and the signer. `build` makes one BuildContext and hands it to each producer."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Tuple

from k3bundle.bundler.cache import Cache
from k3bundle.bundler.keys import Signer
from k3bundle.bundler.net.fetch import Fetcher, FetchSettings
from k3bundle.bundler.oci.credentials import Credentials
from k3bundle.bundler.oci.reference import Reference
from k3bundle.bundler.oci.registry import RegistryClient
from k3bundle.bundler.payloads.charts import ChartSpec
from k3bundle.bundler.payloads.produced import Produced
from k3bundle.bundler.payloads.release import DEFAULT_CHANNEL_URL, DEFAULT_RELEASE_URL
from k3bundle.installer.progress import Progress

Warn = Callable[[str], None]


@dataclass(frozen=True)
class RegistryOptions:
    """How to reach registries: plain-HTTP hosts, credentials, mirrors and per-host CA files."""

    insecure: Tuple[str, ...] = ()
    auth: Mapping[str, Credentials] = field(default_factory=dict)
    mirrors: Mapping[str, str] = field(default_factory=dict)  # source host -> HOST[/PATH]
    ca_files: Mapping[str, str] = field(default_factory=dict)


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
    release_url: str = DEFAULT_RELEASE_URL
    channel_url: str = DEFAULT_CHANNEL_URL
    fetch: FetchSettings = field(default_factory=FetchSettings)
    install: Mapping[str, Any] = field(default_factory=dict)
    name: Optional[str] = None
    images: Tuple[str, ...] = ()
    charts: Tuple[ChartSpec, ...] = ()
    chart_images: str = "auto"  # auto: also bundle the images the charts deploy; off: do not
    registries: RegistryOptions = field(default_factory=RegistryOptions)
    force: bool = False  # write everything again even when DIR already holds this build
    since: Optional[Path] = None  # --since PREVIOUS: leave out the images it delivered


@dataclass(frozen=True)
class BuildContext:
    """One build's shared state, handed to every producer instead of long parameter lists."""

    settings: BuildSettings
    cache: Cache
    fetcher: Fetcher
    work: Path  # a private folder for files the build writes (image archives, manifests)
    progress: Progress = field(default_factory=Progress)
    warn: Warn = lambda message: None
    signer: Optional[Signer] = None
    images: Tuple[Reference, ...] = ()  # the extra images, parsed and checked before any fetch
    version: str = ""  # the k3s release, once resolved

    def registry_client(self) -> RegistryClient:
        """A registry client sharing the fetcher's events, byte tally and Ctrl-C."""
        return registry_client(self.settings.registries, self.fetcher)


def registry_client(registries: RegistryOptions, fetcher: Fetcher) -> RegistryClient:
    """A client for `registries` sharing `fetcher`'s settings, events, byte tally and Ctrl-C."""
    return RegistryClient(
        fetcher.settings,
        insecure=registries.insecure,
        auth=registries.auth,
        mirrors=registries.mirrors,
        ca_files=registries.ca_files,
        events=fetcher.events,  # image and chart bytes are shown and counted as files are
        tally=fetcher.tally,
        cancel=fetcher.cancel,
    )


# A producer: the context and what the producers before it made → its own entries and files.
Producer = Callable[[BuildContext, Produced], Produced]
