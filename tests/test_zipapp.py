"""The standalone installer k3bundle-install.pyz: runs on the oldest Python with no third-party
package importable, and behaves exactly like `k3bundle install|verify|inspect`."""

from __future__ import annotations

import hashlib
import importlib.util
import marshal
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

import pytest

import k3bundle.installer
from k3bundle.installer.errors import InstallError, IntegrityError, TrustError
from tests.helpers import KeyFiles, build_zipapp, make_bundle, make_keys, snapshot

# What the installer must never need (DESIGN.md: installer never imports these).
THIRD_PARTY = ("click", "requests", "cryptography", "yaml", "tqdm", "oras")
# argparse wraps help text to the terminal width; pin it so both sides wrap alike.
HELP_ENV = {"COLUMNS": "200"}


@dataclass(frozen=True)
class Interpreter:
    """A python3 and the flags under which it sees the standard library only."""

    path: str
    flags: Tuple[str, ...]

    def command(self, *args: str) -> List[str]:
        """The command line running this interpreter with `args`."""
        return [self.path, *self.flags, *args]


def _version(python: str) -> Optional[Tuple[int, ...]]:
    done = subprocess.run(
        [python, "-I", "-c", "import sys; print(*sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return None
    return tuple(int(part) for part in done.stdout.split())


def oldest_python() -> str:
    """The oldest pyenv python3 >= 3.8 (the installer's floor), else /usr/bin/python3."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"), "versions")
    found: List[Tuple[Tuple[int, ...], str]] = []
    for candidate in root.glob("3.*/bin/python3"):
        version = _version(str(candidate))
        if version is not None and version >= (3, 8):
            found.append((version, str(candidate)))
    return min(found)[1] if found else "/usr/bin/python3"


def importable(python: Sequence[str], module: str) -> bool:
    """True when `module` imports under the interpreter command `python`."""
    done = subprocess.run([*python, "-c", f"import {module}"], capture_output=True, check=False)
    return done.returncode == 0


def run(command: Sequence[str], cwd: Optional[Path] = None) -> subprocess.CompletedProcess[str]:
    """Run a command with a clean environment for the installer (no backend override)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("K3BUNDLE_")}
    env.update(HELP_ENV)
    return subprocess.run(
        list(command), capture_output=True, text=True, env=env, cwd=cwd, check=False
    )


@pytest.fixture(scope="module")
def stdlib_python() -> Interpreter:
    """The oldest python, run so that only its standard library is importable."""
    python = oldest_python()
    flags: Tuple[str, ...] = ("-I",)
    if any(importable([python, *flags], name) for name in THIRD_PARTY):
        # -I drops PYTHONPATH and user site-packages; -S also drops the global site-packages.
        flags = ("-I", "-S")
    return Interpreter(python, flags)


@pytest.fixture(scope="module")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """k3bundle-install.pyz as `k3bundle installer-zipapp` writes it."""
    return build_zipapp(tmp_path_factory.mktemp("zipapp"))


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> KeyFiles:
    """A signing key pair."""
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, signer: KeyFiles) -> Path:
    """A signed two-architecture bundle."""
    output = make_bundle(tmp_path_factory.mktemp("bundle"), signer=signer)
    return output.files[0]


