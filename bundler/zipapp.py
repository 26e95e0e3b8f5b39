"""Write the standalone installer: one reproducible zipapp holding only the installer package."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import k3bundle.installer
from k3bundle.installer.errors import build_error

SHEBANG = b"#!/usr/bin/env python3\n"
MAIN = (
    '"""k3bundle standalone installer: python3 k3bundle-install.pyz install|verify|inspect ..."""\n'
    "import sys\n\n"
    "from k3bundle.installer.cli import main\n\n"
    'sys.exit(main(prog="k3bundle-install.pyz"))\n'
)
_EPOCH = (1980, 1, 1, 0, 0, 0)


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
    tmp = target.with_name(f".{target.name}.tmp")
    with open(tmp, "wb") as raw:
        raw.write(SHEBANG)
        with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            _add(archive, "__main__.py", MAIN.encode())
            _add(archive, "k3bundle/__init__.py", b'"""k3bundle (standalone installer)."""\n')
            folder = Path(k3bundle.installer.__file__).parent
            for source in installer_sources():
                name = source.relative_to(folder).as_posix()
                _add(archive, f"k3bundle/installer/{name}", source.read_bytes())
    os.chmod(tmp, 0o755)
    os.replace(tmp, target)
    return target


def _add(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_EPOCH)
    info.external_attr = 0o644 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    archive.writestr(info, data)
