"""A real containerd for tests: started on a private socket, used through `ctr`, then stopped.

k3s imports the archives in agent/images with containerd's importer; these helpers import the
archives an install placed the same way (`ctr -n k8s.io images import --platform linux/ARCH`,
piping `.zst` through `zstd -dc` since ctr cannot decompress) and list what containerd holds.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional

CONFIG = """version = 2
root = "{root}/root"
state = "{root}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{root}/containerd.sock"
[ttrpc]
  address = "{root}/containerd.sock.ttrpc"
[debug]
  address = "{root}/debug.sock"
"""


def available() -> bool:
    """True when containerd, ctr and zstd are installed."""
    return all(shutil.which(tool) for tool in ("containerd", "ctr", "zstd"))


class Containerd:
    """One containerd process with its own root, state and socket under `folder`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.socket = folder / "containerd.sock"
        self._process: Optional[subprocess.Popen[bytes]] = None

    def __enter__(self) -> Containerd:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "config.toml"
        config.write_text(CONFIG.format(root=self.folder))
        log = open(self.folder / "containerd.log", "wb")
        self._process = subprocess.Popen(
            ["containerd", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        self._wait()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def _wait(self) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.ctr("version", check=False).returncode == 0:
                return
            time.sleep(0.2)
        log = (self.folder / "containerd.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"containerd did not start:\n{log}")

    def ctr(
        self, *args: str, check: bool = True, stdin: Optional[bytes] = None
    ) -> subprocess.CompletedProcess[bytes]:
        """Run `ctr -a SOCKET -n k8s.io ARGS`."""
        command = ["ctr", "-a", str(self.socket), "-n", "k8s.io", *args]
        done = subprocess.run(command, input=stdin, capture_output=True, check=False)
        if check and done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed: {done.stderr.decode(errors='replace')}"
            )
        return done

    def import_archive(self, archive: Path, arch: str) -> None:
        """Import an image archive as k3s would, for linux/`arch`."""
        platform = "linux/arm/v7" if arch == "arm" else f"linux/{arch}"
        args = ["images", "import", "--snapshotter", "native", "--platform", platform]
        if archive.name.endswith(".zst"):
            data = subprocess.run(["zstd", "-dc", str(archive)], capture_output=True, check=True)
            self.ctr(*args, "-", stdin=data.stdout)
        else:
            self.ctr(*args, str(archive))

    def images(self) -> Dict[str, str]:
        """{image name: manifest digest} of every image containerd holds."""
        listing = self.ctr("images", "ls").stdout.decode().splitlines()
        out: Dict[str, str] = {}
        for line in listing[1:]:
            fields: List[str] = line.split()
            if len(fields) >= 3:
                out[fields[0]] = fields[2]
        return out
