#!/usr/bin/python3
"""k3bundle test stand-in for k3s, not k3s: behaves like k3s where the installer depends on it.

Copied into test bundles as the k3s binary and run by systemd inside the test containers. It
reads config.yaml and its config.yaml.d drop-ins as k3s does, refuses what k3s refuses (a
non-boolean value for a boolean flag, an agent without token or server), imports every archive in
DATA_DIR/agent/images into a containerd of its own (as k3s runs its own), writes the kubeconfig
(server), tells systemd READY=1 and runs until SIGTERM. It never opens a network socket.
"""

from __future__ import annotations

import ctypes
import gzip
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any, Dict, List, Optional, Sequence

VERSION = "v1.31.4+k3s1"  # the bundle helper rewrites this line per bundle version
BANNER = "k3bundle test stand-in for k3s, not k3s"
CONFIG_FILE = "/etc/rancher/k3s/config.yaml"
KUBECONFIG = "/etc/rancher/k3s/k3s.yaml"
DATA_DIR = "/var/lib/rancher/k3s"
SOCKET = "/run/k3s/containerd/containerd.sock"
REAL_CTR = "/usr/bin/ctr"
IMAGE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.zst", ".tzst")
# k3s's boolean flags (a subset); urfave/cli parses their values with Go's strconv.ParseBool.
BOOL_FLAGS = frozenset((
    "selinux", "cluster-init", "cluster-reset", "disable-network-policy",
    "disable-helm-controller", "disable-cloud-controller", "disable-kube-proxy",
    "secrets-encryption", "embedded-registry", "protect-kernel-defaults", "rootless",
    "prefer-bundled-bin", "debug", "disable-default-registry-endpoint", "disable-apiserver",
    "disable-scheduler", "disable-controller-manager", "disable-etcd",
))  # fmt: skip
PARSE_BOOL = frozenset(
    ("1", "t", "T", "TRUE", "true", "True", "0", "f", "F", "FALSE", "false", "False")
)
ENV_FLAGS = {
    "K3S_TOKEN": "token",
    "K3S_TOKEN_FILE": "token-file",
    "K3S_URL": "server",
    "K3S_NODE_NAME": "node-name",
    "K3S_KUBECONFIG_MODE": "write-kubeconfig-mode",
    "K3S_DATA_DIR": "data-dir",
}
CONTAINERD_CONFIG = """version = 2
root = "{data}/agent/containerd"
state = "/run/k3s/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[debug]
  address = "/run/k3s/containerd/debug.sock"
"""


class Refused(Exception):
    """What k3s would refuse to start with; the message is k3s-like."""


def log(message: str) -> None:
    """One line to stderr (the journal), always labelled as the stand-in."""
    print(f"[{BANNER}] {message}", file=sys.stderr, flush=True)


# --- configuration -----------------------------------------------------------------------------


def config_files(path: str) -> List[Path]:
    """config.yaml, then its drop-ins (*.yaml, *.yml) in lexical order, as k3s reads them."""
    found = [Path(path)] if Path(path).is_file() else []
    drop_ins = Path(path + ".d")
    if drop_ins.is_dir():
        names = sorted(p for p in drop_ins.iterdir() if p.suffix in (".yaml", ".yml"))
        found.extend(p for p in names if p.is_file())
    return found


def merge(values: Dict[str, Any], doc: Dict[str, Any]) -> Dict[str, Any]:
    """Merge one file over earlier ones: a plain key replaces, `key+` appends."""
    for key, value in doc.items():
        if str(key).endswith("+"):
            name = str(key)[:-1]
            values[name] = _as_list(values.get(name)) + _as_list(value)
        else:
            values[str(key)] = value
    return values


