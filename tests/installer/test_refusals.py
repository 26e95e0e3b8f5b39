"""Every doubtful bundle is refused by `k3bundle install` (and `verify`) and leaves ROOT untouched.

Each test runs the real CLI in a subprocess, checks the documented exit code, the one `Error:` line
with its next step, and that ROOT is byte-for-byte what it was before.
"""

from __future__ import annotations

import hashlib
import platform
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytest

from k3bundle.bundler import keys
from k3bundle.installer.errors import (
    ArchError,
    FormatError,
    InstallError,
    IntegrityError,
    TrustError,
)
from k3bundle.installer.format.manifest import MANIFEST_NAME, SIGNATURE_NAME, canonical_json
from k3bundle.installer.format.signature import Signature, parse_signature
from tests.helpers import KeyFiles, make_bundle, make_keys, run_k3bundle, snapshot

FORMAT_EXIT = FormatError.exit_code
INTEGRITY_EXIT = IntegrityError.exit_code
TRUST_EXIT = TrustError.exit_code
ARCH_EXIT = ArchError.exit_code
INSTALL_EXIT = InstallError.exit_code
PAYLOAD_MEMBERS = (
    "amd64/k3s",
    "amd64/k3s-airgap-images-amd64.tar.zst",
    "arm64/k3s-arm64",
    "arm64/k3s-airgap-images-arm64.tar.zst",
)
K3S_DATA = b"#!/bin/sh\necho 'hand-made k3s'\n"
IMAGES_DATA = bytes(range(256)) * 20

# --- building bundles by hand ---------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    """One tar member of a hand-made bundle, of any type."""

    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    linkname: str = ""
    mode: int = 0o644


def file_entry(
    path: str, data: bytes, kind: str = "images", arch: Optional[str] = "amd64"
) -> Dict[str, Any]:
    """A manifest files[] item describing `data` at `path`."""
    return {
        "path": path,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "kind": kind,
        "mode": "0755" if kind == "k3s-binary" else "0644",
        "arch": arch,
        "source": {},
    }


def manifest_doc(files: Sequence[Dict[str, Any]], **overrides: Any) -> Dict[str, Any]:
    """A k3bundle/v1 manifest document for amd64 holding `files`."""
    doc: Dict[str, Any] = {
        "format": "k3bundle/v1",
        "k3s_version": "v1.31.4+k3s1",
        "architectures": ["amd64"],
        "files": list(files),
        "install": {},
    }
    doc.update(overrides)
    return doc


def tar_bytes(members: Sequence[Member]) -> bytes:
    """An uncompressed POSIX tar of exactly these members, with end blocks and record padding."""
    out = bytearray()
    for member in members:
        info = tarfile.TarInfo(member.name)
        info.type, info.mode, info.linkname = member.type, member.mode, member.linkname
        info.size = len(member.data)
        out += info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")
        out += member.data + b"\0" * (-len(member.data) % tarfile.BLOCKSIZE)
    out += b"\0" * (2 * tarfile.BLOCKSIZE)
    out += b"\0" * (-len(out) % tarfile.RECORDSIZE)
    return bytes(out)


def write_signed(
    path: Path, doc: Dict[str, Any], payload: Sequence[Member], key: Optional[KeyFiles]
) -> Path:
    """Write manifest + signature (valid, by `key`) + `payload` members as bundle `path`."""
    manifest = canonical_json(doc)
    members = [Member(MANIFEST_NAME, manifest)]
    if key is not None:
        members.append(Member(SIGNATURE_NAME, keys.load_signer(key.private)(manifest).to_bytes()))
    path.write_bytes(tar_bytes([*members, *payload]))
    return path


def standard_files() -> Tuple[List[Dict[str, Any]], List[Member]]:
    """The manifest items and members of a small, valid amd64 bundle."""
    items = [
        file_entry("amd64/k3s", K3S_DATA, kind="k3s-binary"),
        file_entry("amd64/images.tar.zst", IMAGES_DATA, kind="airgap-images"),
    ]
    members = [
        Member("amd64/k3s", K3S_DATA, mode=0o755),
        Member("amd64/images.tar.zst", IMAGES_DATA),
    ]
    return items, members


# --- patching real bundles ------------------------------------------------------------------


