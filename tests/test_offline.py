"""The installer needs no network: install, upgrade, roll back and uninstall in a network namespace
with nothing in it (`unshare --net`: only a loopback interface, and that one down).

A control proves the namespace is really cut off: a server listening on the host's 127.0.0.1 is
reachable from outside and unreachable from inside. With strace present, every run is also traced
for socket/connect calls: the installer must not even try an internet (AF_INET/AF_INET6) socket, so
a network fallback that fails quietly cannot hide here.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from tests.helpers import KeyFiles, make_bundle, make_keys, snapshot

OLD_VERSION = "v1.31.4+k3s1"
NEW_VERSION = "v1.32.0+k3s1"
DEFAULTS = {"config": {"write-kubeconfig-mode": "0644"}}


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    done = subprocess.run(["unshare", "--net", "true"], capture_output=True, check=False)
    return done.returncode == 0


pytestmark = pytest.mark.skipif(
    not _unshare_works(),
    reason="`unshare --net true` fails here (needs root or user namespaces, and util-linux)",
)
HAS_STRACE = shutil.which("strace") is not None and (
    subprocess.run(
        ["strace", "-f", "-qq", "-o", "/dev/null", "true"], capture_output=True, check=False
    ).returncode
    == 0
)


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> KeyFiles:
    """The key both bundles are signed with."""
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory, signer: KeyFiles) -> Tuple[Path, Path]:
    """Signed bundles of an older and a newer k3s."""
    folder = tmp_path_factory.mktemp("bundles")
    old, new = (
        make_bundle(
            folder / version, ("amd64",), signer, install=DEFAULTS, image_size=4096,
            version=version, image_format=fmt,
        ).files[0]
        for version, fmt in ((OLD_VERSION, "tar.zst"), (NEW_VERSION, "tar.gz"))
    )  # fmt: skip
    return old, new


@pytest.fixture
def host_listener() -> Iterator[int]:
    """A TCP server on the host's 127.0.0.1; yields its port."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    try:
        yield int(server.getsockname()[1])
    finally:
        server.close()


def offline(*argv: str, trace: Path) -> subprocess.CompletedProcess[str]:
    """Run ARGV in a fresh network namespace (traced for socket calls when strace exists)."""
    traced = ["strace", "-f", "-qq", "-e", "trace=socket,connect", "-o", str(trace)]
    command = ["unshare", "--net", "--", *(traced if HAS_STRACE else []), *argv]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def k3bundle(*args: str, trace: Path) -> subprocess.CompletedProcess[str]:
    """`python -m k3bundle.installer ARGS`, offline; it must succeed and open no inet socket."""
    done = offline(sys.executable, "-m", "k3bundle.installer", *args, trace=trace)
    assert done.returncode == 0, done.stderr
    if HAS_STRACE:
        calls = trace.read_text()
        assert "AF_INET" not in calls, calls  # AF_INET and AF_INET6 alike
    return done


def status(root: Path, trace: Path) -> Dict[str, Any]:
    """`status --root ROOT --json`, offline."""
    summary: Dict[str, Any] = json.loads(
        k3bundle("status", "--root", str(root), "--json", trace=trace).stdout
    )
    return summary


NAMESPACE_PROBE = textwrap.dedent(
    """
    import fcntl, json, socket, struct
    names = [line.split(":")[0].strip() for line in open("/proc/net/dev").read().splitlines()[2:]]
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flags = struct.unpack("16sH", fcntl.ioctl(probe, 0x8913, struct.pack("16sH", b"lo", 0)))[1]
    print(json.dumps({"interfaces": names, "lo_up": bool(flags & 1)}))
    """
)
CONNECT = "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1)"


def test_the_namespace_really_has_no_network(host_listener: int, tmp_path: Path) -> None:
    outside = subprocess.run(
        [sys.executable, "-c", CONNECT, str(host_listener)], capture_output=True, check=False
    )
    assert outside.returncode == 0, outside.stderr  # the server is there ...
    trace = tmp_path / "trace"
    inside = offline(sys.executable, "-c", CONNECT, str(host_listener), trace=trace)
    assert inside.returncode != 0  # ... and cannot be reached from inside
    assert "Network is unreachable" in inside.stderr, inside.stderr
    if HAS_STRACE:  # the trace that k3bundle() checks does see such an attempt
        assert "AF_INET" in trace.read_text()
    probe = subprocess.run(
        ["unshare", "--net", "--", sys.executable, "-c", NAMESPACE_PROBE],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(probe.stdout) == {"interfaces": ["lo"], "lo_up": False}


def test_install_upgrade_rollback_uninstall_offline(
    bundles: Tuple[Path, Path], signer: KeyFiles, tmp_path: Path
) -> None:
    old, new = bundles
    root, trace = tmp_path / "root", tmp_path / "trace"
    root.mkdir()
    trust = ["--root", str(root), "--pubkey", str(signer.public), "--arch", "amd64"]

    done = k3bundle("install", str(old), *trust, trace=trace)
    assert f"Installed k3s {OLD_VERSION}" in done.stdout
    first = status(root, trace)
    assert (first["k3s_version"], first["intact"], first["previous"]) == (OLD_VERSION, True, None)

    done = k3bundle("install", str(new), *trust, trace=trace)
    assert f"Installed k3s {NEW_VERSION}" in done.stdout
    second = status(root, trace)
    assert (second["k3s_version"], second["intact"]) == (NEW_VERSION, True)
    assert second["previous"] == {"k3s_version": OLD_VERSION}

    done = k3bundle("rollback", "--root", str(root), trace=trace)
    assert f"Rolled back: k3s {NEW_VERSION} -> {OLD_VERSION}." in done.stdout
    third = status(root, trace)
    assert (third["k3s_version"], third["intact"]) == (OLD_VERSION, True)
    assert third["previous"] == {"k3s_version": NEW_VERSION}
    assert third["bundle_id"] == first["bundle_id"]

    done = k3bundle("uninstall", "--root", str(root), trace=trace)
    assert done.stdout.startswith("Uninstalled: removed ")
    assert status(root, trace) == {"installed": False, "root": str(root)}
    left: List[str] = [p for p, (_, kind) in snapshot(root).items() if kind != "dir"]
    assert left == []