def _as_list(value: Any) -> List[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def read_config(path: str) -> Dict[str, Any]:
    """The merged config of `path` and its drop-ins (YAML 1.1, as go-yaml v2 reads it)."""
    import yaml  # python3-yaml in the test hosts; a YAML 1.1 reader like k3s's go-yaml v2

    values: Dict[str, Any] = {}
    for file in config_files(path):
        doc = yaml.safe_load(file.read_text()) or {}
        if not isinstance(doc, dict):
            raise Refused(f"failed to parse {file}: not a mapping")
        merge(values, doc)
    return values


def parse_flags(args: Sequence[str]) -> Dict[str, Any]:
    """--key=value, --key value and bare boolean --key flags; repeated flags become lists."""
    flags: Dict[str, Any] = {}
    items = list(args)
    while items:
        arg = items.pop(0)
        if not arg.startswith("-"):
            raise Refused(f"unexpected argument {arg!r}")
        name, sep, value = arg.lstrip("-").partition("=")
        if not sep:
            takes_value = name not in BOOL_FLAGS and items and not items[0].startswith("-")
            value = items.pop(0) if takes_value else "true"
        flags[name] = [*_as_list(flags[name]), value] if name in flags else value
    return flags


def effective(args: Sequence[str], environ: Dict[str, str]) -> Dict[str, Any]:
    """Env vars, then the config files (k3s turns them into flags), then the command line."""
    flags = parse_flags(args)
    values = {ENV_FLAGS[k]: v for k, v in environ.items() if k in ENV_FLAGS}
    path = str(flags.get("config", environ.get("K3S_CONFIG_FILE", CONFIG_FILE)))
    merge(values, read_config(path))
    values.update(flags)  # a repeatable flag on the command line replaces the file's list
    check_booleans(values)
    return values


def check_booleans(values: Dict[str, Any]) -> None:
    """Refuse a boolean flag whose value strconv.ParseBool would not read."""
    for name in sorted(BOOL_FLAGS & set(values)):
        value = values[name]
        text = str(int(value)) if isinstance(value, bool) else str(value)
        if isinstance(value, (list, dict)) or text not in PARSE_BOOL:
            raise Refused(f'invalid value "{value}" for flag -{name}: parse error')


# --- images ------------------------------------------------------------------------------------


def image_archives(data_dir: str) -> List[Path]:
    """The regular files directly in agent/images that k3s would import, in name order."""
    folder = Path(data_dir, "agent", "images")
    if not folder.is_dir():
        return []
    found = [p for p in sorted(folder.iterdir()) if p.is_file() and not p.is_symlink()]
    return [p for p in found if p.name.lower().endswith(IMAGE_SUFFIXES)]


def start_containerd(data_dir: str) -> subprocess.Popen[bytes]:
    """Debian's containerd with a config under the data dir; it dies with this process."""
    config = Path(data_dir, "agent", "etc", "containerd", "config.toml")
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(CONTAINERD_CONFIG.format(data=data_dir, socket=SOCKET))
    logs = Path(data_dir, "agent", "containerd")
    logs.mkdir(parents=True, exist_ok=True)
    command = ["/usr/bin/containerd", "--config", str(config)]
    # containerd speaks sd_notify too; only the main process may report readiness.
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    with open(logs / "containerd.log", "ab") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=out, env=env, preexec_fn=_die_with_parent
        )
    _wait_for_containerd(process)
    return process


