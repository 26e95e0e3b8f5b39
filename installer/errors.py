"""One error hierarchy for both halves: each class has an exit code and a next step."""

from __future__ import annotations

from typing import Callable, Optional


class K3BundleError(Exception):
    """Base of every error k3bundle raises on purpose; caught once at the CLI edge."""

    exit_code = 1
    default_hint = ""

    def __init__(self, message: str, hint: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = self.default_hint if hint is None else hint

    def diagnostics(self) -> str:
        """The message and, when there is one, what to do next."""
        return f"{self.message}\n  {self.hint}" if self.hint else self.message


class UsageError(K3BundleError):
    """The command line or a spec asks for something that cannot work."""

    exit_code = 2


class FormatError(K3BundleError):
    """The bundle is not a well-formed k3bundle/v1 archive."""

    exit_code = 3
    default_hint = "Rebuild the bundle with 'k3bundle build' or copy it again from its source."


class IntegrityError(K3BundleError):
    """Bytes do not match their recorded size or sha256 (corruption or truncation)."""

    exit_code = 4
    default_hint = "Copy the bundle again from its source and check it with 'k3bundle verify'."


class TrustError(K3BundleError):
    """The bundle is unsigned, signed by an unknown key, or the signature is bad."""

    exit_code = 5


class ArchError(K3BundleError):
    """The bundle carries nothing for the requested architecture."""

    exit_code = 6


class InstallError(K3BundleError):
    """The host could not be changed as planned (permissions, space, a command failed)."""

    exit_code = 7


class RequirementError(K3BundleError):
    """An upgrade bundle (built with --since) relies on files this host does not hold."""

    exit_code = 10


class FetchError(K3BundleError):
    """A download or registry request failed for good (connected side)."""

    exit_code = 8


# 128 + SIGPIPE, what a shell reports for any Unix tool whose reader went away (`| head`).
BROKEN_PIPE = 141
INTERRUPTED = 130

EXIT_CODES = {
    0: "success",
    1: "unexpected error: a bug in k3bundle (run again with --verbose for a traceback)",
    UsageError.exit_code: "bad command line or spec",
    FormatError.exit_code: "the bundle is malformed (bad member, path or format version)",
    IntegrityError.exit_code: "a size or sha256 mismatch, a truncated bundle or a damaged part",
    TrustError.exit_code: "unsigned, unknown key, or bad signature",
    ArchError.exit_code: "nothing in the bundle for this architecture",
    InstallError.exit_code: "the host could not be changed (not root, disk full, read-only, ...)",
    FetchError.exit_code: "a download failed (build side)",
    9: "status: files on disk no longer match the install record",
    RequirementError.exit_code: "an upgrade bundle (--since) needs files this host does not hold",
    INTERRUPTED: "interrupted (Ctrl-C)",
    BROKEN_PIPE: "the reader of stdout went away (e.g. '| head'); output was cut short",
}

# Verbs of host_error() that only read: their permission hint is about reading, not the host.
READ_ACTIONS = ("read", "open", "list", "look")


def host_error(exc: OSError, action: str, path: object) -> InstallError:
    """An InstallError for an OSError while changing the host, with a hint that fits its cause.

    `action` is a verb phrase ("write", "create", "rename ... to"), `path` the host path.
    """
    reading = action.split(" ", 1)[0] in READ_ACTIONS
    return _os_error(exc, action, path, "read" if reading else "host")


def build_error(exc: OSError, action: str, path: object) -> InstallError:
    """host_error() for the connected side: the hints name -o and --cache-dir, not --root."""
    return _os_error(exc, action, path, "build")


def _os_error(exc: OSError, action: str, path: object, audience: str) -> InstallError:
    reason = exc.strerror or str(exc)
    return InstallError(f"cannot {action} {path}: {reason}", _hint_for(exc.errno, audience))


def edge_error(
    exc: OSError, action: str, make: Callable[[OSError, str, object], InstallError] = host_error
) -> InstallError:
    """`make` (host_error or build_error) for an OSError that reached a command line."""
    path: object = "a file" if exc.filename is None else exc.filename
    if exc.filename2 is not None:
        path = f"{exc.filename} -> {exc.filename2}"
    return make(exc, action, path)


def unexpected(exc: BaseException, verbose: bool = False) -> str:
    """The one line for an exception nobody raised on purpose: a bug, said plainly."""
    text = str(exc).splitlines()[0] if str(exc) else "(no message)"
    step = "run again with --verbose for a traceback"
    if verbose:
        step = "please report it with the traceback above"
    return f"unexpected {type(exc).__name__}: {text} \u2014 this is a bug in k3bundle; {step}"


def _hint_for(code: Optional[int], audience: str) -> str:
    import errno

    if code == errno.ENOSPC or code == errno.EDQUOT:
        return "The filesystem is full (or the quota is used up): free some space and run again."
    if code == errno.EROFS:
        where = "another -o folder" if audience == "build" else "another --root"
        return f"That filesystem is mounted read-only: remount it read-write, or choose {where}."
    if code in (errno.EACCES, errno.EPERM):
        return _permission_hint(audience)
    if code == errno.ENOENT:
        return "A folder on the way does not exist: check the path, then run again."
    return "Check the path and the filesystem, then run again."


def _permission_hint(audience: str) -> str:
    import os

    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return _NOT_ROOT_HINTS[audience]
    # root is refused only by the filesystem or the kernel, never by mode bits
    return (
        "Even root may not do this: check for an immutable attribute (lsattr), a read-only "
        "bind mount, or a security module (SELinux, AppArmor) denying it."
    )


_NOT_ROOT_HINTS = {
    "host": "You are not root: run as root (sudo), or use --root DIR with a folder you own.",
    "read": "You may not read it: run as root (sudo), or fix its permissions (ls -l).",
    "build": "Choose a folder you may write to (-o, --cache-dir), or fix its permissions.",
}