def option_strings(help_text: str) -> Set[str]:
    """The option strings (-v, --root, ...) in the option column of an argparse help."""
    options: Set[str] = set()
    for line in help_text.splitlines():
        stripped = line.strip()
        if stripped.startswith("-"):
            column = re.split(r"\s{2,}", stripped)[0]
            options.update(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", column))
    return options


def tampered_copy(bundle: Path, target: Path, member: str) -> Path:
    """A copy of `bundle` with one byte inside `member`'s data changed."""
    with tarfile.open(bundle) as archive:
        info = archive.getmember(member)
        stream = archive.extractfile(info)
        assert stream is not None
        data = stream.read()
    if member == "k3bundle.json":
        # Change one hex digit of a sha256 so the manifest stays valid JSON but its bytes change.
        digest = re.search(rb'"sha256":"([0-9a-f]{64})"', data)
        assert digest is not None
        offset = digest.start(1)
    else:
        offset = len(data) // 2
    flipped = b"0" if data[offset : offset + 1] != b"0" else b"1"
    raw = bytearray(bundle.read_bytes())
    raw[info.offset_data + offset] = flipped[0]
    target.write_bytes(bytes(raw))
    return target


def sha256_of(path: Path) -> str:
    """The sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_zipapp_interpreter_sees_no_third_party_package(stdlib_python: Interpreter) -> None:
    importable_now = [n for n in THIRD_PARTY if importable(stdlib_python.command(), n)]
    assert importable_now == []
    assert importable(stdlib_python.command(), "argparse")


def test_zipapp_help_lists_every_command(stdlib_python: Interpreter, pyz: Path) -> None:
    done = run(stdlib_python.command(str(pyz), "--help"))
    assert done.returncode == 0, done.stderr
    assert "{install,verify,inspect,status,recover,rollback,uninstall}" in done.stdout
    assert "exit codes:" in done.stdout


@pytest.mark.parametrize("command", ["install", "verify", "inspect"])
def test_zipapp_help_has_the_same_options_as_k3bundle(
    stdlib_python: Interpreter, pyz: Path, command: str
) -> None:
    standalone = run(stdlib_python.command(str(pyz), command, "--help"))
    bundled = run([sys.executable, "-m", "k3bundle.bundler", command, "--help"])
    assert standalone.returncode == bundled.returncode == 0, standalone.stderr + bundled.stderr
    assert option_strings(standalone.stdout) == option_strings(bundled.stdout)
    assert {"-h", "--help", "-q"} <= option_strings(standalone.stdout)
    if command == "install":
        assert {"--root", "--pubkey", "--arch", "--allow-unsigned"} <= option_strings(
            standalone.stdout
        )


def test_zipapp_verifies_signed_bundle_with_openssl(
    stdlib_python: Interpreter, pyz: Path, bundle: Path, signer: KeyFiles
) -> None:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed: the standalone installer verifies with it")
    done = run(
        stdlib_python.command(str(pyz), "verify", str(bundle), "--pubkey", str(signer.public))
    )
    assert done.returncode == 0, done.stderr
    assert "(openssl)" in done.stdout
    assert signer.key_id in done.stdout


def test_zipapp_install_places_the_same_tree_as_k3bundle_install(
    stdlib_python: Interpreter, pyz: Path, bundle: Path, signer: KeyFiles, tmp_path: Path
) -> None:
    trees: Dict[str, Dict[str, Tuple[int, str]]] = {}
    commands = {
        "zipapp": stdlib_python.command(str(pyz)),
        "k3bundle": [sys.executable, "-m", "k3bundle.bundler"],
    }
    for name, prefix in commands.items():
        root = tmp_path / name
        args = ["install", str(bundle), "--pubkey", str(signer.public), "--arch", "amd64"]
        done = run([*prefix, *args, "--root", str(root)])
        assert done.returncode == 0, done.stderr
        trees[name] = snapshot(root)
    assert "usr/local/bin/k3s" in trees["zipapp"]
    assert trees["zipapp"] == trees["k3bundle"]


@pytest.mark.parametrize(
    ("member", "exit_code"),
    [
        ("amd64/k3s-airgap-images-amd64.tar.zst", IntegrityError.exit_code),
        ("k3bundle.json", TrustError.exit_code),
    ],
)
def test_zipapp_and_k3bundle_refuse_a_tampered_bundle_alike(
    stdlib_python: Interpreter,
    pyz: Path,
    bundle: Path,
    signer: KeyFiles,
    tmp_path: Path,
    member: str,
    exit_code: int,
) -> None:
    bad = tampered_copy(bundle, tmp_path / "tampered.tar", member)
    commands = {
        "zipapp": stdlib_python.command(str(pyz)),
        "k3bundle": [sys.executable, "-m", "k3bundle.bundler"],
    }
    for name, prefix in commands.items():
        root = tmp_path / name
        args = ["install", str(bad), "--pubkey", str(signer.public), "--arch", "amd64"]
        done = run([*prefix, *args, "--root", str(root)])
        assert done.returncode == exit_code, f"{name}: {done.stderr}"
        assert "Error:" in done.stderr
        assert not (root / "usr/local/bin/k3s").exists()


def test_zipapp_is_reproducible(tmp_path: Path) -> None:
    digests = []
    # the second build in another working folder, with another hash seed and PYTHONPATH
    other = {"PYTHONHASHSEED": "1", "PYTHONPATH": str(tmp_path)}
    for name, env, cwd in (("first", {}, None), ("second", other, tmp_path)):
        target = tmp_path / name / "k3bundle-install.pyz"
        command = [sys.executable, "-m", "k3bundle.bundler", "installer-zipapp", "-o", str(target)]
        done = subprocess.run(
            command, capture_output=True, text=True, env={**os.environ, **env}, cwd=cwd
        )
        assert done.returncode == 0, done.stderr
        digests.append(sha256_of(target))
    assert digests[0] == digests[1]


def _module_file(pyz: Path, python: str = sys.executable) -> str:
    """The __file__ of the installer's CLI module as `python -I` imports it from `pyz`."""
    code = f"import sys; sys.path.insert(0, {str(pyz)!r}); import k3bundle.installer.cli as m"
    code += "; print(m.__file__)"
    done = run([python, "-I", "-c", code])
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_zipapp_carries_bytecode_this_python_loads_without_compiling(pyz: Path) -> None:
    with zipfile.ZipFile(pyz) as archive:
        names = set(archive.namelist())
        sources = {n for n in names if n.startswith("k3bundle/installer/") and n.endswith(".py")}
        pyc = archive.read("k3bundle/installer/cli.pyc")
    assert sources and {f"{n[:-3]}.pyc" for n in sources} <= names
    assert pyc[:4] == importlib.util.MAGIC_NUMBER
    # hash-based, unchecked: zipimport of 3.8.0/3.8.1 fails checking one (bpo-39033)
    assert int.from_bytes(pyc[4:8], "little") == 0b01
    # a traceback's file name that is never a file: its lines come from the zipapp
    assert marshal.loads(pyc[16:]).co_filename == "k3bundle-install.pyz/k3bundle/installer/cli.py"
    assert _module_file(pyz).endswith("k3bundle/installer/cli.pyc")  # not compiled from the .py


def test_bytecode_of_another_python_is_passed_over_for_the_sources(
    pyz: Path, tmp_path: Path, bundle: Path
) -> None:
    foreign = tmp_path / "foreign.pyz"
    with zipfile.ZipFile(pyz) as source, zipfile.ZipFile(foreign, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith(".pyc"):  # a magic number no Python has
                data = b"\x00\x00\r\n" + data[4:]
            target.writestr(info, data)
    assert _module_file(foreign).endswith("k3bundle/installer/cli.py")
    done = run([sys.executable, "-I", str(foreign), "inspect", str(bundle)])
    assert done.returncode == 0, done.stderr
    assert done.stdout == run([sys.executable, "-I", str(pyz), "inspect", str(bundle)]).stdout


def test_a_frozen_k3bundle_writes_the_sources_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from k3bundle.bundler import zipapp

    monkeypatch.setattr(sys, "frozen", True, raising=False)  # as PyInstaller sets it
    target = zipapp.write_zipapp(tmp_path / "k3bundle-install.pyz")
    with zipfile.ZipFile(target) as archive:
        assert not [n for n in archive.namelist() if n.endswith(".pyc")]
    monkeypatch.undo()
    done = run([sys.executable, "-I", str(target), "--version"])
    assert done.returncode == 0 and "k3bundle" in done.stdout, done.stderr


def test_a_python_that_cannot_compile_stops_the_build_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from k3bundle.bundler import zipapp

    monkeypatch.setattr(sys, "executable", shutil.which("false") or "/bin/false")
    with pytest.raises(InstallError, match="cannot compile the installer's bytecode"):
        zipapp.write_zipapp(tmp_path / "out" / "k3bundle-install.pyz")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def _vermin() -> str:
    beside = Path(sys.executable).with_name("vermin")
    found = str(beside) if beside.exists() else shutil.which("vermin")
    if found is None:
        pytest.fail("vermin is not installed: run 'make install' (it is a test dependency)")
    return found


def test_installer_needs_at_most_python_38_per_vermin() -> None:
    folder = str(Path(k3bundle.installer.__file__).parent)
    violations = run([_vermin(), "--violations", "--no-tips", "-t=3.8-", folder])
    assert violations.returncode == 0, violations.stdout + violations.stderr
    report = run([_vermin(), "--no-tips", "-t=3.8-", folder])
    found = re.search(r"Minimum required versions: (\d+)\.(\d+)", report.stdout)
    assert found is not None, report.stdout
    assert (int(found.group(1)), int(found.group(2))) <= (3, 8)
