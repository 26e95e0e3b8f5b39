"""A real HTTP(S) server on 127.0.0.1 that answers exactly what a test scripts: a hostile registry,
token server, mirror or chart repository.

Routes map a path (without query) to an Answer; every request is recorded with its headers, so a
test can see what reached the server (an Authorization header that must never have).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Type, Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

Body = Union[bytes, Callable[[], Iterator[bytes]]]


@dataclass
class Answer:
    """One scripted response."""

    status: int = 200
    body: Body = b""
    headers: Dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    """One request as it arrived."""

    path: str
    headers: Dict[str, str]


def json_answer(doc: Any, media_type: str = "application/json", status: int = 200) -> Answer:
    """A JSON body with its Content-Type."""
    return Answer(status, json.dumps(doc).encode(), {"Content-Type": media_type})


def digest_of(data: bytes) -> str:
    """sha256:<hex> of `data`."""
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def self_signed(folder: Path) -> Tuple[Path, Path]:
    """(cert, key) PEM files for 127.0.0.1; point REQUESTS_CA_BUNDLE at the cert to trust it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "crafted-cert.pem", folder / "crafted-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up early (past a bound, a refused redirect) are the point


class CraftedServer:
    """Serves `routes` (path → Answer, or a callable taking the request headers) on 127.0.0.1."""

    def __init__(self, tls: Optional[Tuple[Path, Path]] = None) -> None:
        self.routes: Dict[str, Union[Answer, Callable[[Dict[str, str]], Answer]]] = {}
        self.seen: List[Seen] = []
        self._httpd = _QuietServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def host(self) -> str:
        """127.0.0.1:PORT."""
        return f"127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def url(self) -> str:
        """SCHEME://127.0.0.1:PORT."""
        return f"{self.scheme}://{self.host}"

    def answer(self, path: str, headers: Dict[str, str]) -> Answer:
        """The scripted answer for `path` (404 when none)."""
        self.seen.append(Seen(path, headers))
        route = self.routes.get(path)
        if route is None:
            return Answer(404, b"not scripted\n")
        return route(headers) if callable(route) else route

    def paths(self) -> List[str]:
        """Every path requested so far."""
        return [seen.path for seen in self.seen]

    def __enter__(self) -> CraftedServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: Optional[Type[BaseException]],
        value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


def _handler(server: CraftedServer) -> Type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            answer = server.answer(self.path.split("?", 1)[0], dict(self.headers.items()))
            self.send_response(answer.status)
            for key, value in answer.headers.items():
                self.send_header(key, value)
            if isinstance(answer.body, bytes):
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)
                return
            self.send_header("Connection", "close")  # no length: the body ends with the socket
            self.end_headers()
            self.close_connection = True
            try:
                for chunk in answer.body():
                    self.wfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                pass  # the client stopped reading, as it should past a bound

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
