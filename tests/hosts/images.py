"""Small real image archives for the hosts' bundles: one umoci image as an OCI layout tar.

The archive has the shape k3bundle's builder writes (and k3s imports): `oci-layout`,
`index.json` whose one entry carries the full name in `io.containerd.image.name`, and the
manifest, config and layer blobs. It is plain, gzip or zstd compressed by its name.
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any, Dict, List

from tests.oci_registry import build_image


def image_archive(layout: Path, ref: str, name: str, arch: str, target: Path) -> Path:
    """Build image `ref` for `arch` in `layout` and write it to `target` named `name`."""
    image = build_image(layout, ref, (arch,), {f"{ref}.txt": f"{name}\n".encode()})
    descriptor = dict(image.descriptor())
    descriptor["platform"] = {"architecture": arch, "os": "linux"}
    tag = name.rsplit(":", 1)[1]
    descriptor["annotations"] = {
        "io.containerd.image.name": name,
        "org.opencontainers.image.ref.name": tag,
    }
    index = {"schemaVersion": 2, "manifests": [descriptor]}
    members: Dict[str, bytes] = {
        "oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
        "index.json": json.dumps(index).encode(),
    }
    for digest in _blobs(image.manifest(), descriptor["digest"]):
        members[f"blobs/sha256/{digest.split(':')[1]}"] = image.blob(digest)
    target.write_bytes(_compress(target.name, _tar(members)))
    return target


def _blobs(manifest: Dict[str, Any], manifest_digest: str) -> List[str]:
    layers = [layer["digest"] for layer in manifest["layers"]]
    return [manifest_digest, manifest["config"]["digest"], *layers]


def _tar(members: Dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, data in members.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _compress(file_name: str, data: bytes) -> bytes:
    if file_name.endswith((".tar.gz", ".tgz")):
        return gzip.compress(data, mtime=0)
    if file_name.endswith((".tar.zst", ".tzst")):
        return subprocess.run(
            ["zstd", "-q", "-c"], input=data, capture_output=True, check=True
        ).stdout
    return data