def member_offsets(bundle: Path) -> Dict[str, tarfile.TarInfo]:
    """Every member of a bundle by name, with its header and data offsets."""
    with tarfile.open(bundle) as tar:
        return {info.name: info for info in tar.getmembers()}


def flip_byte(bundle: Path, offset: int) -> None:
    """Invert one byte of a file in place (its size stays the same)."""
    with open(bundle, "r+b") as handle:
        handle.seek(offset)
        old = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([old[0] ^ 0xFF]))


def overwrite(bundle: Path, offset: int, data: bytes) -> None:
    """Replace bytes of a file in place."""
    with open(bundle, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


# --- fixtures and assertions ----------------------------------------------------------------


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> KeyFiles:
    """The key the bundles are signed with."""
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def two_arch_bundle(tmp_path_factory: pytest.TempPathFactory, signer: KeyFiles) -> Path:
    """A pristine signed amd64 + arm64 bundle; tests copy it before they damage it."""
    out = make_bundle(tmp_path_factory.mktemp("bundle"), signer=signer, image_size=8192)
    return out.files[0]


@pytest.fixture
def bundle_copy(two_arch_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the two-arch bundle, free to damage."""
    return Path(shutil.copyfile(two_arch_bundle, tmp_path / "bundle.tar"))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A non-empty install root: a hostname and an older k3s binary already there."""
    folder = tmp_path / "root"
    (folder / "etc").mkdir(parents=True)
    (folder / "etc" / "hostname").write_text("node-1\n")
    binary = folder / "usr" / "local" / "bin" / "k3s"
    binary.parent.mkdir(parents=True)
    binary.write_bytes(b"#!/bin/sh\necho 'older k3s'\n")
    binary.chmod(0o755)
    return folder


def install(bundle: Path, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`k3bundle install BUNDLE --root ROOT --adopt ARGS` in a subprocess.

    --adopt: ROOT's older k3s was not placed by k3bundle, and these tests are about the bundle.
    """
    return run_k3bundle("install", str(bundle), "--root", str(root), "--adopt", *args)


def assert_refused(result: subprocess.CompletedProcess[str], code: int, *names: str) -> None:
    """Exit `code`, one `Error:` line naming `names`, followed by a next step."""
    lines = result.stderr.splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("Error:")]
    assert result.returncode == code, result.stderr
    assert len(errors) == 1, result.stderr
    for name in names:
        assert name in lines[errors[0]], lines[errors[0]]
    hint = lines[errors[0] + 1 :]
    assert hint and hint[0].startswith("  ") and hint[0].strip(), result.stderr


def refuse_install(bundle: Path, root: Path, code: int, names: Sequence[str], *args: str) -> None:
    """Install must fail with `code`, name `names`, and leave ROOT exactly as it was."""
    before = snapshot(root)
    result = install(bundle, root, *args)
    assert_refused(result, code, *names)
    assert snapshot(root) == before


# --- baseline: the hand-made bundles are valid when nothing is wrong -------------------------


def test_hand_made_signed_bundle_installs(tmp_path: Path, root: Path, signer: KeyFiles) -> None:
    items, members = standard_files()
    bundle = write_signed(tmp_path / "ok.tar", manifest_doc(items), members, signer)
    result = install(bundle, root, "--pubkey", str(signer.public))
    assert result.returncode == 0, result.stderr
    assert (root / "usr/local/bin/k3s").read_bytes() == K3S_DATA


def test_install_refuses_a_k3s_installed_by_other_means_before_reading_the_payload(
    bundle_copy: Path, root: Path, signer: KeyFiles
) -> None:
    # A damaged payload would be exit 4: the foreign k3s is found before any payload byte.
    flip_byte(bundle_copy, member_offsets(bundle_copy)["amd64/k3s"].offset_data)
    before = snapshot(root)
    result = run_k3bundle(
        "install", str(bundle_copy), "--root", str(root), "--pubkey", str(signer.public)
    )
    assert_refused(result, INSTALL_EXIT, "already installed", "/usr/local/bin/k3s")
    assert "--adopt" in result.stderr
    assert snapshot(root) == before


# --- trust ----------------------------------------------------------------------------------


def test_install_refuses_signed_bundle_with_no_trusted_key(bundle_copy: Path, root: Path) -> None:
    (root / "etc" / "k3bundle" / "trusted.d").mkdir(parents=True)
    refuse_install(bundle_copy, root, TRUST_EXIT, ["no trusted public key", "bundle.tar"])


def test_install_refuses_unsigned_bundle_without_allow_unsigned(
    tmp_path: Path, root: Path, signer: KeyFiles
) -> None:
    bundle = make_bundle(tmp_path / "unsigned", image_size=1024).files[0]
    refuse_install(
        bundle, root, TRUST_EXIT, ["bundle.tar", "not signed"], "--pubkey", str(signer.public)
    )


def test_install_refuses_signature_by_unknown_key(
    tmp_path: Path, root: Path, signer: KeyFiles
) -> None:
    stranger = make_keys(tmp_path / "other", "stranger")
    bundle = make_bundle(tmp_path / "b", signer=stranger, image_size=1024).files[0]
    refuse_install(
        bundle, root, TRUST_EXIT, [stranger.key_id, "not trusted"], "--pubkey", str(signer.public)
    )


def test_install_refuses_bad_signature_value(
    bundle_copy: Path, root: Path, signer: KeyFiles
) -> None:
    info = member_offsets(bundle_copy)[SIGNATURE_NAME]
    with open(bundle_copy, "rb") as handle:
        handle.seek(info.offset_data)
        original = parse_signature(handle.read(info.size))
    value = bytearray(original.value)
    value[10] ^= 0x01
    damaged = Signature(original.key_id, bytes(value)).to_bytes()
    assert len(damaged) == info.size
    overwrite(bundle_copy, info.offset_data, damaged)
    refuse_install(
        bundle_copy,
        root,
        TRUST_EXIT,
        [SIGNATURE_NAME, "does not match"],
        "--pubkey",
        str(signer.public),
    )


def test_install_refuses_manifest_edited_after_signing(
    bundle_copy: Path, root: Path, signer: KeyFiles
) -> None:
    info = member_offsets(bundle_copy)[MANIFEST_NAME]
    with open(bundle_copy, "rb") as handle:
        handle.seek(info.offset_data)
        manifest = handle.read(info.size)
    at = manifest.index(b"v1.31.4+k3s1")
    overwrite(bundle_copy, info.offset_data + at, b"v1.31.5+k3s1")
    refuse_install(
        bundle_copy,
        root,
        TRUST_EXIT,
        [SIGNATURE_NAME, "does not match"],
        "--pubkey",
        str(signer.public),
    )


# --- payload integrity ----------------------------------------------------------------------


@pytest.mark.parametrize("arch", [None, "arm64"], ids=["host-arch", "arch-arm64"])
@pytest.mark.parametrize("member", PAYLOAD_MEMBERS)
def test_install_refuses_any_flipped_payload_byte(
    bundle_copy: Path, root: Path, signer: KeyFiles, member: str, arch: Optional[str]
) -> None:
    info = member_offsets(bundle_copy)[member]
    flip_byte(bundle_copy, info.offset_data + info.size // 2)
    args = ["--pubkey", str(signer.public), *(["--arch", arch] if arch else [])]
    refuse_install(bundle_copy, root, INTEGRITY_EXIT, [member, "corrupted"], *args)


def truncation_point(bundle: Path, where: str) -> Tuple[int, str]:
    """The byte offset to cut `bundle` at for scenario `where`, and what the error names."""
    members = member_offsets(bundle)
    last = members[PAYLOAD_MEMBERS[-1]]
    points = {
        "inside-manifest": (members[MANIFEST_NAME].offset_data + 100, MANIFEST_NAME),
        "inside-signature": (members[SIGNATURE_NAME].offset_data + 50, SIGNATURE_NAME),
        "inside-payload": (members[PAYLOAD_MEMBERS[1]].offset_data + 1000, PAYLOAD_MEMBERS[1]),
        "member-boundary": (members[PAYLOAD_MEMBERS[2]].offset, PAYLOAD_MEMBERS[2]),
        "before-end-blocks": (
            last.offset_data + last.size + (-last.size % tarfile.BLOCKSIZE),
            "end-of-archive",
        ),
        "inside-end-blocks": (
            last.offset_data + last.size + (-last.size % tarfile.BLOCKSIZE) + tarfile.BLOCKSIZE,
            "end-of-archive",
        ),
    }
    return points[where]


@pytest.mark.parametrize(
    "where",
    [
        "inside-manifest",
        "inside-signature",
        "inside-payload",
        "member-boundary",
        "before-end-blocks",
        "inside-end-blocks",
    ],
)
def test_install_refuses_truncated_bundle(
    bundle_copy: Path, root: Path, signer: KeyFiles, where: str
) -> None:
    cut, named = truncation_point(bundle_copy, where)
    data = bundle_copy.read_bytes()
    bundle_copy.write_bytes(data[:cut])
    refuse_install(
        bundle_copy, root, INTEGRITY_EXIT, [named, "truncated"], "--pubkey", str(signer.public)
    )


# --- archive structure (hand-made, validly signed) ------------------------------------------


def test_install_refuses_member_outside_manifest(
    tmp_path: Path, root: Path, signer: KeyFiles
) -> None:
    items, members = standard_files()
    extra = Member("amd64/extra.bin", b"not in the manifest")
    bundle = write_signed(tmp_path / "b.tar", manifest_doc(items), [*members, extra], signer)
    refuse_install(
        bundle,
        root,
        FORMAT_EXIT,
        ["amd64/extra.bin", "does not list"],
        "--pubkey",
        str(signer.public),
    )


def test_install_refuses_member_outside_manifest_before_listed_ones(
    tmp_path: Path, root: Path, signer: KeyFiles
) -> None:
    items, members = standard_files()
    extra = Member("amd64/extra.bin", b"not in the manifest")
    bundle = write_signed(tmp_path / "b.tar", manifest_doc(items), [extra, *members], signer)
    refuse_install(
        bundle,
        root,
        FORMAT_EXIT,
        ["amd64/extra.bin", "does not list"],
        "--pubkey",
        str(signer.public),
    )


@pytest.mark.parametrize("kept", [0, 1], ids=["last-missing", "first-missing"])
def test_install_refuses_manifest_entry_missing_from_archive(
    tmp_path: Path, root: Path, signer: KeyFiles, kept: int
) -> None:
    items, members = standard_files()
    missing = members[1 - kept].name
    bundle = write_signed(tmp_path / "b.tar", manifest_doc(items), [members[kept]], signer)
    refuse_install(bundle, root, INTEGRITY_EXIT, [missing], "--pubkey", str(signer.public))


def test_install_refuses_manifest_listing_a_path_twice(
    tmp_path: Path, root: Path, signer: KeyFiles
) -> None:
    items, members = standard_files()
    doc = manifest_doc([*items, items[1]])
    bundle = write_signed(tmp_path / "b.tar", doc, [*members, members[1]], signer)
    refuse_install(
        bundle,
        root,
        FORMAT_EXIT,
        ["amd64/images.tar.zst", "twice"],
        "--pubkey",
        str(signer.public),
    )


@pytest.mark.parametrize("position", ["middle", "end"])
def test_install_refuses_archive_holding_a_path_twice(
    tmp_path: Path, root: Path, signer: KeyFiles, position: str
) -> None:
    items, members = standard_files()
    payload = (
        [members[0], members[0], members[1]] if position == "middle" else [*members, members[1]]
    )
    duplicate = payload[1].name if position == "middle" else members[1].name
    bundle = write_signed(tmp_path / "b.tar", manifest_doc(items), payload, signer)
    refuse_install(bundle, root, FORMAT_EXIT, [duplicate, "twice"], "--pubkey", str(signer.public))


@pytest.mark.parametrize("path", ["/usr/local/bin/k3s", "../k3s", "amd64/../../k3s"])
def test_install_refuses_unsafe_path_listed_in_signed_manifest(
    tmp_path: Path, root: Path, signer: KeyFiles, path: str
) -> None:
    items, members = standard_files()
    doc = manifest_doc([file_entry(path, K3S_DATA, kind="k3s-binary"), items[1]])
    payload = [Member(path, K3S_DATA), members[1]]
    bundle = write_signed(tmp_path / "b.tar", doc, payload, signer)
    refuse_install(bundle, root, FORMAT_EXIT, [path], "--pubkey", str(signer.public))


@pytest.mark.parametrize(
    ("path", "position"),
    [
        ("/etc/evil", "first"),
        ("../evil", "first"),
        ("amd64/../../evil", "first"),
        ("../evil", "last"),
    ],
)
def test_install_refuses_unsafe_path_as_extra_member(
    tmp_path: Path, root: Path, signer: KeyFiles, path: str, position: str
) -> None:
    items, members = standard_files()
    evil = Member(path, b"root::0:0::/:/bin/sh\n")
    payload = [evil, *members] if position == "first" else [*members, evil]
    bundle = write_signed(tmp_path / "b.tar", manifest_doc(items), payload, signer)
    refuse_install(bundle, root, FORMAT_EXIT, [path], "--pubkey", str(signer.public))


SPECIAL_MEMBERS = {
    "symlink": (tarfile.SYMTYPE, "/etc/shadow", "symlink"),
    "hardlink": (tarfile.LNKTYPE, "amd64/images.tar.zst", "hardlink"),
    "char-device": (tarfile.CHRTYPE, "", "device"),
    "fifo": (tarfile.FIFOTYPE, "", "fifo"),
}


@pytest.mark.parametrize("kind", sorted(SPECIAL_MEMBERS))
def test_install_refuses_special_member_listed_in_signed_manifest(
    tmp_path: Path, root: Path, signer: KeyFiles, kind: str
) -> None:
    tar_type, link, word = SPECIAL_MEMBERS[kind]
    items, members = standard_files()
    doc = manifest_doc([file_entry("amd64/k3s", b"", kind="k3s-binary"), items[1]])
    payload = [Member("amd64/k3s", type=tar_type, linkname=link), members[1]]
    bundle = write_signed(tmp_path / "b.tar", doc, payload, signer)
    refuse_install(bundle, root, FORMAT_EXIT, ["amd64/k3s", word], "--pubkey", str(signer.public))


@pytest.mark.parametrize(
    ("kind", "position"), [*((kind, "first") for kind in sorted(SPECIAL_MEMBERS)), ("fifo", "last")]
)
def test_install_refuses_special_member_outside_manifest(
    tmp_path: Path, root: Path, signer: KeyFiles, kind: str, position: str
) -> None:
    tar_type, link, _word = SPECIAL_MEMBERS[kind]
    items, members = standard_files()
    odd = Member("amd64/odd", type=tar_type, linkname=link)
    payload = [odd, *members] if position == "first" else [*members, odd]
    bundle = write_signed(tmp_path / "b.tar", manifest_doc(items), payload, signer)
    refuse_install(bundle, root, FORMAT_EXIT, ["amd64/odd"], "--pubkey", str(signer.public))


def test_install_refuses_newer_format_version(tmp_path: Path, root: Path, signer: KeyFiles) -> None:
    items, members = standard_files()
    doc = manifest_doc(items, format="k3bundle/v3")
    bundle = write_signed(tmp_path / "b.tar", doc, members, signer)
    refuse_install(
        bundle, root, FORMAT_EXIT, [MANIFEST_NAME, "k3bundle/v3"], "--pubkey", str(signer.public)
    )


def test_install_refuses_size_mismatch_between_member_and_manifest(
    tmp_path: Path, root: Path, signer: KeyFiles
) -> None:
    items, members = standard_files()
    longer = Member("amd64/images.tar.zst", IMAGES_DATA + b"x")
    bundle = write_signed(tmp_path / "b.tar", manifest_doc(items), [members[0], longer], signer)
    refuse_install(
        bundle,
        root,
        INTEGRITY_EXIT,
        ["amd64/images.tar.zst", "bytes"],
        "--pubkey",
        str(signer.public),
    )


# --- architecture ---------------------------------------------------------------------------


@pytest.fixture
def arm64_only(tmp_path: Path, signer: KeyFiles) -> Path:
    """A signed bundle that carries arm64 files only."""
    return make_bundle(tmp_path / "arm", arches=("arm64",), signer=signer, image_size=1024).files[0]


def test_install_refuses_bundle_without_requested_arch(
    arm64_only: Path, root: Path, signer: KeyFiles
) -> None:
    refuse_install(
        arm64_only,
        root,
        ARCH_EXIT,
        ["amd64", "arm64"],
        "--pubkey",
        str(signer.public),
        "--arch",
        "amd64",
    )


@pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"), reason="needs an amd64 host"
)
def test_install_refuses_bundle_without_host_arch(
    arm64_only: Path, root: Path, signer: KeyFiles
) -> None:
    refuse_install(arm64_only, root, ARCH_EXIT, ["amd64"], "--pubkey", str(signer.public))


# --- the same refusals from `k3bundle verify` -----------------------------------------------


def verify(bundle: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`k3bundle verify BUNDLE ARGS` in a subprocess."""
    return run_k3bundle("verify", str(bundle), *args)


def test_verify_accepts_the_pristine_bundle(bundle_copy: Path, signer: KeyFiles) -> None:
    result = verify(bundle_copy, "--pubkey", str(signer.public))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK: bundle.tar")


def test_verify_refuses_unsigned_bundle(tmp_path: Path, signer: KeyFiles) -> None:
    bundle = make_bundle(tmp_path / "unsigned", image_size=1024).files[0]
    result = verify(bundle, "--pubkey", str(signer.public))
    assert_refused(result, TRUST_EXIT, "bundle.tar", "not signed")


def test_verify_refuses_signature_by_unknown_key(tmp_path: Path, signer: KeyFiles) -> None:
    stranger = make_keys(tmp_path / "other", "stranger")
    bundle = make_bundle(tmp_path / "b", signer=stranger, image_size=1024).files[0]
    result = verify(bundle, "--pubkey", str(signer.public))
    assert_refused(result, TRUST_EXIT, stranger.key_id)


@pytest.mark.parametrize("member", [PAYLOAD_MEMBERS[0], PAYLOAD_MEMBERS[-1]])
def test_verify_refuses_flipped_payload_byte(
    bundle_copy: Path, signer: KeyFiles, member: str
) -> None:
    info = member_offsets(bundle_copy)[member]
    flip_byte(bundle_copy, info.offset_data + info.size // 2)
    result = verify(bundle_copy, "--pubkey", str(signer.public))
    assert_refused(result, INTEGRITY_EXIT, member, "corrupted")
    assert result.stdout == ""


def test_verify_refuses_truncated_bundle(bundle_copy: Path, signer: KeyFiles) -> None:
    cut, named = truncation_point(bundle_copy, "before-end-blocks")
    bundle_copy.write_bytes(bundle_copy.read_bytes()[:cut])
    result = verify(bundle_copy, "--pubkey", str(signer.public))
    assert_refused(result, INTEGRITY_EXIT, named)


def test_verify_refuses_member_outside_manifest(tmp_path: Path, signer: KeyFiles) -> None:
    items, members = standard_files()
    extra = Member("amd64/extra.bin", b"not in the manifest")
    bundle = write_signed(tmp_path / "b.tar", manifest_doc(items), [*members, extra], signer)
    result = verify(bundle, "--pubkey", str(signer.public))
    assert_refused(result, FORMAT_EXIT, "amd64/extra.bin")


def test_verify_refuses_symlink_member(tmp_path: Path, signer: KeyFiles) -> None:
    items, members = standard_files()
    doc = manifest_doc([file_entry("amd64/k3s", b"", kind="k3s-binary"), items[1]])
    link = Member("amd64/k3s", type=tarfile.SYMTYPE, linkname="/etc/shadow")
    bundle = write_signed(tmp_path / "b.tar", doc, [link, members[1]], signer)
    result = verify(bundle, "--pubkey", str(signer.public))
    assert_refused(result, FORMAT_EXIT, "amd64/k3s", "symlink")


def test_verify_refuses_newer_format_version(tmp_path: Path, signer: KeyFiles) -> None:
    items, members = standard_files()
    bundle = write_signed(
        tmp_path / "b.tar", manifest_doc(items, format="k3bundle/v3"), members, signer
    )
    result = verify(bundle, "--pubkey", str(signer.public))
    assert_refused(result, FORMAT_EXIT, "k3bundle/v3")


# --- hostile headers and documents (issue 9): a clean refusal, never a traceback -------------


def pax_header(records: Dict[str, str]) -> bytes:
    """A pax extended header (header block + records) with exactly these records."""
    body = b""
    for key, value in records.items():
        text = f" {key}={value}\n".encode()
        length = len(text) + len(str(len(text)))
        length += len(str(length)) - len(str(len(text)))
        body += str(length).encode() + text
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = tarfile.XHDTYPE, len(body)
    header = info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")
    return header + body + b"\0" * (-len(body) % tarfile.BLOCKSIZE)


def raw_pax_header(body: bytes) -> bytes:
    """A pax extended header whose record bytes are `body`, however malformed."""
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = tarfile.XHDTYPE, len(body)
    header = info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")
    return header + body + b"\0" * (-len(body) % tarfile.BLOCKSIZE)


def with_checksum(block: bytearray) -> bytearray:
    """Recompute a ustar header block's checksum after a field was patched."""
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return block


def signed_with_patched_header(tmp_path: Path, signer: KeyFiles, member: str, size: bytes) -> Path:
    """The standard hand-made bundle with `member`'s 12-byte size field replaced by `size`."""
    items, members = standard_files()
    bundle = write_signed(tmp_path / "b.tar", manifest_doc(items), members, signer)
    offset = member_offsets(bundle)[member].offset
    data = bytearray(bundle.read_bytes())
    block = bytearray(data[offset : offset + tarfile.BLOCKSIZE])
    block[124:136] = size
    data[offset : offset + tarfile.BLOCKSIZE] = with_checksum(block)
    bundle.write_bytes(bytes(data))
    return bundle


BASE256_SIZES = {
    "negative": b"\xff" * 12,
    "two-to-the-62": b"\x80" + (1 << 62).to_bytes(11, "big"),
}


@pytest.mark.parametrize("size", BASE256_SIZES.values(), ids=BASE256_SIZES.keys())
@pytest.mark.parametrize("command", ["install", "verify"])
def test_refuses_base256_member_size_that_is_negative_or_absurd(
    tmp_path: Path, root: Path, signer: KeyFiles, size: bytes, command: str
) -> None:
    bundle = signed_with_patched_header(tmp_path, signer, "amd64/images.tar.zst", size)
    if command == "install":
        refuse_install(
            bundle, root, FORMAT_EXIT, ["impossible size"], "--pubkey", str(signer.public)
        )
    else:
        assert_refused(
            verify(bundle, "--pubkey", str(signer.public)), FORMAT_EXIT, "impossible size"
        )


def pax_bundle(tmp_path: Path, signer: KeyFiles, pax: bytes) -> Path:
    """The standard signed bundle with `pax` just before the images member's header."""
    items, members = standard_files()
    bundle = write_signed(tmp_path / "b.tar", manifest_doc(items), members, signer)
    offset = member_offsets(bundle)["amd64/images.tar.zst"].offset
    data = bundle.read_bytes()
    bundle.write_bytes(data[:offset] + pax + data[offset:])
    return bundle


@pytest.mark.parametrize("value", ["²", "٣", "-1", "1e3", " 12", "0x10", "1" * 30])
def test_install_refuses_pax_size_that_is_not_ascii_decimal(
    tmp_path: Path, root: Path, signer: KeyFiles, value: str
) -> None:
    bundle = pax_bundle(tmp_path, signer, pax_header({"size": value}))
    refuse_install(
        bundle, root, FORMAT_EXIT, ["malformed pax size"], "--pubkey", str(signer.public)
    )


@pytest.mark.parametrize("body", ["²² size=1\n".encode(), b"0 size=1\n", b"99999 size=1\n"])
def test_install_refuses_pax_record_with_a_malformed_length(
    tmp_path: Path, root: Path, signer: KeyFiles, body: bytes
) -> None:
    bundle = pax_bundle(tmp_path, signer, raw_pax_header(body))
    refuse_install(
        bundle, root, FORMAT_EXIT, ["malformed pax header"], "--pubkey", str(signer.public)
    )


@pytest.mark.parametrize(
    ("member", "declared", "limit"),
    [(MANIFEST_NAME, (64 << 20) + 1, "67108864"), (SIGNATURE_NAME, (64 << 10) + 1, "65536")],
)
def test_install_refuses_oversized_manifest_or_signature_from_its_header(
    tmp_path: Path, root: Path, signer: KeyFiles, member: str, declared: int, limit: str
) -> None:
    """The size is refused from the tar header: the member's bytes are never read whole."""
    size = b"%011o\0" % declared
    bundle = signed_with_patched_header(tmp_path, signer, member, size)
    refuse_install(bundle, root, FORMAT_EXIT, [member, limit], "--pubkey", str(signer.public))


def test_install_refuses_deeply_nested_signature_member(
    tmp_path: Path, root: Path, signer: KeyFiles
) -> None:
    items, members = standard_files()
    manifest = canonical_json(manifest_doc(items))
    nested = b"[" * 10_000 + b"]" * 10_000  # 20 KB: under the size bound
    payload = [Member(MANIFEST_NAME, manifest), Member(SIGNATURE_NAME, nested), *members]
    bundle = tmp_path / "b.tar"
    bundle.write_bytes(tar_bytes(payload))
    refuse_install(
        bundle, root, FORMAT_EXIT, [SIGNATURE_NAME, "nests deeper"], "--pubkey", str(signer.public)
    )


HOSTILE_MANIFESTS = {
    "nested-json": ({"deep": [[[[[[[[[[]]]]]]]]]] * 1}, "nests deeper"),
    "images-int": ({"images": 5}, "'images'"),
    "install-config-list": ({"install": {"config": []}}, "'config'"),
    "version-newline": ({"k3s_version": "v1.31.4+k3s1\n"}, "'k3s_version'"),
}


def nested_manifest(doc: Dict[str, Any]) -> bytes:
    """Canonical bytes, with a "deep" value replaced by 10,000 nested lists."""
    data = canonical_json(doc)
    return data.replace(b'"deep":[[[[[[[[[[]]]]]]]]]]', b'"deep":' + b"[" * 10_000 + b"]" * 10_000)


@pytest.mark.parametrize(
    ("override", "expected"), HOSTILE_MANIFESTS.values(), ids=HOSTILE_MANIFESTS.keys()
)
def test_signed_manifest_with_wrong_shapes_is_refused_by_install_verify_and_inspect(
    tmp_path: Path, root: Path, signer: KeyFiles, override: Dict[str, Any], expected: str
) -> None:
    items, members = standard_files()
    manifest = nested_manifest(manifest_doc(items, **override))
    signature = keys.load_signer(signer.private)(manifest).to_bytes()
    bundle = tmp_path / "b.tar"
    bundle.write_bytes(
        tar_bytes([Member(MANIFEST_NAME, manifest), Member(SIGNATURE_NAME, signature), *members])
    )
    refuse_install(bundle, root, FORMAT_EXIT, [expected], "--pubkey", str(signer.public))
    assert_refused(verify(bundle, "--pubkey", str(signer.public)), FORMAT_EXIT, expected)
    assert_refused(run_k3bundle("inspect", str(bundle)), FORMAT_EXIT, expected)


@pytest.mark.parametrize("path", [".", "amd64/./k3s", "amd64/.k3s.k3bundle-tmp"])
def test_install_refuses_dot_and_staging_like_paths_in_the_signed_manifest(
    tmp_path: Path, root: Path, signer: KeyFiles, path: str
) -> None:
    items, members = standard_files()
    doc = manifest_doc([file_entry(path, K3S_DATA, kind="k3s-binary"), items[1]])
    bundle = write_signed(tmp_path / "b.tar", doc, [Member(path, K3S_DATA), members[1]], signer)
    refuse_install(bundle, root, FORMAT_EXIT, [repr(path)], "--pubkey", str(signer.public))


@pytest.mark.parametrize(
    ("kinds", "carried"),
    [((("amd64/images.tar.zst", "airgap-images", "amd64"),), "none"),
     ((("arm64/k3s", "k3s-binary", "arm64"), ("charts/x.tgz", "chart", None)), "arm64")],
    ids=["no-binary-at-all", "binary-for-another-arch"],
)  # fmt: skip
def test_install_refuses_bundle_without_a_k3s_binary_for_the_arch_and_leaves_root_empty(
    tmp_path: Path, signer: KeyFiles, kinds: Sequence[Tuple[str, str, Optional[str]]], carried: str
) -> None:
    items = [file_entry(path, IMAGES_DATA, kind, arch) for path, kind, arch in kinds]
    doc = manifest_doc(items, architectures=["amd64", "arm64"])
    payload = [Member(path, IMAGES_DATA) for path, _, _ in kinds]
    bundle = write_signed(tmp_path / "b.tar", doc, payload, signer)
    empty = tmp_path / "empty-root"
    empty.mkdir()
    result = run_k3bundle(
        "install",
        str(bundle),
        "--root",
        str(empty),
        "--pubkey",
        str(signer.public),
        "--arch",
        "amd64",
    )
    assert_refused(
        result, ARCH_EXIT, "no k3s binary for architecture amd64", f"(it carries: {carried})"
    )
    assert "--arch" in result.stderr
    assert list(empty.iterdir()) == []
