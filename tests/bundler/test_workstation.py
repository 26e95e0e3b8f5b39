"""Every workstation: the build gives the same bytes where Linux-only calls are missing or refuse
(macOS, Windows), on every supported Python, keeps its cache where each OS expects it, and a
rename that fails at the end leaves the previous build whole."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple, cast

import pytest

from k3bundle.bundler.cache import default_cache_dir
from k3bundle.bundler.platform_dirs import user_cache_dir
from tests.bundler.conftest import VERSION, BuildRun
from tests.helpers import KeyFiles, make_bundle
from tests.release_server import ReleaseServer

LINUX_ONLY = ("sendfile", "copy_file_range", "pread", "preadv")
SPLIT = "40K"  # the amd64 build is ~130 KiB: several parts
# Runs the CLI as on Windows: the calls that Python's os module lacks there are deleted first.
WITHOUT_LINUX_CALLS = f"""
import os
for name in {LINUX_ONLY!r}:
    if hasattr(os, name):
        delattr(os, name)
from k3bundle.bundler.entry import main
main()
"""


def digests(folder: Path) -> Dict[str, str]:
    """Every file in `folder` by name → its sha256."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def remove_linux_calls(monkeypatch: pytest.MonkeyPatch) -> List[int]:
    """Delete the calls Windows lacks; the list counts the seeks the fallback makes instead."""
    for name in LINUX_ONLY:
        monkeypatch.delattr(os, name, raising=False)
    seeks: List[int] = []
    real_lseek = os.lseek

    def counting_lseek(fd: int, position: int, how: int) -> int:
        seeks.append(position)
        return real_lseek(fd, position, how)

    monkeypatch.setattr(os, "lseek", counting_lseek)
    return seeks


def build_args(signer: KeyFiles, output: Path, cache: Path) -> List[str]:
    """A signed, split amd64 build into `output` with its own cache."""
    sign = ["--sign-key", str(signer.private), "--split", SPLIT]
    return [
        "--version",
        VERSION,
        "--arch",
        "amd64",
        *sign,
        "-o",
        str(output),
        "--cache-dir",
        str(cache),
    ]


