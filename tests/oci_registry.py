"""Real OCI registries and test images on 127.0.0.1, for every test that talks to a registry.

Helpers (no pytest needed):

* :class:`LocalRegistry` runs Debian's ``docker-registry`` (CNCF distribution 2.8) on a free port:
  open, with htpasswd (HTTP Basic) auth, or with bearer tokens from :class:`TokenServer`.
* :func:`build_image` makes per-architecture images with ``umoci`` in an OCI layout, plus an OCI
  index for several architectures; :func:`push` copies one to a registry with ``skopeo``.
* :func:`build_test_images` and :func:`push_test_images` make the standard set every registry test
  needs: an OCI index, a Docker manifest list, single-platform images (OCI without ``mediaType``,
  Docker v2s2) and two images that share a base layer.

Fixtures for conftest files to import (``from tests.oci_registry import registry  # noqa: F401``):
``registry``, ``basic_registry``, ``token_registry``, ``tls_registry`` (https, a test CA),
``image_layout`` (session), ``pushed_images`` (session, pushed to ``registry``) and
``docker_home`` (function: HOME in tmp).

In CI a plain registry may already run (``K3B_TEST_REGISTRY=127.0.0.1:5000``, and optionally
``K3B_TEST_REGISTRY_STORAGE`` naming its data folder); the open case reuses it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Type
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

Credentials = Tuple[str, str]
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
USER, PASSWORD = "k3b", "s3cret"
SERVICE, ISSUER = "k3b-registry", "k3b-issuer"
_VARIANTS = {"arm": "v7"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """A Docker-style token endpoint: RS256 JWTs with an x5c header, one per requested scope set.

    With ``credentials`` a request carrying other Basic credentials gets 401; a request with none
    gets an anonymous token that grants nothing (as Docker Hub does for private repositories).
    ``issued`` records (account, scopes) per request, so tests can see per-scope tokens.
    """

    def __init__(self, folder: Path, credentials: Optional[Credentials] = None) -> None:
        self.credentials = credentials
        self.issued: List[Tuple[Optional[str], Tuple[str, ...]]] = []
        self.refresh_tokens: Dict[str, str] = {}  # identity token -> account (OAuth2 POST)
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.cert = self._self_signed()
        self.cert_path = folder / "token-cert.pem"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self._httpd: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    def _self_signed(self) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "k3b-token-issuer")])
        now = datetime.now(timezone.utc)
        builder = x509.CertificateBuilder().subject_name(name).issuer_name(name)
        builder = builder.public_key(self._key.public_key())
        builder = builder.serial_number(x509.random_serial_number())
        builder = builder.not_valid_before(now - timedelta(days=1))
        builder = builder.not_valid_after(now + timedelta(days=30))
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        return builder.sign(self._key, hashes.SHA256())

    @property
    def realm(self) -> str:
        """The URL the registry sends clients to."""
        assert self._httpd is not None, "token server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/token"

    def token(self, account: Optional[str], scopes: Sequence[str], service: str) -> str:
        """A signed JWT granting `scopes` (all of them for an account, nothing anonymously)."""
        now = int(time.time())
        access = [_access(scope) for scope in scopes] if account else []
        claims = {"iss": ISSUER, "sub": account or "", "aud": service, "exp": now + 300}
        claims.update({"nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex, "access": access})
        der = self.cert.public_bytes(serialization.Encoding.DER)
        header = {"alg": "RS256", "typ": "JWT", "x5c": [base64.b64encode(der).decode()]}
        signing_input = f"{_b64url(_json(header))}.{_b64url(_json(claims))}".encode()
        signature = self._key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input.decode()}.{_b64url(signature)}"

    def start(self) -> TokenServer:
        """Serve on a free port from a daemon thread."""
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _token_handler(self))
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _access(scope: str) -> Dict[str, Any]:
    kind, rest = scope.split(":", 1)
    name, actions = rest.rsplit(":", 1)
    return {"type": kind, "name": name, "actions": actions.split(",")}


def _token_handler(server: TokenServer) -> Type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = parse_qs(urlsplit(self.path).query)
            account = self._account()
            if account == "":
                self._answer(401, {"errors": [{"code": "UNAUTHORIZED"}]})
                return
            scopes = tuple(query.get("scope", []))
            server.issued.append((account, scopes))
            token = server.token(account, scopes, query.get("service", [SERVICE])[0])
            self._answer(200, {"token": token, "access_token": token, "expires_in": 300})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(length).decode())
            refresh = form.get("refresh_token", [""])[0]
            account = server.refresh_tokens.get(refresh)
            if form.get("grant_type") != ["refresh_token"] or account is None:
                self._answer(401, {"errors": [{"code": "UNAUTHORIZED"}]})
                return
            scopes = tuple(" ".join(form.get("scope", [])).split())
            server.issued.append((account, scopes))
            token = server.token(account, scopes, form.get("service", [SERVICE])[0])
            self._answer(200, {"access_token": token, "expires_in": 300})

        def _account(self) -> Optional[str]:
            """The account name, None when anonymous, "" when the credentials are wrong."""
            header = self.headers.get("Authorization", "")
            if not header.startswith("Basic "):
                return None
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            return user if server.credentials == (user, password) else ""

        def _answer(self, status: int, body: Mapping[str, Any]) -> None:
            data = _json(body)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


class LocalRegistry:
    """``docker-registry serve`` on 127.0.0.1, open, htpasswd-protected or token-protected.

    ``htpasswd=(user, password)`` alone: HTTP Basic. ``token=True``: bearer tokens from a
    :class:`TokenServer`, which then requires those credentials when ``htpasswd`` is given.
    ``root`` holds config, data and log (a temporary folder, removed on exit, when None).
    """

    def __init__(
        self,
        root: Optional[Path] = None,
        *,
        htpasswd: Optional[Credentials] = None,
        token: bool = False,
        reuse: bool = True,
        tls: Optional[TlsFiles] = None,
    ) -> None:
        self.credentials = htpasswd
        self.tls = tls
        self.token_server: Optional[TokenServer] = None
        self._token, self._reuse = token, reuse
        self._tmp_root = None if root else tempfile.mkdtemp(prefix="k3b-reg-")
        self.root = root or Path(str(self._tmp_root))
        self.host = ""
        self._storage: Optional[Path] = None
        self._process: Optional[subprocess.Popen[bytes]] = None

    @property
    def storage(self) -> Path:
        """The data folder (blobs under docker/registry/v2/blobs/sha256/xx/<hex>/data)."""
        if self._storage is None:
            raise RuntimeError(f"the storage of the shared registry {self.host} is unknown")
        return self._storage

    @property
    def url(self) -> str:
        """http://HOST, or https://HOST when serving TLS."""
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def blob_path(self, digest: str) -> Path:
        """Where the registry keeps the blob `digest` ("sha256:<hex>")."""
        hexdigest = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"

    def start(self) -> LocalRegistry:
        """Start (or adopt the CI registry), and wait until /v2/ answers."""
        shared = os.environ.get("K3B_TEST_REGISTRY")
        if shared and self._reuse and not (self.credentials or self._token or self.tls):
            self.host = shared
            storage = os.environ.get("K3B_TEST_REGISTRY_STORAGE")
            self._storage = Path(storage) if storage else None
            self._wait(10.0)
            return self
        self.root.mkdir(parents=True, exist_ok=True)
        self._storage = self.root / "data"
        self.host = f"127.0.0.1:{free_port()}"
        config = self.root / "config.yml"
        config.write_text(json.dumps(self._config()))  # YAML is a superset of JSON
        log = open(self.root / "registry.log", "wb")  # noqa: SIM115 - the child keeps it
        with log:
            self._process = subprocess.Popen(
                ["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
            )
        self._wait(15.0)
        return self

    def _config(self) -> Dict[str, Any]:
        config: Dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self._storage)}},
            "http": {"addr": self.host, "secret": "k3b-test-secret"},
        }
        if self.tls:
            config["http"]["tls"] = {"certificate": str(self.tls.cert), "key": str(self.tls.key)}
        if self._token:
            self.token_server = TokenServer(self.root, self.credentials).start()
            config["auth"] = {
                "token": {
                    "realm": self.token_server.realm,
                    "service": SERVICE,
                    "issuer": ISSUER,
                    "rootcertbundle": str(self.token_server.cert_path),
                }
            }
        elif self.credentials:
            user, password = self.credentials
            line = subprocess.run(
                ["htpasswd", "-Bbn", user, password], check=True, capture_output=True
            ).stdout
            path = self.root / "htpasswd"
            path.write_bytes(line.strip() + b"\n")
            config["auth"] = {"htpasswd": {"realm": "k3b-test", "path": str(path)}}
        return config

    def _wait(self, limit: float) -> None:
        deadline = time.monotonic() + limit
        while True:
            try:
                context = ssl.create_default_context(cafile=str(self.tls.ca)) if self.tls else None
                with urllib.request.urlopen(f"{self.url}/v2/", timeout=1, context=context):
                    return
            except urllib.error.HTTPError as exc:
                if exc.code == 401:
                    return
            except OSError:
                pass
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {self._log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"registry {self.host} did not answer /v2/: {self._log()}")
            time.sleep(0.05)

    def _log(self) -> str:
        path = self.root / "registry.log"
        return path.read_text(errors="replace")[-2000:] if path.is_file() else ""

    def stop(self) -> None:
        """Stop the registry process (by its pid) and the token server; remove a temp root."""
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
            self._process = None
        if self.token_server is not None:
            self.token_server.stop()
        if self._tmp_root:
            shutil.rmtree(self._tmp_root, ignore_errors=True)

    def __enter__(self) -> LocalRegistry:
        return self.start()

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.stop()


