"""Both command lines' edges: every failure is one honest 'Error:' line and a documented exit
code, a traceback only with -v (wherever it is given), and nothing changed on the way out."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import pytest

from k3bundle.bundler import cli as bundler_cli
from k3bundle.bundler import entry
from k3bundle.installer import cli as installer_cli
from k3bundle.installer.errors import BROKEN_PIPE, InstallError
from k3bundle.installer.host.service import run_command
from tests.helpers import KeyFiles, make_bundle, make_keys, snapshot

K3BUNDLE = str(Path(sys.executable).parent / "k3bundle")
# The zipapp under the host's own python3, which every user (nobody included) may run.
HOST_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
NOBODY = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")
TRACEBACK = "Traceback (most recent call last)"
SIDES = ("k3bundle", "zipapp")
NOT_ROOT_LINE = (
    "Error: must run as root to change the host (or pass --root DIR to install into a folder)"
)
IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root: mounts a tmpfs or runs chattr")


@pytest.fixture(scope="module")
def shared() -> Iterator[Path]:
    """A folder every user may read (pytest's own tmp folders are 0700 root)."""
    folder = Path(tempfile.mkdtemp(prefix="k3b-errors-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def signer(shared: Path) -> KeyFiles:
    """A signing key pair whose public half anyone may read."""
    return make_keys(shared / "keys")


@pytest.fixture(scope="module")
def bundle(shared: Path, signer: KeyFiles) -> Path:
    """A small signed amd64 bundle anyone may read."""
    path = make_bundle(shared / "bundle", ("amd64",), signer).files[0]
    subprocess.run(["chmod", "-R", "a+rX", str(shared)], check=True)
    return path


@pytest.fixture(scope="module")
def clis(shared: Path) -> Dict[str, List[str]]:
    """The two command lines: `k3bundle` and `python3 -I k3bundle-install.pyz`."""
    pyz = shared / "k3bundle-install.pyz"
    done = subprocess.run([K3BUNDLE, "installer-zipapp", "-o", str(pyz)], capture_output=True)
    assert done.returncode == 0, done.stderr
    pyz.chmod(0o755)
    return {"k3bundle": [K3BUNDLE], "zipapp": [HOST_PYTHON, "-I", str(pyz)]}


def run(
    command: Sequence[str], *args: str, as_user: bool = False, stdout: Optional[int] = None
) -> subprocess.CompletedProcess[str]:
    """Run a CLI as a user would (as `nobody` when asked and we are root)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("K3BUNDLE_")}
    prefix = NOBODY if as_user and IS_ROOT else ()
    return subprocess.run(
        [*prefix, *command, *args],
        stdout=subprocess.PIPE if stdout is None else stdout,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def install_args(bundle: Path, signer: KeyFiles, root: Optional[Path] = None) -> List[str]:
    """`install BUNDLE --pubkey PUB [--root ROOT]` for amd64, quietly."""
    args = ["install", str(bundle), "--pubkey", str(signer.public), "--arch", "amd64", "-q"]
    return args + (["--root", str(root)] if root is not None else [])


def one_error(done: subprocess.CompletedProcess[str], code: int) -> str:
    """Check the one-line error shape and exit code; return the whole of stderr."""
    assert done.returncode == code, done.stderr
    assert TRACEBACK not in done.stderr
    assert done.stderr.startswith("Error: "), done.stderr
    return done.stderr


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """An empty mount point, unmounted afterwards; the test mounts it with its own options."""
    point = tmp_path / "mnt"
    point.mkdir()
    yield point
    subprocess.run(["umount", str(point)], capture_output=True, check=False)


def mount(point: Path, options: str) -> Path:
    """Mount a tmpfs with `options` on `point`; skip when this machine cannot."""
    command = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)]
    done = subprocess.run(command, capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    return point


@pytest.fixture
def immutable(tmp_path: Path) -> Iterator[Path]:
    """An empty folder with the immutable attribute: even root cannot create anything in it."""
    folder = tmp_path / "immutable"
    folder.mkdir()
    done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"chattr +i failed here: {done.stderr.decode().strip()}")
    yield folder
    subprocess.run(["chattr", "-i", str(folder)], check=False)


# --- not root ---------------------------------------------------------------------------------


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("command", ["install", "rollback", "uninstall"])
def test_non_root_change_of_the_real_host_is_refused_before_any_work(
    clis: Dict[str, List[str]], bundle: Path, signer: KeyFiles, side: str, command: str
) -> None:
    args = install_args(bundle, signer) if command == "install" else [command]
    watched = [Path("/usr/local/bin/k3s"), Path("/var/lib/k3bundle")]
    before = [path.exists() for path in watched]
    stderr = one_error(run(clis[side], *args, as_user=True), InstallError.exit_code)
    assert stderr.splitlines()[0] == NOT_ROOT_LINE
    assert [path.exists() for path in watched] == before


@pytest.mark.parametrize("side", SIDES)
def test_non_root_install_into_a_folder_it_may_not_write_says_run_as_root(
    clis: Dict[str, List[str]], bundle: Path, signer: KeyFiles, shared: Path, side: str
) -> None:
    if not IS_ROOT:
        pytest.skip("needs root to make a folder that the user running the test may not write")
    root = shared / f"root-owned-{side}"
    root.mkdir(mode=0o755)
    stderr = one_error(run(clis[side], *install_args(bundle, signer, root), as_user=True), 7)
    assert "Permission denied" in stderr.splitlines()[0]
    assert "You are not root: run as root (sudo), or use --root DIR" in stderr
    assert snapshot(root) == {}


@pytest.mark.parametrize("side", SIDES)
def test_non_root_install_into_its_own_folder_is_allowed(
    clis: Dict[str, List[str]], bundle: Path, signer: KeyFiles, shared: Path, side: str
) -> None:
    root = shared / f"own-{side}"
    root.mkdir()
    if IS_ROOT:
        shutil.chown(root, "nobody")
    done = run(clis[side], *install_args(bundle, signer, root), as_user=True)
    assert done.returncode == 0, done.stderr
    assert (root / "usr/local/bin/k3s").is_file()


@pytest.mark.parametrize("side", SIDES)
def test_unreadable_public_key_is_named_with_exit_5(
    clis: Dict[str, List[str]], bundle: Path, shared: Path, side: str
) -> None:
    if not IS_ROOT:
        pytest.skip("needs root to make a key file that the user running the test may not read")
    secret = shared / f"secret-{side}.pub"
    secret.write_text("not for you\n")
    secret.chmod(0o600)
    done = run(clis[side], "verify", str(bundle), "--pubkey", str(secret), as_user=True)
    first = one_error(done, 5).splitlines()[0]
    assert first == f"Error: cannot read public key {secret}: Permission denied"


# --- the filesystem says no, even to root ---------------------------------------------------


@needs_root
@pytest.mark.parametrize("side", SIDES)
def test_full_filesystem_says_it_is_full_and_changes_nothing(
    clis: Dict[str, List[str]],
    bundle: Path,
    signer: KeyFiles,
    tmpfs: Path,
    side: str,
) -> None:
    # No inode left (the root folder has the only one): the free-space pre-flight counts bytes,
    # so this ENOSPC reaches the write itself.
    root = mount(tmpfs, "size=64m,nr_inodes=1")
    stderr = one_error(run(clis[side], *install_args(bundle, signer, root)), 7)
    assert "No space left on device" in stderr.splitlines()[0]
    assert "The filesystem is full" in stderr
    assert "as root" not in stderr
    assert snapshot(root) == {}


@needs_root
@pytest.mark.parametrize("side", SIDES)
def test_read_only_filesystem_says_read_only_and_changes_nothing(
    clis: Dict[str, List[str]],
    bundle: Path,
    signer: KeyFiles,
    tmpfs: Path,
    side: str,
) -> None:
    root = mount(tmpfs, "size=64m")
    subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)
    stderr = one_error(run(clis[side], *install_args(bundle, signer, root)), 7)
    assert "Read-only file system" in stderr.splitlines()[0]
    assert "mounted read-only: remount it read-write" in stderr
    assert "as root" not in stderr
    assert snapshot(root) == {}


@needs_root
@pytest.mark.parametrize("side", SIDES)
def test_immutable_root_as_root_points_at_the_attribute_not_at_sudo(
    clis: Dict[str, List[str]], bundle: Path, signer: KeyFiles, immutable: Path, side: str
) -> None:
    stderr = one_error(run(clis[side], *install_args(bundle, signer, immutable)), 7)
    assert "Operation not permitted" in stderr.splitlines()[0]
    assert "immutable attribute (lsattr)" in stderr
    assert "run as root" not in stderr.lower()
    assert snapshot(immutable) == {}


@needs_root
def test_installer_zipapp_into_an_immutable_folder_names_the_output(immutable: Path) -> None:
    target = immutable / "k3bundle-install.pyz"
    stderr = one_error(run([K3BUNDLE], "installer-zipapp", "-o", str(target)), 7)
    assert stderr.splitlines()[0] == f"Error: cannot write {target}: Operation not permitted"
    assert "immutable attribute" in stderr
    assert snapshot(immutable) == {}


@needs_root
def test_keygen_into_an_immutable_folder_names_the_key(immutable: Path) -> None:
    stderr = one_error(run([K3BUNDLE], "keygen", "-o", str(immutable / "site")), 7)
    assert stderr.splitlines()[0] == (
        f"Error: cannot write {immutable / 'site.key'}: Operation not permitted"
    )
    assert snapshot(immutable) == {}


# --- wrong paths ----------------------------------------------------------------------------


def test_keygen_into_a_missing_folder_is_a_usage_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing" / "dir"
    stderr = one_error(run([K3BUNDLE], "keygen", "-o", str(missing / "x")), 2)
    assert stderr.splitlines()[0] == f"Error: folder {missing} does not exist; create it first"
    assert snapshot(tmp_path) == {}


@pytest.mark.parametrize("side", SIDES)
def test_missing_bundle_is_named(clis: Dict[str, List[str]], tmp_path: Path, side: str) -> None:
    missing = tmp_path / "nope.tar"
    done = run(clis[side], "inspect", str(missing))
    assert done.returncode not in (0, 1), done.stderr  # a documented error, not a bug
    assert one_error(done, done.returncode).splitlines()[0] == (
        f"Error: bundle {missing} does not exist"
    )


@pytest.mark.parametrize("side", SIDES)
def test_missing_public_key_is_named_with_exit_5(
    clis: Dict[str, List[str]], bundle: Path, tmp_path: Path, side: str
) -> None:
    missing = tmp_path / "nope.pub"
    stderr = one_error(run(clis[side], "verify", str(bundle), "--pubkey", str(missing)), 5)
    assert stderr.splitlines()[0] == (
        f"Error: cannot read public key {missing}: No such file or directory"
    )


# --- -v anywhere ----------------------------------------------------------------------------


def _traceback_then_error(done: subprocess.CompletedProcess[str], code: int) -> None:
    assert done.returncode == code, done.stderr
    assert done.stderr.startswith(TRACEBACK), done.stderr
    assert "\nError: " in done.stderr.split(TRACEBACK, 1)[1]


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("where", ["before", "after-command", "last", "long"])
def test_verbose_anywhere_on_a_host_command_shows_the_traceback(
    clis: Dict[str, List[str]], tmp_path: Path, side: str, where: str
) -> None:
    missing = str(tmp_path / "nope.tar")
    args = {
        "before": ["-v", "inspect", missing],
        "after-command": ["inspect", "-v", missing],
        "last": ["inspect", missing, "-v"],
        "long": ["--verbose", "inspect", missing],
    }[where]
    quiet = run(clis[side], "inspect", missing)
    one_error(quiet, quiet.returncode)
    _traceback_then_error(run(clis[side], *args), quiet.returncode)


@pytest.mark.parametrize("where", ["before", "after-command", "last"])
def test_verbose_anywhere_on_keygen_shows_the_traceback(tmp_path: Path, where: str) -> None:
    name = str(tmp_path / "missing" / "x")
    args = {
        "before": ["-v", "keygen", "-o", name],
        "after-command": ["keygen", "-v", "-o", name],
        "last": ["keygen", "-o", name, "-v"],
    }[where]
    _traceback_then_error(run([K3BUNDLE], *args), 2)


@pytest.mark.parametrize("where", ["none", "before", "after"])
def test_verbose_before_or_after_build_shows_the_traceback(tmp_path: Path, where: str) -> None:
    build = ["build", "--offline", "--version", "v1.31.4+k3s1", "--arch", "amd64"]
    build += ["--cache-dir", str(tmp_path / "cache"), "-o", str(tmp_path / "out")]
    args = {"none": build, "before": ["-v", *build], "after": [*build, "-v"]}[where]
    done = run([K3BUNDLE], *args)
    if where == "none":
        assert done.returncode == 8 and TRACEBACK not in done.stderr, done.stderr
        assert "Error: --offline:" in done.stderr
    else:
        _traceback_then_error(_without_warnings(done), 8)


def _without_warnings(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    stderr = "".join(
        line for line in done.stderr.splitlines(True) if not line.startswith("Warning:")
    )
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout, stderr)


def test_verbose_before_a_host_command_goes_to_the_installer_directly() -> None:
    assert entry._is_host_command(["-v", "--verbose", "install", "x.tar"])
    assert not entry._is_host_command(["-v", "build"])
    assert not entry._is_host_command(["--version"])


# --- stdout's reader went away --------------------------------------------------------------


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("what", ["status", "inspect", "help", "install-help"])
def test_closed_stdout_exits_141_without_a_word(
    clis: Dict[str, List[str]], bundle: Path, tmp_path: Path, side: str, what: str
) -> None:
    args = {
        "status": ["status", "--root", str(tmp_path)],
        "inspect": ["inspect", str(bundle)],
        "help": ["--help"],
        "install-help": ["install", "--help"],
    }[what]
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first byte, as after `| head -1`
    try:
        done = run(clis[side], *args, stdout=write)
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (BROKEN_PIPE, "")


def test_status_piped_into_head_prints_one_line_and_no_traceback(tmp_path: Path) -> None:
    script = f'"{K3BUNDLE}" status --root "{tmp_path}" | head -1; "{K3BUNDLE}" --help | head -1'
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=False)
    assert done.stdout.splitlines() == [
        f"k3s is not installed by k3bundle under {tmp_path}",
        "Usage: k3bundle [OPTIONS] COMMAND [ARGS]...",
    ]
    assert done.stderr == ""


# --- bugs: the catch-all --------------------------------------------------------------------


def _boom(*args: object, **kwargs: object) -> None:
    raise RuntimeError("boom\nsecond line")


def test_unexpected_exception_in_the_installer_is_one_line_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(installer_cli, "status", _boom)
    assert installer_cli.main(["status", "--root", str(tmp_path)]) == 1
    assert capsys.readouterr().err == (
        "Error: unexpected RuntimeError: boom \u2014 this is a bug in k3bundle; "
        "run again with --verbose for a traceback\n"
    )


def test_unexpected_exception_with_verbose_shows_the_traceback_first(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(installer_cli, "status", _boom)
    assert installer_cli.main(["status", "--root", str(tmp_path), "-v"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(TRACEBACK)
    assert err.endswith("this is a bug in k3bundle; please report it with the traceback above\n")


def test_unexpected_exception_in_a_click_command_is_one_line_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from k3bundle.bundler import keys

    monkeypatch.setattr(keys, "generate", _boom)
    with pytest.raises(SystemExit) as exited:
        bundler_cli.main(["keygen", "-o", str(tmp_path / "k")])
    assert exited.value.code == 1
    assert capsys.readouterr().err.startswith("Error: unexpected RuntimeError: boom \u2014 ")
    assert list(tmp_path.iterdir()) == []


# --- the service manager --------------------------------------------------------------------


def test_failing_service_command_names_it_and_its_last_error_line() -> None:
    script = "echo 'context' >&2; echo 'Failed to start k3s.service: Unit not found.' >&2; exit 5"
    with pytest.raises(InstallError) as raised:
        run_command(["sh", "-c", script])
    assert raised.value.message == (
        f"'sh -c {script}' failed (exit 5): Failed to start k3s.service: Unit not found."
    )
    assert raised.value.exit_code == 7


def test_missing_service_manager_names_the_command() -> None:
    with pytest.raises(InstallError) as raised:
        run_command(["k3bundle-no-such-systemctl", "daemon-reload"])
    assert raised.value.message == (
        "cannot run 'k3bundle-no-such-systemctl daemon-reload': No such file or directory"
    )
