"""Crash safety: SIGKILL the real installer process at many points of an install and an upgrade.

Nothing in the product helps: the installer runs as `python -m k3bundle.installer install` in a
subprocess and is killed from outside, in two complementary ways.

* At exact system calls: strace's fault injection (`-e inject=SYSCALL:signal=KILL:when=N`) kills
  the installer on entry to its N-th call of SYSCALL, before the call runs. A traced dry run lists
  every openat/write/rename/link/unlink/symlink/mkdir/... call first; the kills cover every
  rename, link, symlink and unlink the installer makes (the whole commit) and calls spread over
  the staging (openat/write), the verification and the interpreter's start-up.
* At times: the installer of a bigger bundle is killed after delays spread over its measured run,
  some counted from its start, some from the moment its journal appears.

After each kill the root must be exactly one of two states once `status` (which recovers first)
has run: the old installation (nothing, for a fresh install) or the new one, complete; `status`
must say which; no staged file may be left; and installing again must give the new state.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytest

from tests.helpers import KeyFiles, make_bundle, make_keys, run_installer, snapshot

OLD_VERSION = "v1.31.4+k3s1"
NEW_VERSION = "v1.32.0+k3s1"
DEFAULTS = {"config": {"write-kubeconfig-mode": "0644"}}
STATE = "var/lib/k3bundle"
JOURNAL = f"{STATE}/journal.json"
STAGED_SUFFIX = ".k3bundle-tmp"
SMALL_IMAGES = 2_000_000  # strace runs: two 1 MiB writes per image archive
BIG_IMAGES = 32_000_000  # timed kills: staging long enough to land kills inside it

# Every call that can change a file, and the ones staging makes; `?` skips names this
# architecture lacks (arm64 has no rename/link/unlink/mkdir, only the *at forms).
TRACED = (
    "openat", "write", "fsync", "fchmod", "chmod", "fchmodat", "mkdir", "mkdirat", "rmdir",
    "rename", "renameat", "renameat2", "link", "linkat", "symlink", "symlinkat", "unlink",
    "unlinkat",
)  # fmt: skip
# Calls that change the tree: the commit is made of these, so every one of them is a kill point.
MUTATING = {
    "rename", "renameat", "renameat2", "link", "linkat", "symlink", "symlinkat", "unlink",
    "unlinkat", "rmdir",
}  # fmt: skip
SPREAD_POINTS = 10  # other calls (openat, write, mkdir, ...) of the operation, evenly spread
STARTUP_POINTS = 3  # calls before the installer first looks at the root (imports)
# Deterministic runs: the same calls in the same order every time.
CHILD_ENV = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}

Tree = Dict[str, Tuple[int, str]]


@dataclass(frozen=True)
class Expected:
    """One of the two allowed states: files and links, the kept generation, what status says."""

    name: str
    tree: Tree
    previous: Tree
    status: Dict[str, Any]


@dataclass(frozen=True)
class Scenario:
    """A command to kill: which bundle it installs over which starting root."""

    bundle: Path
    base: Optional[Path]  # the root before the command; None: an empty folder
    old: Expected
    new: Expected
    pubkey: Path

    def argv(self, root: Path) -> List[str]:
        """The installer command line, as a user types it."""
        return [sys.executable, "-m", "k3bundle.installer", *self.args(root)]

    def args(self, root: Path) -> List[str]:
        """The install arguments."""
        trust = ["--pubkey", str(self.pubkey), "--arch", "amd64"]
        return ["install", str(self.bundle), "--root", str(root), *trust]

    def prepare(self, root: Path) -> None:
        """Reset ROOT to the starting state."""
        shutil.rmtree(root, ignore_errors=True)
        if self.base is None:
            root.mkdir()
        else:
            shutil.copytree(self.base, root, symlinks=True)


Scenarios = Dict[Tuple[str, str], Scenario]  # (install|upgrade, small|big)


@dataclass(frozen=True)
class Call:
    """One system call of the traced installer: its name, its number among calls of that name."""

    name: str
    nth: int
    text: str  # the call with its arguments, without the result


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory: pytest.TempPathFactory) -> Scenarios:
    """Fresh install and upgrade, each with small (strace) and big (timed) bundles."""
    folder = tmp_path_factory.mktemp("crash")
    signer = make_keys(folder / "keys")
    found: Scenarios = {}
    for size_name, size in (("small", SMALL_IMAGES), ("big", BIG_IMAGES)):
        old_bundle, new_bundle = (
            make_bundle(
                folder / f"{size_name}-{version}", ("amd64",), signer, install=DEFAULTS,
                image_size=size, version=version, image_format=fmt,
            ).files[0]
            for version, fmt in ((OLD_VERSION, "tar.zst"), (NEW_VERSION, "tar.gz"))
        )  # fmt: skip
        empty = folder / f"{size_name}-empty"
        empty.mkdir()
        v1, v2 = folder / f"{size_name}-v1", folder / f"{size_name}-v2"
        _install_clean(old_bundle, v1, signer)
        _install_clean(old_bundle, v2, signer)
        _install_clean(new_bundle, v2, signer)
        nothing, first, second = (
            _expected(name, root) for name, root in (("empty", empty), ("v1", v1), ("v2", v2))
        )
        assert first.status["k3s_version"] == OLD_VERSION and first.status["intact"]
        assert second.status["k3s_version"] == NEW_VERSION and second.status["intact"]
        assert second.status["previous"] == {"k3s_version": OLD_VERSION}
        found["install", size_name] = Scenario(old_bundle, None, nothing, first, signer.public)
        found["upgrade", size_name] = Scenario(new_bundle, v1, first, second, signer.public)
    return found


def _install_clean(bundle: Path, root: Path, signer: KeyFiles) -> None:
    result = run_installer(
        "install", str(bundle), "--root", str(root), "--pubkey", str(signer.public),
        "--arch", "amd64",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def _expected(name: str, root: Path) -> Expected:
    return Expected(name, tree(root), previous_tree(root), status_of(root))


# --- the state of a root --------------------------------------------------------------------


def tree(root: Path) -> Tree:
    """Every file, symlink and folder under ROOT (mode, content), less the journal's bookkeeping:
    the journal itself and the kept previous generation (compared on its own)."""
    return {
        path: value
        for path, value in snapshot(root).items()
        if not path.startswith((JOURNAL, f"{STATE}/previous"))
    }


def previous_tree(root: Path) -> Tree:
    """The kept previous generation (what rollback restores)."""
    folder = root / STATE / "previous"
    return {p: v for p, v in snapshot(folder).items() if v[1] != "dir"}


def status_of(root: Path) -> Dict[str, Any]:
    """`status --root ROOT --json`, without the root's own name."""
    result = run_installer("status", "--root", str(root), "--json")
    summary: Dict[str, Any] = json.loads(result.stdout)
    assert result.returncode == (0 if summary["installed"] is False or summary["intact"] else 9)
    summary.pop("root")
    return summary


