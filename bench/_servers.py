"""The benchmarks' HTTP server: a stand-in k3s release and OCI registry behind one shared link.

Not a benchmark itself (`make bench` skips bench/_*.py). Standard library only; runs as its own
process so its threads never compete with the harness or the builder for a GIL::

    python bench/_servers.py --dir ROOT [--rate BITS_PER_SECOND] [--print-url]

prints ``{"base_url": "http://127.0.0.1:PORT"}`` as one JSON line and serves until SIGTERM.
Routes (ROOT is what bench/_common.py's write_release writes):

* ``GET|HEAD /download/<tag>/<file>``: ``ROOT/download/<tag>/<file>`` (tests/release_server.py's
  layout and Range handling, which this reuses), single ``Range: bytes=`` requests answered 206.
* ``GET /v2/``: 200 (no auth). ``GET|HEAD /v2/<repo>/manifests/<tag|digest>`` and
  ``/v2/<repo>/blobs/sha256:<hex>`` from ``ROOT/registry/{tags,blobs}`` (read-only, no push).
* ``GET /_rate/<bits per second>``: set the shared limit at run time (0: unlimited).

The limit is ONE token bucket for every connection together (a link, not a per-connection cap):
bodies are sent in 128 KiB slices, each taking its bytes from the bucket first (burst: 1/100 s
of the rate, at least one slice). Only body bytes count; headers and TCP overhead do not, so a
"1 Gbit/s" link here moves 125,000,000 body bytes a second.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO, List, Optional, Sequence, Tuple, cast
from urllib.parse import unquote, urlsplit

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.release_server import parse_range  # noqa: E402

SLICE = 128 * 1024
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class TokenBucket:
    """A rate shared by every connection: take(n) blocks until n bytes may go out."""

    def __init__(self, bits_per_second: int = 0) -> None:
        self._lock = threading.Lock()
        self.set(bits_per_second)

    def set(self, bits_per_second: int) -> None:
        """A new rate (0: unlimited); the bucket starts full."""
        with self._lock:
            self.rate = bits_per_second / 8.0
            self.burst = max(float(SLICE), self.rate / 100)
            self.tokens = self.burst
            self.stamp = time.monotonic()

    def take(self, count: int) -> None:
        """Take `count` bytes, sleeping while the bucket is in debt (callers queue by debt)."""
        with self._lock:
            if self.rate <= 0:
                return
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            self.tokens -= count
            wait = -self.tokens / self.rate if self.tokens < 0 else 0.0
        if wait > 0:
            time.sleep(wait)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, root: Path, bucket: TokenBucket) -> None:
        self.root, self.bucket = root, bucket
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up (a builder's retry, a cancelled curl) is not news."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "k3bundle-bench-server"
    sys_version = ""
    timeout = 120

    @property
    def owner(self) -> _Server:
        return cast(_Server, self.server)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._route(head=False)

    def do_HEAD(self) -> None:
        self._route(head=True)

    def _route(self, head: bool) -> None:
        parts = [unquote(s) for s in urlsplit(self.path).path.split("/") if s]
        if any(p in (".", "..") or "/" in p or "\0" in p for p in parts):
            self._simple(head, 400, b"bad path\n")
        elif len(parts) == 2 and parts[0] == "_rate" and parts[1].isdigit():
            self.owner.bucket.set(int(parts[1]))
            self._simple(head, 200, b"ok\n")
        elif len(parts) == 3 and parts[0] == "download":
            self._file(head, self.owner.root / "download" / parts[1] / parts[2])
        elif parts == ["v2"]:
            self._simple(head, 200, b"{}", "application/json")
        elif len(parts) >= 4 and parts[0] == "v2" and parts[-2] in ("manifests", "blobs"):
            self._registry(head, "/".join(parts[1:-2]), parts[-2], parts[-1])
        else:
            self._simple(head, 404, b"Not Found\n")

    def _registry(self, head: bool, repo: str, what: str, reference: str) -> None:
        registry = self.owner.root / "registry"
        digest = reference
        if what == "manifests" and not reference.startswith("sha256:"):
            tag = registry / "tags" / repo / reference
            digest = tag.read_text(encoding="ascii").strip() if tag.is_file() else ""
        hexdigest = digest[len("sha256:") :] if digest.startswith("sha256:") else ""
        blob = registry / "blobs" / hexdigest
        if not hexdigest.isalnum() or not blob.is_file():
            self._simple(head, 404, b'{"errors":[{"code":"NOT_FOUND"}]}', "application/json")
            return
        ctype = OCI_MANIFEST if what == "manifests" else "application/octet-stream"
        self._file(head, blob, ctype, [("Docker-Content-Digest", digest)])

    def _simple(self, head: bool, status: int, body: bytes, ctype: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _file(
        self,
        head: bool,
        path: Path,
        ctype: str = "application/octet-stream",
        extra: Sequence[Tuple[str, str]] = (),
    ) -> None:
        if not path.is_file():
            self._simple(head, 404, b"Not Found\n")
            return
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            parsed = parse_range(self.headers.get("Range"), size)
            if parsed == "unsatisfiable":
                self._simple(head, 416, b"Range Not Satisfiable\n")
                return
            first, last = parsed if isinstance(parsed, tuple) else (0, size - 1)
            self.send_response(206 if isinstance(parsed, tuple) else 200)
            self.send_header("Content-Type", ctype)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(last - first + 1))
            if isinstance(parsed, tuple):
                self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
            for key, value in extra:
                self.send_header(key, value)
            self.end_headers()
            if not head:
                self._send(handle, first, last - first + 1)

    def _send(self, handle: BinaryIO, offset: int, count: int) -> None:
        self.wfile.flush()
        bucket = self.owner.bucket
        while count > 0:
            step = count if bucket.rate <= 0 else min(SLICE, count)
            bucket.take(step)
            sent = self.connection.sendfile(handle, offset, step)
            if not sent:
                raise OSError("the client went away")
            offset += sent
            count -= sent


def main(argv: Optional[List[str]] = None) -> int:
    """Serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dir", required=True, type=Path, help="what write_release wrote")
    parser.add_argument("--rate", type=int, default=0, help="bits per second, all connections")
    parser.add_argument("--print-url", action="store_true", help="print the URL as JSON")
    args = parser.parse_args(argv)
    server = _Server(args.dir, TokenBucket(args.rate))
    stop = threading.Event()

    def on_signal(signum: int, frame: Optional[FrameType]) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    if args.print_url:
        print(json.dumps({"base_url": url}), flush=True)
    stop.wait()
    server.shutdown()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
