"""The k3s systemd unit, its env file and the killall and uninstall scripts, rendered as text.

Everything here matches what upstream's install.sh writes (reference/k3s-facts.md §3) and does no
I/O: the destination writes the text, the tests read it back with systemd and the shell.
"""

from __future__ import annotations

import re
import shlex
from typing import Dict, Mapping, Sequence

RECORD_DIR = "/var/lib/k3bundle"

_SERVICE_NAMES = {"server": "k3s", "agent": "k3s-agent"}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_COPIED_PREFIX = re.compile(r"(K3S|CONTAINERD)_")
_PROXY_NAME = re.compile(r"(NO|HTTP|HTTPS)_PROXY\Z", re.IGNORECASE)
_LINE_BREAKS = ("\n", "\r", "\0")

_UNIT_HEAD = """\
[Unit]
Description=Lightweight Kubernetes
Documentation=https://k3s.io
Wants=network-online.target
After=network-online.target

[Install]
WantedBy=multi-user.target

[Service]
Type=notify
EnvironmentFile=-/etc/default/%N
EnvironmentFile=-/etc/sysconfig/%N
EnvironmentFile=-{env_file}
KillMode=process
Delegate=yes
User=root
# Having non-zero Limit*s causes performance problems due to accounting overhead
# in the kernel. We recommend using cgroups to do container-local accounting.
LimitNOFILE=1048576
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
TimeoutStartSec=0
Restart=always
RestartSec=5s
ExecStartPre=-/sbin/modprobe br_netfilter
ExecStartPre=-/sbin/modprobe overlay
"""

_BECOME_ROOT = '[ "$(id -u)" -eq 0 ] || exec sudo --preserve-env=K3S_DATA_DIR "$0" "$@"\n'

_KILLALL_BODY = r"""
# k3s unpacks its own containerd, iptables and friends below the data dir.
for bin in "$K3S_DATA_DIR"/data/*/bin/; do
    if [ -d "$bin" ]; then
        PATH=$PATH:$bin:${bin}aux
    fi
done
export PATH

# Prints the given pids and, recursively, those of all their descendants.
descendants() {
    for pid in "$@"; do
        echo "$pid"
        # shellcheck disable=SC2046 # one pid per word
        descendants $(ps -e -o ppid= -o pid= | awk -v parent="$pid" '$1 == parent { print $2 }')
    done
}

# Kills the given processes and every process below them.
killtree() {
    { set +x; } 2>/dev/null
    pids=$(descendants "$@")
    set -x
    if [ -n "$pids" ]; then
        # shellcheck disable=SC2086 # one pid per word
        kill -9 $pids 2>/dev/null
    fi
}

# Prints the pid of every containerd-shim started from the data dir's bin directories.
shims() {
    ps -e -o pid= -o args= | K3S_BIN_PREFIX="$K3S_DATA_DIR/data/" awk '
        { prefix = ENVIRON["K3S_BIN_PREFIX"]; rest = substr($2, length(prefix) + 1) }
        index($2, prefix) == 1 && rest ~ /^[^\/]+\/bin\/containerd-shim/ { print $1 }'
}

# Prints every mount point whose path starts with $1, deepest first.
mounts_with_prefix() {
    while read -r _ path _; do
        # /proc/self/mounts writes space, tab, newline and backslash as octal escapes.
        case "$path" in *\\*) path=$(printf '%b' "$path") ;; esac
        case "$path" in "$1"*) echo "$path" ;; esac
    done </proc/self/mounts | sort -r
}

# Unmounts and deletes every mount point whose path starts with $1.
unmount_and_remove() {
    mounts_with_prefix "$1" | while IFS= read -r path; do
        umount -f "$path" && rm -rf "$path"
    done
}

set -x

for service in /etc/systemd/system/k3s*.service; do
    if [ -s "$service" ]; then
        systemctl stop "${service##*/}"
    fi
done

for service in /etc/init.d/k3s*; do
    if [ -x "$service" ]; then
        "$service" stop
    fi
done

# shellcheck disable=SC2046 # one pid per word
killtree $(shims)

unmount_and_remove /run/k3s
unmount_and_remove /var/lib/kubelet/pods
unmount_and_remove /var/lib/kubelet/plugins
unmount_and_remove /run/netns/cni-

ip netns show 2>/dev/null | awk '/^cni-/ { print $1 }' | while read -r netns; do
    ip netns delete "$netns"
done

# Pod veth ends hang off the cni0 bridge; `ip link` names them "vethX@ifN:".
ip link show 2>/dev/null | grep 'master cni0' | while read -r _ iface _; do
    iface=${iface%%@*}
    ip link delete "${iface%:}"
done
for iface in cni0 flannel.1 flannel-v6.1 kube-ipvs0 flannel-wg flannel-wg-v6; do
    ip link delete "$iface" 2>/dev/null
done

# k3s advertises the pod CIDR through tailscale when its vpn integration is on.
if command -v tailscale >/dev/null 2>&1; then
    tailscale set --advertise-routes=
fi

rm -rf /var/lib/cni/

for tool in iptables ip6tables; do
    if command -v "$tool-save" >/dev/null 2>&1 && command -v "$tool-restore" >/dev/null 2>&1; then
        "$tool-save" | grep -v -e KUBE- -e CNI- | grep -iv flannel | "$tool-restore"
    fi
done
"""