def journal_state(root: Path) -> Optional[str]:
    """The step an interrupted command reached, as its journal says (None: no journal)."""
    try:
        doc = json.loads((root / JOURNAL).read_text("utf-8"))
    except FileNotFoundError:  # killed while the first journal was written, or none was
        return "unwritten" if (root / f"{JOURNAL}.tmp").exists() else None
    return str(doc.get("state"))


def staged_leftovers(root: Path) -> List[str]:
    """Files under temporary names that a commit or a recovery should have removed."""
    return sorted(p for p in snapshot(root) if p.endswith(STAGED_SUFFIX) or p.endswith(".tmp"))


def check_after_kill(scenario: Scenario, root: Path, where: str) -> str:
    """`status` only reports, `recover` finishes or undoes; then demand exactly the old or the
    new state, and install again."""
    pending = journal_state(root)
    before = snapshot(root)
    seen = run_installer("status", "--root", str(root), "--json")
    assert snapshot(root) == before, (where, "status is read-only")
    assert ("interrupted" in json.loads(seen.stdout)) == (pending is not None), (where, pending)
    recovered = run_installer("recover", "--root", str(root))
    assert recovered.returncode == 0, (where, recovered.stderr)
    summary = status_of(root)
    state = tree(root)
    if pending is None:  # no journal: nothing to finish (recover removes only a lone lock file)
        assert state in (scenario.old.tree, scenario.new.tree), (where, "no journal", state)
    matches = [e for e in (scenario.old, scenario.new) if e.tree == state]
    assert len(matches) == 1, (where, pending, _diff(state, scenario.old.tree, scenario.new.tree))
    landed = matches[0]
    assert summary == landed.status, (where, pending, summary, landed.status)
    assert previous_tree(root) == landed.previous, (where, pending)
    assert not (root / JOURNAL).exists() and not (root / STATE / "previous.new").exists(), where
    assert not staged_leftovers(root), (where, pending, staged_leftovers(root))
    # The next install always reaches the new state, complete.
    again = run_installer(*scenario.args(root))
    assert again.returncode == 0, (where, again.stderr)
    assert tree(root) == scenario.new.tree, where
    assert previous_tree(root) == scenario.new.previous, where
    assert status_of(root) == scenario.new.status, where
    assert not staged_leftovers(root), where
    return f"{pending}->{landed.name}"