def test_writer_without_sendfile_copy_file_range_pread_preadv_writes_the_same_bytes(
    signer: KeyFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    normal = make_bundle(tmp_path / "normal", signer=signer, split=100_000)
    seeks = remove_linux_calls(monkeypatch)
    bare = make_bundle(tmp_path / "bare", signer=signer, split=100_000)
    assert seeks, "the seek+read fallback did not run"
    assert len(normal.files) > 2
    assert [p.name for p in bare.files] == [p.name for p in normal.files]
    assert [p.read_bytes() for p in bare.files] == [p.read_bytes() for p in normal.files]
    assert bare.sha256s == normal.sha256s


def test_signed_split_build_in_a_process_without_linux_calls_is_byte_identical(
    run_build: BuildRun, server: ReleaseServer, signer: KeyFiles, tmp_path: Path
) -> None:
    code, output = run_build(*build_args(signer, tmp_path / "normal", tmp_path / "cache1"))
    assert code == 0, output
    base = ["--release-url", server.release_url, "--channel-url", server.channel_url, "-q"]
    args = [*base, *build_args(signer, tmp_path / "bare", tmp_path / "cache2")]
    command = [sys.executable, "-c", WITHOUT_LINUX_CALLS, "build", *args]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    normal = digests(tmp_path / "normal")
    assert any(name.endswith(".tar.001") for name in normal)
    assert "SHA256SUMS" in normal
    assert digests(tmp_path / "bare") == normal


def test_build_where_sendfile_refuses_regular_files_as_on_macos_is_byte_identical(
    run_build: BuildRun, signer: KeyFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, output = run_build(*build_args(signer, tmp_path / "normal", tmp_path / "cache"))
    assert code == 0, output
    refused: List[int] = []

    def macos_sendfile(*args: Any) -> int:
        refused.append(1)
        raise OSError(errno.ENOTSOCK, "Socket operation on non-socket")

    monkeypatch.delattr(os, "copy_file_range", raising=False)  # macOS has none
    monkeypatch.setattr(os, "sendfile", macos_sendfile, raising=False)
    code, output = run_build(*build_args(signer, tmp_path / "macos", tmp_path / "cache"))
    assert code == 0, output
    assert refused, "sendfile was never tried"
    assert digests(tmp_path / "macos") == digests(tmp_path / "normal")


REPO = Path(__file__).resolve().parents[2]
# Builds a fixed bundle with the writer only (it needs nothing but the installer package and the
# standard library, so any Python can run it with -I): a long and a non-ASCII member name (pax
# records), a nonzero mtime, a stand-in signature, split in parts. Prints name -> sha256.
WRITE_FIXED_BUNDLE = """
import hashlib, json, os, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from k3bundle.bundler.writer import entry_for_file, write_bundle
from k3bundle.installer.format.manifest import Manifest
from k3bundle.installer.format.signature import Signature
out = Path(sys.argv[2])
names = ["amd64/k3s", "amd64/" + "long-name-" * 12 + ".tar", "amd64/caf\u00e9.yaml"]
entries, files = [], {}
for number, name in enumerate(names):
    local = out / "payload" / str(number)
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_bytes(hashlib.sha256(name.encode()).digest() * (700 * number + 3))
    entries.append(entry_for_file(local, name, "file", arch="amd64", mode=0o755 - number))
    files[name] = local
manifest = Manifest("v1.31.4+k3s1", ("amd64",), tuple(entries))
def sign(data):
    return Signature("sha256:" + "0" * 64, hashlib.sha512(data).digest())
written = write_bundle(out / "fixed.tar", manifest, files, sign, 20480)
print(json.dumps({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in written.files}))
"""
# The fixed bundle's digests as 3.8.18, 3.9.18, 3.10.13, 3.11.7, 3.12.1 and 3.13.0 all write it
# (3.8 only since tar_header blanks the device fields): what a machine with one Python compares
# with. A change to the writer that changes bundle bytes on purpose updates these too.
FIXED_BUNDLE_GOLDEN = {
    "fixed.tar.000": "e8ec6ec8180bec05fc75c2582d7c00748bdf93a13604934bf03eed426da71fb4",
    "fixed.tar.001": "9e418d9add038305219d639eadc08a2811fe49891dfd80a0f362c0c89c475f74",
    "fixed.tar.002": "3b1eaffbf1f89f95e12a807b0566195d090bafcf347653f53edc633af95dcefb",
    "fixed.tar.003": "ecce5e4461dbffb6828332c37ff2395e34077e8b10e6390f6a8f3d9a82171d31",
    "fixed.tar.parts.json": "b1a270f7194a3967f35ba14d048ef8179f2a29f3d4ef8a3b58ec79ce39df8778",
}


def pythons() -> List[Tuple[Tuple[int, ...], str]]:
    """Every distinct Python >= 3.8 the machine has (pyenv's and this one), oldest first."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    found = {tuple(sys.version_info[:3]): sys.executable}
    for candidate in sorted(root.glob("versions/3.*/bin/python3")):
        match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", candidate.parents[1].name)
        version = tuple(int(part) for part in match.groups()) if match else None
        if version is not None and version >= (3, 8):
            found.setdefault(version, str(candidate))
    return sorted(found.items())


def writer_tree(folder: Path) -> Path:
    """k3bundle/{bundler/writer.py, bundler/tarwrite.py, installer/} as a path entry."""
    package = folder / "k3bundle"
    shutil.copytree(
        REPO / "installer", package / "installer", ignore=shutil.ignore_patterns("__pycache__")
    )
    (package / "bundler").mkdir()
    for name in ("writer.py", "tarwrite.py"):
        shutil.copy(REPO / "bundler" / name, package / "bundler" / name)
    (package / "__init__.py").write_text("")
    (package / "bundler" / "__init__.py").write_text("")
    return folder


def fixed_bundle_under(python: str, tree: Path, out: Path) -> Dict[str, str]:
    """The fixed bundle's digests as `python` writes it, isolated from site-packages."""
    env = {"SOURCE_DATE_EPOCH": "1700000000", "PATH": os.environ.get("PATH", "")}
    command = [python, "-I", "-c", WRITE_FIXED_BUNDLE, str(tree), str(out)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stderr
    written: Dict[str, str] = json.loads(result.stdout)
    return written


def test_the_oldest_and_newest_python_write_the_same_bundle_bytes(tmp_path: Path) -> None:
    found = pythons()
    tree = writer_tree(tmp_path / "tree")
    (oldest_version, oldest), (newest_version, newest) = found[0], found[-1]
    first = fixed_bundle_under(oldest, tree, tmp_path / "oldest")
    assert len(first) > 2  # several parts
    if oldest_version == newest_version:  # one Python only: compare with the stored digests
        assert first == FIXED_BUNDLE_GOLDEN, f"Python {oldest_version} writes other bytes"
        return
    assert fixed_bundle_under(newest, tree, tmp_path / "newest") == first, (
        f"Python {oldest_version} and {newest_version} write different bundle bytes"
    )
    assert first == FIXED_BUNDLE_GOLDEN


@pytest.mark.parametrize(
    ("platform", "env", "expected"),
    [
        ("linux", {}, "/home/ada/.cache/k3bundle"),
        ("linux", {"XDG_CACHE_HOME": "/var/cache/ada"}, "/var/cache/ada/k3bundle"),
        ("linux", {"XDG_CACHE_HOME": "  "}, "/home/ada/.cache/k3bundle"),
        ("freebsd14", {}, "/home/ada/.cache/k3bundle"),
        ("darwin", {"XDG_CACHE_HOME": "/ignored"}, "/home/ada/Library/Caches/k3bundle"),
        (
            "win32",
            {"LOCALAPPDATA": r"C:\Users\ada\AppData\Local"},
            r"C:\Users\ada\AppData\Local\k3bundle\Cache",
        ),
        (
            "win32",
            {},
            r"\home\ada\AppData\Local\k3bundle\Cache",
        ),  # no LOCALAPPDATA: HOME\AppData\Local
    ],
)
def test_the_cache_lives_where_each_os_keeps_caches(
    platform: str, env: Dict[str, str], expected: str
) -> None:
    assert str(user_cache_dir("k3bundle", platform, env, "/home/ada")) == expected


def test_cache_dir_variable_and_flag_win_over_the_os_location(
    run_build: BuildRun, signer: KeyFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("K3BUNDLE_CACHE_DIR", raising=False)
    assert default_cache_dir() == tmp_path / "xdg" / "k3bundle"
    monkeypatch.setenv("K3BUNDLE_CACHE_DIR", str(tmp_path / "variable"))
    assert default_cache_dir() == tmp_path / "variable"
    code, output = run_build(
        "--version", VERSION, "--arch", "amd64"
    )  # run_build passes --cache-dir
    assert code == 0, output
    assert (tmp_path / "cache" / "sha256").is_dir()
    assert not (tmp_path / "variable").exists() and not (tmp_path / "xdg").exists()


def refuse_renames_onto(
    monkeypatch: pytest.MonkeyPatch, name: str, times: int = 1_000
) -> List[str]:
    """Renaming the new `name` into place fails `times` times, as Windows does for an open file."""
    real_replace, refused = os.replace, cast(List[str], [])

    def replace(source: Any, target: Any) -> None:
        if Path(source).name == f".{name}.tmp" and len(refused) < times:
            refused.append(str(source))
            raise PermissionError(13, "The process cannot access the file")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    return refused


def test_a_refused_rename_keeps_the_previous_build_whole_and_exits_7_naming_the_file(
    run_build: BuildRun, signer: KeyFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, output = run_build("--version", VERSION, "--arch", "amd64")
    assert code == 0, output
    previous = digests(tmp_path / "dist")
    refuse_renames_onto(monkeypatch, "SHA256SUMS")  # the last rename: every part has moved
    code, output = run_build("--version", VERSION, "--arch", "amd64", "--split", SPLIT)
    assert code == 7, output
    error = [line for line in output.splitlines() if line.startswith("Error: ")]
    assert error == [error[0]] and ".SHA256SUMS.tmp to SHA256SUMS" in error[0], output
    visible = {k: v for k, v in digests(tmp_path / "dist").items() if not k.startswith(".")}
    assert visible == previous
    waiting = {p.name for p in (tmp_path / "dist").glob(".*.tmp")}
    assert ".k3s-v1.31.4-k3s1-amd64.tar.000.tmp" in waiting and ".SHA256SUMS.tmp" in waiting


def test_a_rename_refused_briefly_is_retried_and_the_build_completes(
    run_build: BuildRun, signer: KeyFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused = refuse_renames_onto(monkeypatch, "SHA256SUMS", times=2)
    code, output = run_build("--version", VERSION, "--arch", "amd64")
    assert code == 0, output
    assert len(refused) == 2
    sums = (tmp_path / "dist" / "SHA256SUMS").read_text("utf-8")
    assert "k3s-v1.31.4-k3s1-amd64.tar" in sums
    assert not list((tmp_path / "dist").glob(".*"))
