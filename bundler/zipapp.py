"""Write the standalone installer: one reproducible zipapp holding only the installer package.

Beside each source the zipapp carries its bytecode for the Python that runs the build (a
hash-based .pyc that zipimport checks against the source next to it), so a host with that
Python starts the installer without compiling it (40-70 ms of every run, measured on 3.11). A
host with another Python finds bytecode of a foreign version, which zipimport passes over, and
compiles the sources as before. The bytecode is compiled by a fresh interpreter with a fixed
hash seed and nothing of the environment: the same inputs and the same Python version give the
same zipapp, byte for byte.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Dict

import k3bundle.installer
from k3bundle.installer.errors import build_error

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
# Run by `python -B -s -S -c` with PATH and PYTHONHASHSEED=0 as its whole environment (not -I:
# its -E ignores the seed, and before Python 3.11 a frozenset constant's order follows it).
# Reads (name, source) records from stdin and writes each one's checked hash-based .pyc
# (PEP 552: magic, flags 0b11, the source's hash, the marshalled code); every record is a 4-byte
# little-endian length and the bytes. The name (the member's path in the zipapp) is the code's
# file name in tracebacks.
_COMPILE = """
import sys
sys.path[:] = [entry for entry in sys.path if entry]  # nothing from the working folder
import importlib.util, marshal
data, at, out = sys.stdin.buffer.read(), 0, sys.stdout.buffer
def take():
    global at
    size = int.from_bytes(data[at:at + 4], "little")
    at += 4 + size
    return data[at - size:at]
while at < len(data):
    name, source = take().decode("utf-8"), take()
    code = compile(source, name, "exec", dont_inherit=True, optimize=0)
    pyc = importlib.util.MAGIC_NUMBER + (3).to_bytes(4, "little")
    pyc += importlib.util.source_hash(source) + marshal.dumps(code)
    out.write(len(pyc).to_bytes(4, "little") + pyc)
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
    fresh interpreter (no site, no user or working folder, PYTHONHASHSEED=0). Empty when no
    such interpreter runs (a frozen k3bundle has no python to start): the zipapp then carries
    its sources only, and works as before."""
    if not sys.executable:
        return {}
    records = [
        _record(part) for name, source in sources.items() for part in (name.encode(), source)
    ]
    env = {
        k: v for k, v in os.environ.items() if k in ("PATH", "SYSTEMROOT")
    }  # Windows: SYSTEMROOT
    env["PYTHONHASHSEED"] = "0"
    try:
        done = subprocess.run(
            [sys.executable, "-B", "-s", "-S", "-c", _COMPILE],
            input=b"".join(records),
            capture_output=True,
            env=env,
            check=False,
            timeout=120,
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    found: Dict[str, bytes] = {}
    data, at = done.stdout, 0
    for name in sources:
        size = int.from_bytes(data[at : at + 4], "little")
        found[name], at = data[at + 4 : at + 4 + size], at + 4 + size
    whole = done.returncode == 0 and at == len(data) and all(found.values())
    return found if whole else {}


def _record(data: bytes) -> bytes:
    return len(data).to_bytes(4, "little") + data


def _add(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_EPOCH)
    info.external_attr = 0o644 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    archive.writestr(info, data)
