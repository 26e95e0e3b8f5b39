"""The bundle format (k3bundle/v1), shared by both halves: manifest, signature, parts, reading.

The installer reads bundles with it; the bundler writes them with it. The bundler imports the
format only through the names below (tests/test_layout.py checks), so what lies behind them can
change without the builder noticing.
"""

from k3bundle.installer.format.chunkhash import hash_chunks
from k3bundle.installer.format.copying import copy_range
from k3bundle.installer.format.hashing import O_BINARY, HashJob, HashPool, sha256_file
from k3bundle.installer.format.jsondoc import load_json
from k3bundle.installer.format.manifest import (
    ARCHES,
    KIND_AIRGAP_IMAGES,
    KIND_CHART,
    KIND_HELMCHART_MANIFEST,
    KIND_IMAGES,
    KIND_K3S_BINARY,
    KINDS,
    MANIFEST_NAME,
    SIGNATURE_NAME,
    Entry,
    Manifest,
    arch_from_machine,
    check_arch,
)
from k3bundle.installer.format.manifest import parse as parse_manifest
from k3bundle.installer.format.manifest_fields import DEFAULT_CHUNK, Chunks
from k3bundle.installer.format.parts import PARTS_FORMAT, PARTS_SUFFIX, parts_index_path
from k3bundle.installer.format.requires import (
    Requirement,
    Since,
    requirements,
    requires_json,
    since_of,
)
from k3bundle.installer.format.signature import Signature, key_id_of
from k3bundle.installer.format.slices import Holding
from k3bundle.installer.format.sources import BundleSource, Header

__all__ = [
    "ARCHES",
    "DEFAULT_CHUNK",
    "KINDS",
    "KIND_AIRGAP_IMAGES",
    "KIND_CHART",
    "KIND_HELMCHART_MANIFEST",
    "KIND_IMAGES",
    "KIND_K3S_BINARY",
    "MANIFEST_NAME",
    "O_BINARY",
    "PARTS_FORMAT",
    "PARTS_SUFFIX",
    "SIGNATURE_NAME",
    "BundleSource",
    "Chunks",
    "Entry",
    "HashJob",
    "HashPool",
    "Header",
    "Holding",
    "Manifest",
    "Requirement",
    "Signature",
    "Since",
    "arch_from_machine",
    "check_arch",
    "copy_range",
    "hash_chunks",
    "key_id_of",
    "load_json",
    "parse_manifest",
    "parts_index_path",
    "requirements",
    "requires_json",
    "sha256_file",
    "since_of",
]
