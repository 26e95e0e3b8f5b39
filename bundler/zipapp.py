"""Write the standalone installer: one reproducible zipapp holding only the installer package.

Beside each source the zipapp carries its bytecode for the Python that runs the build (a
hash-based .pyc, always written with its very source), so a host with that Python starts the
installer without compiling it (40-70 ms of every run, measured on 3.11). A host with another
Python finds bytecode of a foreign version, which zipimport passes over, and compiles the
sources as before. The bytecode is compiled by a fresh interpreter with a fixed hash seed and
nothing of the environment: the same inputs and the same Python release give the same zipapp,
byte for byte.
"""

from __future__ import annotations

import marshal
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Dict

import k3bundle.installer
from k3bundle.installer.errors import InstallError, build_error

SHEBANG = b"#!/usr/bin/env python3\n"
MAIN = (
    '"""k3bundle standalone installer: python3 k3bundle-install.pyz install|verify|inspect ..."""\n'
    "import sys\n\n"
    "from k3bundle.installer import readahead\n\n"
    "readahead.start(sys.argv[1:])  # the stick reads while the installer is imported\n"
    "from k3bundle.installer.cli import main\n\n"
    'sys.exit(main(prog="k3bundle-install.pyz"))\n'
)
_EPOCH = (1980, 1, 1, 0, 0, 0)
# Run by `python -B -s -S -c` with PYTHONHASHSEED=0 and nothing else of the environment that
# Python reads (not -I: its -E ignores the seed, and before 3.11 a frozenset constant's order
# follows it). Reads a marshalled list of (name, source) and writes a marshalled list of each
# one's unchecked hash-based .pyc (PEP 552: magic, flags 0b01, the source's hash, the code).
# Unchecked: zipimport of Python 3.8.0 and 3.8.1 raises NameError checking a checked one
# (bpo-39033), and a .pyc in the zipapp always comes with its very source. The code's file name
# is the member's path under "k3bundle-install.pyz/": never a file, so a traceback's lines come
# from the zipapp, not from a like-named file in the working folder.
_COMPILE = """
import sys
sys.path[:] = [entry for entry in sys.path if entry]  # nothing from the working folder
import importlib.util, marshal
out = []
for name, source in marshal.loads(sys.stdin.buffer.read()):
    code = compile(source, "k3bundle-install.pyz/" + name, "exec", dont_inherit=True, optimize=0)
    pyc = importlib.util.MAGIC_NUMBER + (1).to_bytes(4, "little")
    out.append(pyc + importlib.util.source_hash(source) + marshal.dumps(code))
sys.stdout.buffer.write(marshal.dumps(out))
"""


def installer_sources() -> list[Path]:
    """The installer's Python files (its sub-packages included), sorted by their path in it."""
    folder = Path(k3bundle.installer.__file__).parent
    return sorted(folder.rglob("*.py"), key=lambda path: path.relative_to(folder).as_posix())


def write_zipapp(target: Path) -> Path:
    """Write k3bundle-install.pyz to `target`: the installer package plus a __main__."""
    try:
        return _write(target)
    except OSError as exc:  # name -o, not the temporary file next to it
        raise build_error(exc, "write", target) from None


def _write(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(k3bundle.installer.__file__).parent
    sources = {
        f"k3bundle/installer/{path.relative_to(folder).as_posix()}": path.read_bytes()
        for path in installer_sources()
    }
    bytecode = compiled(sources)
    tmp = target.with_name(f".{target.name}.tmp")
    with open(tmp, "wb") as raw:
        raw.write(SHEBANG)
        with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            _add(archive, "__main__.py", MAIN.encode())
            _add(archive, "k3bundle/__init__.py", b'"""k3bundle (standalone installer)."""\n')
            for name, source in sources.items():
                _add(archive, name, source)
                if name in bytecode:
                    _add(archive, f"{name[:-3]}.pyc", bytecode[name])
    os.chmod(tmp, 0o755)
    os.replace(tmp, target)
    return target


def compiled(sources: Dict[str, bytes]) -> Dict[str, bytes]:
    """{member name: .pyc bytes} of each {member name: source}, compiled by this Python in a
    fresh interpreter (no site, no user or working folder, PYTHONHASHSEED=0).

    Empty only for a frozen k3bundle (its executable is no python): the zipapp then carries its
    sources alone. Anywhere else a failure stops the build, naming it: a zipapp quietly without
    its bytecode would be other bytes for the same inputs.
    """
    if not sys.executable or getattr(sys, "frozen", False):
        return {}
    # PYTHONHOME: where some Pythons find their standard library; SYSTEMROOT: Windows needs it
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "SYSTEMROOT", "PYTHONHOME")}
    env["PYTHONHASHSEED"] = "0"
    command = [sys.executable, "-B", "-s", "-S", "-c", _COMPILE]
    try:
        done = subprocess.run(
            command,
            input=marshal.dumps(list(sources.items())),
            capture_output=True,
            env=env,
            timeout=600,  # it takes about 0.1 s
        )
        pycs = marshal.loads(done.stdout) if done.returncode == 0 else None
        failure = done.stderr.decode(errors="replace")
    except (OSError, subprocess.SubprocessError, ValueError, EOFError, TypeError) as exc:
        pycs, failure = None, str(exc)
    if isinstance(pycs, list) and len(pycs) == len(sources):
        return dict(zip(sources, pycs))
    last = (failure.strip().splitlines() or ["no output"])[-1]
    raise InstallError(
        f"cannot compile the installer's bytecode with {sys.executable}: {last}",
        "Check that this Python runs (python -B -s -S -c pass), then build again.",
    )


def _add(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_EPOCH)
    info.external_attr = 0o644 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    archive.writestr(info, data)