def _diff(state: Tree, old: Tree, new: Tree) -> Dict[str, List[str]]:
    def differ(other: Tree) -> List[str]:
        return sorted(p for p in set(state) | set(other) if state.get(p) != other.get(p))

    return {"unlike old": differ(old), "unlike new": differ(new)}


# --- (a) kills at exact system calls, by strace -----------------------------------------------


def _strace_works() -> bool:
    if shutil.which("strace") is None:
        return False
    done = subprocess.run(
        ["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=openat", "true"],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


needs_strace = pytest.mark.skipif(
    not _strace_works(), reason="strace is missing or cannot trace here (ptrace not allowed)"
)
_CALL = re.compile(r"^(\d+)\s+([a-z0-9_]+)\((.*)$")


def parse_trace(path: Path) -> List[Call]:
    """The main process's calls in strace output, numbered per call name from 1 as `when=` is."""
    calls: List[Call] = []
    counts: Counter[str] = Counter()
    main_pid = None
    for line in path.read_text(errors="replace").splitlines():
        match = _CALL.match(line)
        if match is None:  # '<... resumed>', '+++ killed +++', signals
            continue
        pid, name, rest = match.groups()
        main_pid = main_pid or pid
        if pid != main_pid:
            continue
        counts[name] += 1
        # A call another thread interrupts is printed '<unfinished ...>' without its closing
        # parenthesis, and the hash workers open and close files of their own, so descriptor
        # numbers vary: compare the arguments only, with any descriptor written as FD.
        text = re.split(r" = | <unfinished", f"{name}({rest}")[0].rstrip().removesuffix(")")
        text = re.sub(r"^(\w+)\(\d+(?=[,)]|$)", r"\1(FD", text)
        calls.append(Call(name, counts[name], text))
    return calls


def trace_calls(scenario: Scenario, root: Path, out: Path) -> List[Call]:
    """Every traced call of one uninterrupted run (the run's result is checked too)."""
    scenario.prepare(root)
    names = ",".join(f"?{name}" for name in TRACED)
    done = subprocess.run(
        ["strace", "-f", "-qq", "-o", str(out), "-e", f"trace={names}", *scenario.argv(root)],
        capture_output=True,
        env=CHILD_ENV,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert tree(root) == scenario.new.tree
    return parse_trace(out)


def kill_points(calls: Sequence[Call], root: Path) -> List[Call]:
    """Every tree-changing call of the operation, others spread over it, a few at start-up, the
    last call."""
    start = next(i for i, call in enumerate(calls) if str(root) in call.text)
    startup, operation = calls[:start], calls[start:]
    others = [c for c in operation if c.name not in MUTATING]
    points = [c for c in operation if c.name in MUTATING]
    points += _spread(others, SPREAD_POINTS) + _spread(startup, STARTUP_POINTS)
    points.append(calls[-1])  # after the commit (the summary printed on stdout)
    return sorted(set(points), key=calls.index)


def _spread(calls: Sequence[Call], count: int) -> List[Call]:
    if len(calls) <= count:
        return list(calls)
    return [calls[(2 * i + 1) * len(calls) // (2 * count)] for i in range(count)]


def kill_at(scenario: Scenario, root: Path, call: Call, out: Path) -> Call:
    """Run the installer, SIGKILLed on entry to CALL; return the call it was killed at."""
    inject = f"inject={call.name}:signal=KILL:when={call.nth}"
    strace = ["strace", "-f", "-qq", "-o", str(out), "-e", f"trace={call.name}", "-e", inject]
    done = subprocess.run(
        [*strace, *scenario.argv(root)],
        capture_output=True,
        env=CHILD_ENV,
        check=False,
    )
    assert done.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL), (call, done.stderr)
    assert "+++ killed by SIGKILL +++" in out.read_text()
    return parse_trace(out)[-1]


@needs_strace
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["install", "upgrade"])
def test_sigkill_at_system_calls_leaves_old_or_new(
    kind: str, scenarios: Scenarios, tmp_path: Path
) -> None:
    scenario = scenarios[kind, "small"]
    root = tmp_path / "root"
    calls = trace_calls(scenario, root, tmp_path / "trace-1")
    assert trace_calls(scenario, root, tmp_path / "trace-2") == calls, "runs are not repeatable"
    points = kill_points(calls, root)
    assert len(points) >= 20
    outcomes: Counter[str] = Counter()
    for call in points:
        scenario.prepare(root)
        landed = kill_at(scenario, root, call, tmp_path / "kill-trace")
        assert landed == call, "the kill did not land on the call it aimed at"
        outcomes[check_after_kill(scenario, root, f"{kind}: killed at {call}")] += 1
    # Kills landed before the journal, in staging, in the backup and in the apply step; the
    # early ones left the old state and the late ones the new one.
    assert {"staging->" + scenario.old.name, "backup->" + scenario.new.name} <= set(outcomes)
    assert {"apply->" + scenario.new.name, "None->" + scenario.old.name} <= set(outcomes)
    assert "None->" + scenario.new.name in outcomes  # after the journal was removed


# --- (b) kills at times -------------------------------------------------------------------------


def run_killed(
    scenario: Scenario, root: Path, delay: Optional[float], after_journal: bool
) -> Tuple[Optional[int], float, float]:
    """Start the installer; SIGKILL it DELAY seconds after its start (or its journal's first
    appearance). Return its exit status and when (from its start) the journal first appeared
    and the run ended."""
    journal = root / JOURNAL
    started = time.monotonic()
    proc = subprocess.Popen(
        scenario.argv(root), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=CHILD_ENV
    )
    seen = None
    if delay is None or after_journal:
        while proc.poll() is None and seen is None:
            if journal.exists():
                seen = time.monotonic()
    anchor = seen if after_journal and seen is not None else started
    if delay is not None:
        time.sleep(max(0.0, anchor + delay - time.monotonic()))
        proc.send_signal(signal.SIGKILL)  # os.kill, unless the run already ended
    _, err = proc.communicate()
    if proc.returncode not in (0, -signal.SIGKILL):
        pytest.fail(err.decode(errors="replace"))
    return proc.returncode, (seen or started) - started, time.monotonic() - started


def _timings(scenario: Scenario, root: Path) -> Tuple[float, float]:
    """When the journal first appears and when a run ends, the faster of two runs."""
    runs = []
    for _ in range(2):
        scenario.prepare(root)
        code, journal_at, ended = run_killed(scenario, root, None, False)
        assert code == 0 and tree(root) == scenario.new.tree
        runs.append((journal_at, ended))
    return min(runs, key=lambda run: run[1])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["install", "upgrade"])
def test_sigkill_at_times_leaves_old_or_new(
    kind: str, scenarios: Scenarios, tmp_path: Path
) -> None:
    scenario = scenarios[kind, "big"]
    root = tmp_path / "root"
    journal_at, ended = _timings(scenario, root)
    window = ended - journal_at
    points = [(ended * (i + 1) / 6, False) for i in range(6)]  # over the whole run
    points += [(window * i / 7, True) for i in range(8)]  # over staging and commit
    killed: Counter[str] = Counter()
    for delay, after_journal in points:
        scenario.prepare(root)
        code, _, _ = run_killed(scenario, root, delay, after_journal)
        where = f"{kind}: killed {delay:.3f}s after " + (
            "its journal" if after_journal else "start"
        )
        outcome = check_after_kill(scenario, root, where)
        killed[outcome if code else "finished"] += 1
    assert len(points) >= 14
    # The kills counted from the journal's appearance caught the installer mid-operation.
    assert sum(n for outcome, n in killed.items() if not outcome.startswith(("None", "fin"))) >= 1


def test_kill_points_cover_the_whole_commit() -> None:
    """The selection keeps every tree-changing call and spreads the rest (a unit check)."""
    calls = [Call("openat", i, f"openat({i})") for i in range(1, 41)]
    calls += [Call("rename", 1, "rename(/r/a)"), Call("write", 1, "write(/r/x)")]
    calls += [Call("write", i, f"write({i})") for i in range(2, 30)]
    calls += [Call("rename", 2, "rename(/r/b)"), Call("unlink", 1, "unlink(/r/c)")]
    calls += [Call("write", 30, "write(1, done)")]
    points = kill_points(calls, Path("/r"))
    assert [c.text for c in points if c.name in MUTATING] == [
        "rename(/r/a)", "rename(/r/b)", "unlink(/r/c)",
    ]  # fmt: skip
    others = SPREAD_POINTS + STARTUP_POINTS + 1
    assert len([c for c in points if c.name not in MUTATING]) == others
    assert points[-1] == calls[-1]
    assert points == sorted(points, key=calls.index)


def test_a_first_journal_cut_off_before_its_rename_is_cleaned_up(tmp_path: Path) -> None:
    """A kill between writing the first journal and renaming it into place (strace's
    'unwritten' case, also without strace): the next command removes it and its folders."""
    state = tmp_path / STATE
    state.mkdir(parents=True)
    dirs = ["/var", "/var/lib", "/var/lib/k3bundle"]  # target paths, as journals hold them
    (state / "journal.json.tmp").write_text(
        json.dumps({"state": "staging", "staged": [], "dirs": dirs}) + "\n"
    )
    assert "interrupted" in status_of(tmp_path)
    assert run_installer("recover", "--root", str(tmp_path)).returncode == 0
    assert status_of(tmp_path) == {"installed": False}
    assert snapshot(tmp_path) == {}