_UNINSTALL_BODY = r"""
case "$K3S_DATA_DIR" in
    /?*) ;;
    *) echo "K3S_DATA_DIR must be an absolute path below /, not '$K3S_DATA_DIR'" >&2; exit 1 ;;
esac
export K3S_DATA_DIR

# Prints every mount point at or below directory $1, deepest first.
mounts_below() {
    while read -r _ path _; do
        # /proc/self/mounts writes space, tab, newline and backslash as octal escapes.
        case "$path" in *\\*) path=$(printf '%b' "$path") ;; esac
        case "$path" in "$1" | "$1"/*) echo "$path" ;; esac
    done </proc/self/mounts | sort -r
}

# Deletes $1, but a directory that still holds a mount point is emptied instead of removed.
remove_tree() {
    if [ -L "$1" ] || [ ! -d "$1" ] || [ -z "$(mounts_below "$1")" ]; then
        rm -rf "$1"
        return
    fi
    for entry in "$1"/* "$1"/.[!.]* "$1"/..?*; do
        if [ -e "$entry" ] || [ -L "$entry" ]; then
            remove_tree "$entry"
        fi
    done
}

# Detaches every mount below directory $1, then deletes it, so rm never crosses into a mounted
# file system; a mount on $1 itself (a dedicated disk) is emptied and kept.
clean_mounted_directory() {
    dir=$(cd -P "$1" 2>/dev/null && pwd -P) || return 0
    [ "$dir" != / ] || return 1
    mounts_below "$dir" | while IFS= read -r path; do
        if [ "$path" != "$dir" ]; then
            umount "$path" 2>/dev/null || umount -l "$path"
        fi
    done
    remove_tree "$dir"
}

set -x

"$BIN_DIR/k3s-killall.sh"

if command -v systemctl >/dev/null 2>&1; then
    systemctl disable "$SYSTEM_NAME"
    systemctl reset-failed "$SYSTEM_NAME"
fi
# k3bundle writes systemd units only, so there is no OpenRC service to delete.
rm -f "$SYSTEMD_DIR/$SYSTEM_NAME.service" "$SYSTEMD_DIR/$SYSTEM_NAME.service.env"
if command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload
fi

remove_uninstall() {
    rm -f "$BIN_DIR/$SYSTEM_NAME-uninstall.sh"
}
trap remove_uninstall EXIT

for unit in "$SYSTEMD_DIR"/k3s*.service /etc/init.d/k3s*; do
    if [ -e "$unit" ]; then
        set +x
        echo "Additional k3s services installed, skipping uninstall of k3s"
        exit 0
    fi
done

# Only links to k3s are ours: a kubectl the admin installed stays.
for cmd in kubectl crictl ctr; do
    if [ -L "$BIN_DIR/$cmd" ]; then
        case "$(readlink "$BIN_DIR/$cmd")" in
            k3s | "$BIN_DIR/k3s") rm -f "$BIN_DIR/$cmd" ;;
        esac
    fi
done

rm -rf /etc/rancher/k3s /run/k3s /run/flannel
clean_mounted_directory "$K3S_DATA_DIR"
clean_mounted_directory /var/lib/kubelet
rm -f "$BIN_DIR/k3s" "$BIN_DIR/k3s-killall.sh"
rm -rf "$RECORD_DIR"
# Upstream also removes the k3s-selinux RPM and its rancher-k3s-common repo files here;
# k3bundle never installs them, so there is nothing to remove.
"""