@dataclass(frozen=True)
class TlsFiles:
    """A test CA and a server certificate for 127.0.0.1 and localhost that it signed."""

    ca: Path
    cert: Path
    key: Path


def make_test_ca(folder: Path) -> TlsFiles:
    """Make a CA and a server certificate (SAN IP:127.0.0.1, DNS:localhost) with openssl."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = folder / "ca.pem", folder / "ca.key"
    cert, key, csr = folder / "server.pem", folder / "server.key", folder / "server.csr"
    ext = folder / "server.ext"
    ext.write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
    )
    new_key = ["-newkey", "rsa:2048", "-nodes", "-days", "3"]
    _openssl("req", "-x509", *new_key, "-keyout", ca_key, "-out", ca, "-subj", "/CN=k3b test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
             "-subj", "/CN=127.0.0.1")  # fmt: skip
    _openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
             "-out", cert, "-days", "3", "-extfile", ext)  # fmt: skip
    return TlsFiles(ca, cert, key)


def _openssl(*args: Any) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def write_credential_helper(
    folder: Path, name: str, answers: Mapping[str, Credentials], sleep: float = 0
) -> Path:
    """Write folder/docker-credential-NAME: `get` answers per server URL read on stdin (else
    "credentials not found", exit 1), and appends each server URL it was asked for to
    folder/NAME.log. Put `folder` on PATH."""
    cases = "".join(
        f"  {shlex.quote(server)}) printf '%s' "
        f"{shlex.quote(json.dumps({'ServerURL': server, 'Username': u, 'Secret': p}))} ;;\n"
        for server, (u, p) in answers.items()
    )
    log = shlex.quote(str(folder / f"{name}.log"))
    script = folder / f"docker-credential-{name}"
    script.write_text(
        "#!/bin/sh\n"
        '[ "$1" = get ] || exit 2\n'
        "read -r server\n"
        f'echo "$server" >> {log}\n'
        + (f"exec sleep {sleep}\n" if sleep else "")
        + 'case "$server" in\n'
        f"{cases}"
        "  *) echo 'credentials not found in native keychain'; exit 1 ;;\n"
        "esac\n"
    )
    script.chmod(0o755)
    return script


def corrupt_blob(registry: LocalRegistry, digest: str) -> bytes:
    """Flip one byte of a stored blob (same size, wrong digest); return the original bytes."""
    path = registry.blob_path(digest)
    original = path.read_bytes()
    path.write_bytes(bytes([original[0] ^ 0xFF]) + original[1:])
    return original


# --- images -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    """An image in an OCI layout: `ref` names the index (several arches) or the one manifest."""

    layout: Path
    ref: str
    platforms: Dict[str, str] = field(default_factory=dict)  # arch -> ref of its manifest

    def descriptor(self, ref: Optional[str] = None) -> Dict[str, Any]:
        """The layout's index.json descriptor of `ref` (default: this image's top level)."""
        return _find_ref(self.layout, ref or self.ref)

    def blob(self, digest: str) -> bytes:
        """The bytes of a blob in the layout."""
        return (self.layout / "blobs/sha256" / digest.split(":", 1)[1]).read_bytes()

    def manifest(self, arch: Optional[str] = None) -> Dict[str, Any]:
        """The parsed manifest (or index, without `arch`) as stored in the layout."""
        ref = self.platforms[arch] if arch else self.ref
        parsed: Dict[str, Any] = json.loads(self.blob(self.descriptor(ref)["digest"]))
        return parsed


def _umoci(*args: str) -> None:
    rootless = ["--rootless"] if hasattr(os, "geteuid") and os.geteuid() != 0 else []
    command = ["umoci", *args[:1], *(rootless if args[0] in ("insert", "new") else []), *args[1:]]
    subprocess.run(command, check=True, capture_output=True)


def _find_ref(layout: Path, ref: str) -> Dict[str, Any]:
    index = json.loads((layout / "index.json").read_text())
    for descriptor in index["manifests"]:
        if descriptor.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref:
            found: Dict[str, Any] = descriptor
            return found
    raise KeyError(f"no ref {ref} in {layout}")


def build_image(
    layout: Path,
    name: str,
    arches: Sequence[str],
    files: Optional[Mapping[str, bytes]] = None,
    base: Optional[Image] = None,
) -> Image:
    """Build `name` for each arch with umoci: one layer of `files` plus a per-arch marker file.

    With `base`, each arch starts from base's manifest for that arch, so the images share the
    base's layers (same blobs). Several arches also get an OCI index tagged `name`.
    """
    if not (layout / "index.json").exists():
        _umoci("init", "--layout", str(layout))
    contents = dict(files) if files is not None else {"hello.txt": f"hello from {name}\n".encode()}
    platforms = {}
    for arch in arches:
        ref = f"{name}-{arch}" if len(arches) > 1 else name
        if base is not None:
            _umoci("tag", "--image", f"{layout}:{base.platforms[arch]}", ref)
        else:
            _umoci("new", "--image", f"{layout}:{ref}")
        _umoci("config", "--image", f"{layout}:{ref}", "--os", "linux", "--architecture", arch)
        layer = {**contents, f"k3b-{name}-arch.txt": arch.encode()}
        _insert(layout, ref, layer)
        platforms[arch] = ref
    if len(arches) > 1:
        write_index(layout, name, platforms)
    return Image(layout, name, platforms)


def _insert(layout: Path, ref: str, files: Mapping[str, bytes]) -> None:
    with tempfile.TemporaryDirectory(prefix="k3b-layer-") as folder:
        for path, data in files.items():
            target = Path(folder, path.lstrip("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        _umoci("insert", "--image", f"{layout}:{ref}", folder, "/")


def write_blob(layout: Path, data: bytes) -> str:
    """Store `data` as a blob in the layout; return its digest."""
    hexdigest = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256" / hexdigest).write_bytes(data)
    return f"sha256:{hexdigest}"


def write_index(layout: Path, name: str, platforms: Mapping[str, str]) -> Dict[str, Any]:
    """Write an OCI index over the arch manifests (arch -> ref) and tag it `name` in the layout."""
    manifests = []
    for arch, ref in platforms.items():
        found = _find_ref(layout, ref)
        platform = {"architecture": arch, "os": "linux"}
        if arch in _VARIANTS:
            platform["variant"] = _VARIANTS[arch]
        manifests.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": found["digest"],
                "size": found["size"],
                "platform": platform,
            }
        )
    data = _json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})
    descriptor = {"mediaType": OCI_INDEX, "digest": write_blob(layout, data), "size": len(data)}
    descriptor["annotations"] = {"org.opencontainers.image.ref.name": name}
    path = layout / "index.json"
    index = json.loads(path.read_text())
    kept = [d for d in index["manifests"] if d.get("annotations") != descriptor["annotations"]]
    index["manifests"] = [*kept, descriptor]
    path.write_text(json.dumps(index))
    return descriptor


def push(
    layout: Path,
    ref_in_layout: str,
    registry_host: str,
    repo_tag: str,
    format: str = "oci",
    all: bool = True,
    credentials: Optional[Credentials] = None,
) -> str:
    """`skopeo copy` oci:LAYOUT:REF to docker://HOST/REPO:TAG; return the pushed manifest digest.

    `format` is "oci" (kept as is) or "v2s2" (Docker manifest / manifest list).
    """
    with tempfile.TemporaryDirectory(prefix="k3b-skopeo-") as folder:
        digestfile = Path(folder, "digest")
        command = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false"]
        command += ["--all"] if all else []
        command += ["--format", "v2s2"] if format == "v2s2" else []
        command += ["--dest-creds", ":".join(credentials)] if credentials else []
        command += ["--digestfile", str(digestfile)]
        command += [f"oci:{layout}:{ref_in_layout}", f"docker://{registry_host}/{repo_tag}"]
        env = {**os.environ, "HOME": folder, "REGISTRY_AUTH_FILE": str(Path(folder, "auth.json"))}
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        if result.returncode:
            raise RuntimeError(f"{' '.join(command)} failed: {result.stderr}")
        return digestfile.read_text().strip()


def raw_manifest(
    registry_host: str, repo_ref: str, credentials: Optional[Credentials] = None
) -> bytes:
    """The manifest bytes as the registry serves them (`skopeo inspect --raw`), as an oracle."""
    command = ["skopeo", "inspect", "--raw", "--tls-verify=false"]
    command += ["--creds", ":".join(credentials)] if credentials else []
    with tempfile.TemporaryDirectory(prefix="k3b-skopeo-") as folder:
        env = {**os.environ, "HOME": folder, "REGISTRY_AUTH_FILE": str(Path(folder, "auth.json"))}
        command.append(f"docker://{registry_host}/{repo_ref}")
        return subprocess.run(command, check=True, capture_output=True, env=env).stdout


def put_manifest(
    registry_host: str,
    repository: str,
    reference: str,
    data: bytes,
    media_type: str,
    credentials: Optional[Credentials] = None,
) -> str:
    """PUT raw manifest bytes over plain HTTP (Basic or bearer auth); return the digest."""
    url = f"http://{registry_host}/v2/{repository}/manifests/{reference}"
    headers = {"Content-Type": media_type}
    response = requests.put(url, data=data, headers=headers, timeout=10)
    if response.status_code == 401:
        headers["Authorization"] = _authorization(response, credentials)
        response = requests.put(url, data=data, headers=headers, timeout=10)
    response.raise_for_status()
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _authorization(response: requests.Response, credentials: Optional[Credentials]) -> str:
    challenge = response.headers.get("Www-Authenticate", "")
    basic = base64.b64encode(":".join(credentials or ("", "")).encode()).decode()
    if challenge.startswith("Basic"):
        return f"Basic {basic}"
    params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))  # scope values contain commas
    query = {"service": params["service"], "scope": params.get("scope", "")}
    auth = {"Authorization": f"Basic {basic}"} if credentials else {}
    answer = requests.get(params["realm"], params=query, headers=auth, timeout=10)
    answer.raise_for_status()
    return f"Bearer {answer.json()['token']}"


@dataclass(frozen=True)
class ImageLayout:
    """The standard test images, built once in one OCI layout."""

    layout: Path
    multi: Image  # amd64 + arm64 + arm, OCI index
    single: Image  # amd64 only: a umoci manifest, which has no mediaType
    base: Image  # amd64 + arm64: the shared base
    app_a: Image  # base + one layer
    app_b: Image  # base + another layer


@dataclass(frozen=True)
class PushedImages:
    """Where :func:`push_test_images` put the standard images ("HOST/REPO:TAG")."""

    host: str
    layout: ImageLayout
    index: str  # OCI index over linux/amd64, linux/arm64, linux/arm/v7
    docker_list: str  # the same as a Docker manifest list (skopeo --format v2s2)
    single: str  # one OCI manifest without mediaType
    docker_single: str  # one Docker v2s2 manifest
    app_a: str  # OCI index; shares its base layer with app_b
    app_b: str
    digests: Dict[str, str]  # attribute name -> digest of the top-level manifest as pushed


def build_test_images(layout: Path) -> ImageLayout:
    """Build the standard images with umoci (about a second)."""
    multi = build_image(layout, "hello", ("amd64", "arm64", "arm"))
    single = build_image(layout, "single", ("amd64",), {"single.txt": b"one platform\n"})
    base = build_image(layout, "base", ("amd64", "arm64"), {"base.txt": b"shared base\n" * 100})
    app_a = build_image(layout, "app-a", ("amd64", "arm64"), {"a.txt": b"a\n"}, base=base)
    app_b = build_image(layout, "app-b", ("amd64", "arm64"), {"b.txt": b"b\n"}, base=base)
    return ImageLayout(layout, multi, single, base, app_a, app_b)


def push_test_images(
    images: ImageLayout, host: str, credentials: Optional[Credentials] = None, prefix: str = "test"
) -> PushedImages:
    """Push the standard images to `host` under `prefix`/ (repositories differ per image)."""
    plan = {
        "index": (images.multi.ref, f"{prefix}/hello:1.0", "oci"),
        "docker_list": (images.multi.ref, f"{prefix}/hello-docker:1.0", "v2s2"),
        "single": (images.single.ref, f"{prefix}/single:1.0", "oci"),
        "docker_single": (images.single.ref, f"{prefix}/single-docker:1.0", "v2s2"),
        "app_a": (images.app_a.ref, f"{prefix}/app-a:1.0", "oci"),
        "app_b": (images.app_b.ref, f"{prefix}/app-b:1.0", "oci"),
    }
    digests = {}
    for key, (ref, repo_tag, kind) in plan.items():
        digests[key] = push(images.layout, ref, host, repo_tag, kind, credentials=credentials)
    names = {key: f"{host}/{repo_tag}" for key, (_, repo_tag, _) in plan.items()}
    return PushedImages(host=host, layout=images, digests=digests, **names)


def write_docker_config(
    home: Path, auths: Mapping[str, Credentials], extra: Optional[Mapping[str, Any]] = None
) -> Path:
    """Write HOME/.docker/config.json with base64 "auth" entries (plus `extra` top-level keys)."""
    entries = {
        host: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
        for host, (user, password) in auths.items()
    }
    path = home / ".docker" / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"auths": entries, **(extra or {})}))
    return path


# --- pytest fixtures (import them into a conftest) ----------------------------------------------


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """An open registry for the session (the CI one when K3B_TEST_REGISTRY is set)."""
    with LocalRegistry(tmp_path_factory.mktemp("registry")) as running:
        yield running


@pytest.fixture(scope="session")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """A registry behind htpasswd (HTTP Basic) auth; credentials (USER, PASSWORD)."""
    with LocalRegistry(tmp_path_factory.mktemp("basic-registry"), htpasswd=(USER, PASSWORD)) as up:
        yield up


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """A registry behind bearer tokens; the token server wants (USER, PASSWORD)."""
    folder = tmp_path_factory.mktemp("token-registry")
    with LocalRegistry(folder, htpasswd=(USER, PASSWORD), token=True) as running:
        yield running


@pytest.fixture(scope="session")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """An open registry serving https with a certificate from a test CA (``.tls.ca``)."""
    folder = tmp_path_factory.mktemp("tls-registry")
    with LocalRegistry(folder, tls=make_test_ca(folder / "tls")) as running:
        yield running


@pytest.fixture(scope="session")
def image_layout(tmp_path_factory: pytest.TempPathFactory) -> ImageLayout:
    """The standard images, built once per session in an OCI layout."""
    return build_test_images(tmp_path_factory.mktemp("images") / "layout")


@pytest.fixture(scope="session")
def pushed_images(registry: LocalRegistry, image_layout: ImageLayout) -> PushedImages:
    """The standard images pushed to the open session registry."""
    return push_test_images(image_layout, registry.host, prefix=f"t{uuid.uuid4().hex[:8]}")


@pytest.fixture
def docker_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME (and nothing else) pointing at an empty tmp folder, so ~/.docker is the test's."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    return home


@contextlib.contextmanager
def running_registry(**options: Any) -> Iterator[LocalRegistry]:
    """A fresh registry of its own (never the shared one), e.g. for tests that corrupt blobs."""
    with LocalRegistry(reuse=False, **options) as running:
        yield running