def _die_with_parent() -> None:
    # k3s starts containerd with Pdeathsig SIGKILL: containerd never outlives k3s.
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def _wait_for_containerd(process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        if ctr_run("version").returncode == 0:
            return
        time.sleep(0.2)
    raise Refused("containerd did not start; see agent/containerd/containerd.log")


def ctr_run(*args: str, stdin: Optional[IO[bytes]] = None) -> subprocess.CompletedProcess[bytes]:
    """`ctr -a SOCKET -n k8s.io ARGS` against the stand-in's containerd."""
    command = [REAL_CTR, "-a", SOCKET, "-n", "k8s.io", *args]
    return subprocess.run(command, stdin=stdin, capture_output=True, check=False)


def import_archive(archive: Path) -> None:
    """Import one archive as k3s does: decompressed by extension, all platforms."""
    args = ("images", "import", "--all-platforms", "--no-unpack", "-")
    name = archive.name.lower()
    if name.endswith((".tar.zst", ".tzst")):
        unzstd = subprocess.Popen(["zstd", "-dc", str(archive)], stdout=subprocess.PIPE)
        assert unzstd.stdout is not None
        done = ctr_run(*args, stdin=unzstd.stdout)
        unzstd.stdout.close()
        unzstd.wait()
    elif name.endswith((".tar.gz", ".tgz")):
        with gzip.open(archive) as plain:
            done = _import_stream(args, plain)
    else:
        with open(archive, "rb") as plain:
            done = ctr_run(*args, stdin=plain)
    if done.returncode != 0:
        raise Refused(done.stderr.decode(errors="replace").strip())


def _import_stream(
    args: Sequence[str], stream: io.BufferedIOBase
) -> subprocess.CompletedProcess[bytes]:
    command = [REAL_CTR, "-a", SOCKET, "-n", "k8s.io", *args]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdin is not None and process.stderr is not None
    shutil.copyfileobj(stream, process.stdin)
    process.stdin.close()
    err = process.stderr.read()
    return subprocess.CompletedProcess(command, process.wait(), b"", err)


def import_images(data_dir: str) -> List[str]:
    """Import every archive; a bad one is logged and skipped, as k3s does. Returns the names."""
    imported = []
    for archive in image_archives(data_dir):
        log(f"Importing images from {archive}")
        try:
            import_archive(archive)
        except Refused as exc:
            log(f"Error encountered while importing {archive}: {exc}")
            continue
        imported.append(archive.name)
        log(f"Imported images from {archive}")
    return imported


# --- running -----------------------------------------------------------------------------------


def write_kubeconfig(values: Dict[str, Any]) -> None:
    """A kubeconfig-shaped k3s.yaml, mode 0600 unless write-kubeconfig-mode says otherwise."""
    path = Path(str(values.get("write-kubeconfig", KUBECONFIG)))
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = int(str(values.get("write-kubeconfig-mode", "0600")), 8)
    text = (
        f"# {BANNER}\napiVersion: v1\nkind: Config\nclusters:\n- cluster:\n"
        "    server: https://127.0.0.1:6443\n  name: default\ncontexts:\n- context:\n"
        "    cluster: default\n    user: default\n  name: default\ncurrent-context: default\n"
        "users:\n- name: default\n  user:\n    token: stand-in\n"
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(path, mode)


def token_of(values: Dict[str, Any]) -> Optional[str]:
    """--token, or the content of --token-file."""
    if values.get("token"):
        return str(values["token"])
    if values.get("token-file"):
        return Path(str(values["token-file"])).read_text().strip()
    return None


def check_role(command: str, values: Dict[str, Any]) -> None:
    """An agent needs a server URL and a token; URLs must be https (k3s refuses others)."""
    url = values.get("server")
    if command == "agent" and not url:
        raise Refused("--server is required")
    if command == "agent" and not token_of(values):
        raise Refused("--token is required")
    if url and not str(url).startswith("https://"):
        raise Refused(f"server url {url!r} must start with https://")


def notify_ready() -> None:
    """sd_notify READY=1 over a plain AF_UNIX datagram socket (Type=notify)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket name
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"READY=1", address)


def write_state(data_dir: str, state: Dict[str, Any]) -> None:
    """What this run saw and did, for the tests: DATA_DIR/standin/state.json."""
    folder = Path(data_dir, "standin")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "state.json").write_text(json.dumps(state, indent=1, sort_keys=True, default=str))


def run(command: str, args: Sequence[str]) -> int:
    """`k3s server|agent ARGS`: check, import, get ready, then wait for SIGTERM."""
    log(f"{VERSION} starting {command} {' '.join(args)}")
    values = effective(args, dict(os.environ))
    check_role(command, values)
    data_dir = str(values.get("data-dir", DATA_DIR))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    containerd = start_containerd(data_dir)
    try:
        return serve(command, values, data_dir)
    finally:
        containerd.terminate()
        containerd.wait()
        log("stopped")


def serve(command: str, values: Dict[str, Any], data_dir: str) -> int:
    """Import the images, write what a node writes, report READY=1 and wait."""
    imported = import_images(data_dir)
    if command == "server":
        write_kubeconfig(values)
    if values.get("server"):
        log(f"joining {values['server']} (the stand-in never connects)")
    state = {"command": command, "version": VERSION, "config": values, "imported": imported}
    write_state(data_dir, {**state, "pid": os.getpid()})
    notify_ready()
    log("ready")
    while True:
        signal.pause()


# --- multi-call --------------------------------------------------------------------------------


def multicall(name: str, args: Sequence[str]) -> int:
    """kubectl, crictl and ctr, as k3s dispatches them on argv[0] or its first argument."""
    if name == "ctr":
        has_address = any(a in ("-a", "--address") or a.startswith("--address=") for a in args)
        address = [] if has_address else ["-a", SOCKET]
        os.execv(REAL_CTR, [REAL_CTR, *address, *args])
    if name == "crictl":
        return subprocess.run([REAL_CTR, "-a", SOCKET, "-n", "k8s.io", "images", "ls"]).returncode
    if not os.access(KUBECONFIG, os.R_OK):
        print(f"error: cannot read {KUBECONFIG} ({BANNER})", file=sys.stderr)
        return 1
    print(f"NAME STATUS ROLES\n{socket.gethostname()} Ready control-plane ({BANNER})")
    return 0


def main(argv: Sequence[str]) -> int:
    """Dispatch like k3s: argv[0] (multi-call), --version, server, agent."""
    name = os.path.basename(argv[0])
    args = list(argv[1:])
    if name in ("kubectl", "crictl", "ctr"):
        return multicall(name, args)
    if not args or args[0] in ("--version", "-v", "version"):
        print(f"k3s version {VERSION} ({BANNER})\ngo version none (python3)")
        return 0
    if args[0] in ("kubectl", "crictl", "ctr"):
        return multicall(args[0], args[1:])
    if args[0] not in ("server", "agent"):
        print(f"unknown command {args[0]!r} ({BANNER})", file=sys.stderr)
        return 1
    try:
        return run(args[0], args[1:])
    except Refused as exc:
        log(f"level=fatal msg={exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
