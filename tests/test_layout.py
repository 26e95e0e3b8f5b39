"""The layout shows the architecture: the bundler reaches the bundle format only through
`k3bundle.installer.format`'s declared public names, and the installer half only through the
modules both halves share (errors, progress, the installer's own command line and the read-ahead
its entry points start)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import List

import k3bundle.bundler
import k3bundle.installer.format

BUNDLER = Path(k3bundle.bundler.__file__).parent
# Installer modules the bundler may import by name: what both command lines share.
SHARED = {
    "k3bundle.installer",  # bundler/zipapp.py finds the package's folder through it
    "k3bundle.installer.errors",
    "k3bundle.installer.progress",
    "k3bundle.installer.cli",
    "k3bundle.installer.cli_parser",
    "k3bundle.installer.readahead",  # both entry points start it before the installer's imports
}
FORMAT = "k3bundle.installer.format"


def crossings(path: Path, base: Path = BUNDLER) -> List[str]:
    """Each import in one bundler module that reaches into the installer past its public face."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        where = f"{path.relative_to(base).as_posix()}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
            found += [f"{where}: import {n}" for n in names if _private(n)]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == FORMAT:
                public = set(k3bundle.installer.format.__all__)
                found += [
                    f"{where}: {FORMAT}.{alias.name} is not a public name"
                    for alias in node.names
                    if alias.name not in public
                ]
            elif _private(node.module):
                found.append(f"{where}: from {node.module}")
    return found


def _private(module: str) -> bool:
    inside = module == "k3bundle.installer" or module.startswith("k3bundle.installer.")
    return inside and module not in SHARED and module != FORMAT


def test_the_bundler_uses_the_format_only_through_its_public_names() -> None:
    sources = sorted(BUNDLER.rglob("*.py"))
    assert len(sources) > 20
    assert [problem for path in sources for problem in crossings(path)] == []


def test_the_scan_catches_a_reach_past_the_public_names(tmp_path: Path) -> None:
    bad = tmp_path / "net" / "bad.py"
    bad.parent.mkdir()
    bad.write_text(
        "from k3bundle.installer.format.manifest import Entry\n"
        "from k3bundle.installer.format import Entry, _check_format\n"
        "import k3bundle.installer.host.plan\n"
        "from k3bundle.installer.errors import UsageError\n"
    )
    assert crossings(bad, base=tmp_path) == [
        "net/bad.py:1: from k3bundle.installer.format.manifest",
        "net/bad.py:2: k3bundle.installer.format._check_format is not a public name",
        "net/bad.py:3: import k3bundle.installer.host.plan",
    ]


def test_every_public_format_name_exists() -> None:
    for name in k3bundle.installer.format.__all__:
        assert hasattr(k3bundle.installer.format, name), name


def test_each_half_is_cut_into_the_documented_sub_packages() -> None:
    installer = Path(k3bundle.installer.__file__).parent
    for folder in (installer / "format", installer / "host", installer / "yaml"):
        assert (folder / "__init__.py").is_file()
    for folder in (BUNDLER / "net", BUNDLER / "oci", BUNDLER / "payloads"):
        assert (folder / "__init__.py").is_file()
