"""Shared test helpers: build small real bundles, run the CLI, snapshot folders."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from k3bundle.bundler import keys
from k3bundle.bundler.writer import BundleOutput, entry_for_file, write_bundle
from k3bundle.installer.format.manifest import Entry, Manifest

VERSION = "v1.31.4+k3s1"
BINARY_NAMES = {"amd64": "k3s", "arm64": "k3s-arm64", "arm": "k3s-armhf"}


@dataclass(frozen=True)
class KeyFiles:
    """A generated key pair on disk."""

    private: Path
    public: Path
    key_id: str


def make_keys(folder: Path, name: str = "signer") -> KeyFiles:
    """Generate an unencrypted Ed25519 key pair in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    pair = keys.generate(str(folder / name), None)
    return KeyFiles(pair.private, pair.public, pair.key_id)


def make_payload(
    folder: Path,
    arches: Sequence[str],
    image_size: int = 200_000,
    version: str = VERSION,
    image_format: str = "tar.zst",
) -> Dict[str, Tuple[Path, Entry]]:
    """Stand-in k3s binaries and airgap image tarballs per arch: member path → (file, entry).

    The binary names its `version` and other versions have other image bytes, so two versions
    differ in every file; `image_format` changes the image archive's name (as upstream's
    .tar.zst / .tar.gz / .tar do).
    """
    folder.mkdir(parents=True, exist_ok=True)
    out: Dict[str, Tuple[Path, Entry]] = {}
    for arch in arches:
        binary = folder / BINARY_NAMES[arch]
        binary.write_bytes(f"#!/bin/sh\necho 'stand-in k3s {version} {arch}'\n".encode())
        images = folder / f"k3s-airgap-images-{arch}.{image_format}"
        seed = arch if version == VERSION else f"{version}/{arch}"
        images.write_bytes(hashlib.sha256(seed.encode()).digest() * (image_size // 32))
        for local, kind, mode in ((binary, "k3s-binary", 0o755), (images, "airgap-images", 0o644)):
            path = f"{arch}/{local.name}"
            out[path] = (local, entry_for_file(local, path, kind, arch=arch, mode=mode))
    return out


def make_bundle(
    folder: Path,
    arches: Sequence[str] = ("amd64", "arm64"),
    signer: Optional[KeyFiles] = None,
    split: Optional[int] = None,
    install: Optional[Mapping[str, Any]] = None,
    name: str = "bundle.tar",
    image_size: int = 200_000,
    version: str = VERSION,
    image_format: str = "tar.zst",
) -> BundleOutput:
    """Write a real bundle of k3s `version` from stand-in files into `folder`."""
    payload = make_payload(folder / "payload", arches, image_size, version, image_format)
    manifest = Manifest(
        version, tuple(arches), tuple(e for _, e in payload.values()), install=dict(install or {})
    )
    sign = keys.load_signer(signer.private) if signer else None
    files = {path: local for path, (local, _) in payload.items()}
    return write_bundle(folder / name, manifest, files, sign, split)


def run_k3bundle(
    *args: str, env: Optional[Mapping[str, str]] = None
) -> subprocess.CompletedProcess[str]:
    """Run `k3bundle ARGS` in a subprocess, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "k3bundle.bundler", *args],
        capture_output=True,
        text=True,
        env=full_env,
        check=False,
    )


def snapshot(root: Path) -> Dict[str, Tuple[int, str]]:
    """Every path under `root` with mode and content hash (or link target): byte-for-byte state."""
    state: Dict[str, Tuple[int, str]] = {}
    if not root.exists():
        return state
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            info = path.lstat()
            if path.is_symlink():
                state[str(path.relative_to(root))] = (info.st_mode, "-> " + os.readlink(path))
            elif path.is_file():
                state[str(path.relative_to(root))] = (
                    info.st_mode,
                    hashlib.sha256(path.read_bytes()).hexdigest(),
                )
            else:
                state[str(path.relative_to(root))] = (info.st_mode, "dir")
    return state


@dataclass(frozen=True)
class CliResult:
    """What an in-process run of the installer's CLI returned and printed."""

    returncode: int
    stdout: str
    stderr: str


def run_installer(*args: str) -> CliResult:
    """Run the installer's `main(ARGS)` in this process (fast; never touches the real /).

    Only for --root runs: systemctl and purge's killall run for real when root is "/".
    """
    from k3bundle.installer.cli import main

    assert "--root" in args and "/" not in _roots(args), "run_installer needs --root DIR"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return CliResult(code, out.getvalue(), err.getvalue())


def _roots(args: Sequence[str]) -> List[str]:
    return [str(Path(args[i + 1]).resolve()) for i, a in enumerate(args[:-1]) if a == "--root"]


class Recorder:
    """A runner that records commands instead of running them."""

    def __init__(self) -> None:
        self.commands: List[List[str]] = []

    def __call__(self, command: Sequence[str]) -> None:
        """Record one command."""
        self.commands.append(list(command))


def install_amd64(bundle: Path, root: Path, signer: KeyFiles, *args: str) -> CliResult:
    """`install BUNDLE --root ROOT --pubkey PUB --arch amd64 ARGS`, in process."""
    return run_installer(
        "install", str(bundle), "--root", str(root), "--pubkey", str(signer.public),
        "--arch", "amd64", *args,
    )  # fmt: skip


def installed(bundle: Path, root: Path, signer: KeyFiles, *args: str) -> CliResult:
    """An install that must succeed."""
    result = install_amd64(bundle, root, signer, *args)
    assert result.returncode == 0, result.stderr
    return result


STANDIN = Path(__file__).parent / "hosts" / "standin_k3s.py"


def make_standin_payload(
    folder: Path, arch: str, version: str = VERSION, images: Sequence[Path] = ()
) -> Dict[str, Tuple[Path, Entry]]:
    """The python k3s stand-in (tests/hosts) as the k3s binary of `version`, plus real images.

    Like make_payload, but the binary runs: systemd starts it in the test hosts. `images` are
    image archives (OCI layout tars) placed as airgap images: member path → (file, entry).
    """
    folder.mkdir(parents=True, exist_ok=True)
    binary = folder / BINARY_NAMES[arch]
    text = STANDIN.read_text()
    pinned = re.sub(r'^VERSION = "[^"]*"', f'VERSION = "{version}"', text, count=1, flags=re.M)
    binary.write_text(pinned)
    out: Dict[str, Tuple[Path, Entry]] = {}
    items = [(binary, "k3s-binary", 0o755)] + [(i, "airgap-images", 0o644) for i in images]
    for local, kind, mode in items:
        path = f"{arch}/{local.name}"
        out[path] = (local, entry_for_file(local, path, kind, arch=arch, mode=mode))
    return out


def make_standin_bundle(
    folder: Path,
    arch: str,
    signer: KeyFiles,
    version: str = VERSION,
    images: Sequence[Path] = (),
    name: str = "bundle.tar",
) -> Path:
    """A signed one-arch bundle of `version` whose k3s is the stand-in; returns its path."""
    payload = make_standin_payload(folder / "payload", arch, version, images)
    manifest = Manifest(version, (arch,), tuple(e for _, e in payload.values()), install={})
    files = {path: local for path, (local, _) in payload.items()}
    output = write_bundle(folder / name, manifest, files, keys.load_signer(signer.private), None)
    return output.files[0]


def build_zipapp(folder: Path) -> Path:
    """k3bundle-install.pyz in `folder`, as `k3bundle installer-zipapp -o` writes it."""
    target = folder / "k3bundle-install.pyz"
    done = run_k3bundle("installer-zipapp", "-o", str(target))
    assert done.returncode == 0, done.stderr
    return target
