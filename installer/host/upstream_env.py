"""Upstream install.sh's settings: each INSTALL_K3S_* variable, honoured or refused, never ignored.

k3s users carry install.sh's habits over (`INSTALL_K3S_EXEC=... K3S_URL=... sh install.sh`, see
reference/k3s-facts.md §3). Where a variable makes sense offline k3bundle does what install.sh
does; otherwise it refuses the install in one line that names the k3bundle equivalent. Flags beat
these variables. Pure rules, no I/O.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

from k3bundle.installer.errors import UsageError
from k3bundle.installer.host.units import env_from_environment

PREFIX = "INSTALL_K3S_"
ROLE_WORDS = ("server", "agent")
SYSTEMD_DIR = "/etc/systemd/system"

# Variables k3bundle cannot honour, and what to do instead.
_REFUSED: Mapping[str, str] = {
    "INSTALL_K3S_BIN_DIR_READ_ONLY": "k3bundle places k3s itself, in /usr/local/bin (or /opt/bin "
    "when that is read-only); unset it.",
    "INSTALL_K3S_CHANNEL": "The bundle fixes the k3s version: choose the channel when building "
    "(k3bundle build --channel); unset it.",
    "INSTALL_K3S_CHANNEL_URL": "The bundle fixes the k3s version: give the channel server when "
    "building (k3bundle build --channel-url); unset it.",
    "INSTALL_K3S_COMMIT": "k3bundle installs k3s releases only: build a bundle of one "
    "(k3bundle build --version); unset it.",
    "INSTALL_K3S_PR": "k3bundle installs k3s releases only: build a bundle of one "
    "(k3bundle build --version); unset it.",
    "INSTALL_K3S_DEBUG": "Use --verbose instead; unset it.",
}
# Variables install.sh skips everything for under INSTALL_K3S_SKIP_DOWNLOAD=true, which a bundle
# install always is (nothing is downloaded, no SELinux RPM installed): accepted, no effect.
_IMPLIED = ("INSTALL_K3S_SKIP_DOWNLOAD", "INSTALL_K3S_SKIP_SELINUX_RPM", "INSTALL_K3S_SELINUX_WARN")
# Accepted only when they name what k3bundle writes anyway.
_FIXED: Mapping[str, Tuple[str, str]] = {
    "INSTALL_K3S_SYSTEMD_DIR": (SYSTEMD_DIR, f"k3bundle writes its units to {SYSTEMD_DIR}"),
    "INSTALL_K3S_TYPE": ("notify", "k3bundle's units are Type=notify, as install.sh's default"),
}
_SWITCHES = ("INSTALL_K3S_SKIP_START", "INSTALL_K3S_SKIP_ENABLE", "INSTALL_K3S_FORCE_RESTART")
# Checked by `check_context`, once the bundle and the host are known.
_IN_CONTEXT = ("INSTALL_K3S_VERSION", "INSTALL_K3S_BIN_DIR", "INSTALL_K3S_NAME")
_HANDLED = ("INSTALL_K3S_EXEC", "INSTALL_K3S_SYMLINK", *_SWITCHES, *_IN_CONTEXT, *_IMPLIED)


@dataclass(frozen=True)
class Switches:
    """What install.sh's variables ask of this install (None/False: they ask nothing)."""

    exec_args: Optional[Tuple[str, ...]] = None
    skip_start: bool = False
    skip_enable: bool = False
    force_restart: bool = False
    symlink: Optional[str] = None


def settings(environ: Mapping[str, str]) -> Switches:
    """Read install.sh's variables; refuse those k3bundle cannot honour and unknown ones."""
    given = _given(environ)
    for name, value in given.items():
        _check_known(name, value)
    exec_text = given.get("INSTALL_K3S_EXEC")
    symlink = given.get("INSTALL_K3S_SYMLINK")
    if symlink not in (None, "skip", "force"):
        raise UsageError(
            f"INSTALL_K3S_SYMLINK={symlink!r} is neither skip nor force",
            "Unset it to link kubectl, crictl and ctr unless they exist (install.sh's default).",
        )
    return Switches(
        exec_args=None if exec_text is None else split_words(exec_text, "INSTALL_K3S_EXEC"),
        skip_start=_true(given, "INSTALL_K3S_SKIP_START"),
        skip_enable=_true(given, "INSTALL_K3S_SKIP_ENABLE"),
        force_restart=_true(given, "INSTALL_K3S_FORCE_RESTART"),
        symlink=symlink,
    )


def check_context(environ: Mapping[str, str], version: str, bin_dir: str, service: str) -> None:
    """Refuse INSTALL_K3S_VERSION/_BIN_DIR/_NAME that ask for other than this install does."""
    given = _given(environ)
    wanted = {
        "INSTALL_K3S_VERSION": (version, "the bundle carries k3s {0}: build a bundle of {1} "
                                "(k3bundle build --version {1})"),
        "INSTALL_K3S_BIN_DIR": (bin_dir, "k3bundle installs k3s to {0} on this host; unset it"),
        "INSTALL_K3S_NAME": (service, "k3bundle names the service {0} (k3s for a server, "
                             "k3s-agent for an agent); unset it"),
    }  # fmt: skip
    for name, (ours, hint) in wanted.items():
        value = given.get(name)
        if name == "INSTALL_K3S_NAME" and value is not None:
            value = f"k3s-{value}"  # install.sh: INSTALL_K3S_NAME=agent names k3s-agent
        if value is not None and value.rstrip("/") != ours:
            raise UsageError(f"{name}={given[name]!r} cannot be honoured", hint.format(ours, value))