def service_name(role: str) -> str:
    """The systemd service name for a role: k3s for server, k3s-agent for agent."""
    try:
        return _SERVICE_NAMES[role]
    except KeyError:
        raise ValueError(f"unknown k3s role {role!r}: expected 'server' or 'agent'") from None


def _unit_quote(arg: str) -> str:
    """One ExecStart argument, single-quoted as install.sh does and escaped for systemd."""
    if any(ch in arg for ch in _LINE_BREAKS):
        raise ValueError(f"k3s argument {arg!r} contains a line break or NUL")
    # systemd reads C escapes even inside quotes and expands % specifiers and $ variables.
    escaped = arg.replace("\\", "\\\\").replace("%", "%%").replace("$", "$$")
    return "'" + escaped.replace("'", "'\\''") + "'"


def render_unit(
    role: str,
    exec_args: Sequence[str],
    bin_dir: str = "/usr/local/bin",
    systemd_dir: str = "/etc/systemd/system",
) -> str:
    """The systemd unit for a role, directive for directive as upstream install.sh writes it."""
    name = service_name(role)
    head = _UNIT_HEAD.format(env_file=f"{systemd_dir}/{name}.service.env")
    lines = [f"ExecStart={bin_dir}/k3s \\", f"    {role} \\"]
    lines.extend(f"\t{_unit_quote(arg)} \\" for arg in exec_args)
    return head + "\n".join(lines) + "\n\n"


def _env_quote(value: str) -> str:
    """A value in double quotes that systemd's EnvironmentFile parser and sh both read back."""
    if any(ch in value for ch in _LINE_BREAKS):
        raise ValueError("env file values cannot contain a line break or NUL")
    for special in ("\\", '"', "`", "$"):
        value = value.replace(special, "\\" + special)
    return f'"{value}"'


def render_env(variables: Mapping[str, str]) -> str:
    """The unit's env file: one KEY="VALUE" line per variable, sorted by key."""
    lines = []
    for key in sorted(variables):
        if not _ENV_NAME.match(key):
            raise ValueError(f"{key!r} is not a valid environment variable name")
        lines.append(f"{key}={_env_quote(variables[key])}\n")
    return "".join(lines)


def env_from_environment(environ: Mapping[str, str]) -> Dict[str, str]:
    """The variables install.sh copies into the env file: K3S_*, CONTAINERD_* and proxies."""
    return {
        key: value
        for key, value in environ.items()
        if _COPIED_PREFIX.match(key) or _PROXY_NAME.match(key)
    }


def _assign(name: str, value: str) -> str:
    """A shell assignment of a fixed value."""
    return f"{name}={shlex.quote(value)}\n"


def _default_data_dir(data_dir: str) -> str:
    """Shell lines that keep K3S_DATA_DIR from the environment and default it otherwise."""
    default = shlex.quote(data_dir.rstrip("/") or "/")
    keep = '[ -n "${K3S_DATA_DIR:-}" ] || K3S_DATA_DIR='
    return f"{keep}{default}\nK3S_DATA_DIR=${{K3S_DATA_DIR%/}}\n"


def render_killall(data_dir: str = "/var/lib/rancher/k3s") -> str:
    """k3s-killall.sh: stop every k3s service and remove the containers, mounts and networks."""
    header = (
        "#!/bin/sh\n"
        "# k3s-killall.sh, written by k3bundle: stops k3s and removes what it leaves behind.\n"
    )
    return header + _BECOME_ROOT + "\n" + _default_data_dir(data_dir) + _KILLALL_BODY


def render_uninstall(
    role: str,
    bin_dir: str = "/usr/local/bin",
    systemd_dir: str = "/etc/systemd/system",
    data_dir: str = "/var/lib/rancher/k3s",
) -> str:
    """k3s[-agent]-uninstall.sh: run killall, remove the service, then k3s and its data."""
    name = service_name(role)
    header = (
        "#!/bin/sh\n"
        f"# {name}-uninstall.sh, written by k3bundle: removes the {name} service and, when it\n"
        "# is the last k3s service, k3s itself, its data and k3bundle's install record.\n"
    )
    variables = (
        _assign("SYSTEM_NAME", name)
        + _assign("BIN_DIR", bin_dir)
        + _assign("SYSTEMD_DIR", systemd_dir)
        + _assign("RECORD_DIR", RECORD_DIR)
        + _default_data_dir(data_dir)
    )
    return header + _BECOME_ROOT + "\n" + variables + _UNINSTALL_BODY
