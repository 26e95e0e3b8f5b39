"""One error hierarchy for both halves: each class has an exit code and a next step."""

from __future__ import annotations

from typing import Optional


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


class FetchError(K3BundleError):
    """A download or registry request failed for good (connected side)."""

    exit_code = 8


EXIT_CODES = {
    0: "success",
    1: "unexpected error (run again with --verbose for a traceback)",
    UsageError.exit_code: "bad command line or spec",
    FormatError.exit_code: "the bundle is malformed (bad member, path or format version)",
    IntegrityError.exit_code: "a size or sha256 mismatch, a truncated bundle or a damaged part",
    TrustError.exit_code: "unsigned, unknown key, or bad signature",
    ArchError.exit_code: "nothing in the bundle for this architecture",
    InstallError.exit_code: "the host could not be changed",
    FetchError.exit_code: "a download failed (build side)",
    9: "status: files on disk no longer match the install record",
}


def host_error(exc: OSError, action: str, path: object) -> InstallError:
    """An InstallError for an OSError while changing the host, with a hint that fits its cause.

    `action` is a verb phrase ("write", "create", "rename ... to"), `path` the host path.
    """
    reason = exc.strerror or str(exc)
    return InstallError(f"cannot {action} {path}: {reason}", _hint_for(exc.errno))


def _hint_for(code: Optional[int]) -> str:
    import errno
    import os

    if code == errno.ENOSPC or code == errno.EDQUOT:
        return "The filesystem is full: free some space and run again (nothing has been changed)."
    if code == errno.EROFS:
        return "That filesystem is mounted read-only: remount it read-write (or choose another --root)."
    if code in (errno.EACCES, errno.EPERM):
        if hasattr(os, "geteuid") and os.geteuid() != 0:
            return "Run as root (sudo), or install into a folder of yours with --root DIR."
        return (
            "Even root may not change it: check for an immutable attribute (lsattr), a "
            "read-only bind mount or a security module (SELinux, AppArmor) denying it."
        )
    return "Check the path and the filesystem, then run again."