def choose_role(
    role: Optional[str],
    server_url: Optional[str],
    exec_args: Optional[Tuple[str, ...]],
    environ: Mapping[str, str],
    installed: Optional[str] = None,
) -> Tuple[Optional[str], Optional[str], Optional[Tuple[str, ...]]]:
    """Role, server and k3s arguments from flags, then the environment (None: not said here).

    As in install.sh, a leading server/agent word is the command, and K3S_URL without one means
    an agent; --server (k3bundle's flag) joins as a server unless --role says otherwise. A server
    (`installed`) is never turned into an agent by that default alone.
    """
    word, args = split_command(exec_args)
    if role and word and word != role:
        raise UsageError(
            f"--role {role} contradicts the k3s command {word!r} in the k3s arguments",
            f"Drop one of them (the arguments may begin with {role}, or with a --flag).",
        )
    env_url = environ.get("K3S_URL") or None
    implied = "agent" if env_url and not server_url and not (role or word) else None
    if implied and installed == "server":
        raise UsageError(
            "K3S_URL without a server or agent command means an agent, but this host is a server",
            "Keep the server with INSTALL_K3S_EXEC=server (or --role server); make it an agent "
            "with --role agent.",
        )
    return role or word or implied, server_url or env_url, args


def unit_env(
    previous: Mapping[str, str],
    environ: Mapping[str, str],
    flags: Mapping[str, Optional[str]],
    server_url: Optional[str],
) -> Dict[str, str]:
    """The unit's env file: what the installed generation's held, the environment's K3S_*,
    CONTAINERD_* and proxy variables over it (an empty one forgets it), the flags over both.

    install.sh rebuilds the file from the environment alone, so an upgrade run without the proxy
    restarts k3s without it; k3bundle remembers, as it does every other option.
    """
    given = env_from_environment(environ)
    if any(flags.values()):  # flags beat the environment
        given = {k: v for k, v in given.items() if k not in flags}
        given.update({k: v or "" for k, v in flags.items()})
    replaced = {_setting(key) for key in given}
    env = {k: v for k, v in previous.items() if _setting(k) not in replaced}
    env.update({k: v for k, v in given.items() if v})
    env.pop("K3S_URL", None)  # the server to join is decided with the role
    if server_url:
        env["K3S_URL"] = server_url
    return env


def split_command(
    words: Optional[Tuple[str, ...]],
) -> Tuple[Optional[str], Optional[Tuple[str, ...]]]:
    """A leading server/agent word chooses the command, as in install.sh; the rest are flags."""
    if not words:
        return None, words
    if words[0] in ROLE_WORDS:
        return words[0], words[1:]
    if not words[0].startswith("-"):
        raise UsageError(
            f"k3s arguments {' '.join(words)!r} begin with {words[0]!r}",
            "Begin them with server or agent (the k3s command) or with a --flag.",
        )
    return None, words


def split_words(text: str, name: str) -> Tuple[str, ...]:
    """The k3s arguments in a --exec or INSTALL_K3S_EXEC text, split as a shell would."""
    try:
        return tuple(shlex.split(text))
    except ValueError as exc:
        raise UsageError(f"cannot split {name} {text!r}: {exc}") from None


def _setting(name: str) -> str:
    """Names that say one thing: a new value for one replaces the others."""
    if name in ("K3S_TOKEN", "K3S_TOKEN_FILE"):
        return "token"
    return name.upper() if name.upper().endswith("_PROXY") else name  # read in either case


def _given(environ: Mapping[str, str]) -> Mapping[str, str]:
    # install.sh tests these with -z or ${VAR:-default}: an empty one is an unset one.
    return {k: v for k, v in environ.items() if k.startswith(PREFIX) and v != ""}


def _check_known(name: str, value: str) -> None:
    if name in _REFUSED:
        raise UsageError(f"{name} is not supported by k3bundle", _REFUSED[name])
    if name in _FIXED and value.rstrip("/") != _FIXED[name][0]:
        raise UsageError(f"{name}={value!r} cannot be honoured", _FIXED[name][1] + "; unset it.")
    if name not in _HANDLED and name not in _FIXED:
        raise UsageError(
            f"{name} is not an install.sh variable k3bundle knows",
            "Check its spelling; k3bundle refuses what it would otherwise ignore.",
        )


def _true(given: Mapping[str, str], name: str) -> bool:
    value = given.get(name)
    if value not in (None, "true", "false"):
        raise UsageError(
            f"{name}={value!r} is neither true nor false", f"Set {name}=true or unset it."
        )
    return value == "true"
