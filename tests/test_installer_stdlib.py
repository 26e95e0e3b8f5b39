"""The installer half is standard library only: by its imports, and by importing it with no
site-packages at all."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

import k3bundle.installer

INSTALLER = Path(k3bundle.installer.__file__).parent
SOURCES = sorted(INSTALLER.rglob("*.py"))
FORBIDDEN = ("click", "requests", "oras", "tqdm", "yaml", "cryptography", "k3bundle.bundler")
# The one third-party import the installer may make, lazily, marked '# optional'.
OPTIONAL = "cryptography"
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def imports(tree: ast.AST) -> Iterator[Tuple[ast.stmt, bool]]:
    """Every import statement in `tree` and whether it sits inside a function."""
    stack: List[Tuple[ast.AST, bool]] = [(tree, False)]
    while stack:
        node, in_function = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, in_function
        inside = in_function or isinstance(node, FUNCTIONS)
        stack.extend((child, inside) for child in ast.iter_child_nodes(node))


def imported_names(node: ast.stmt) -> List[str]:
    """The absolute module names an import statement names; [] for a relative import."""
    if isinstance(node, ast.ImportFrom):
        return [] if node.level else [node.module or ""]
    assert isinstance(node, ast.Import)
    return [alias.name for alias in node.names]


def is_stdlib(name: str) -> bool:
    """True when `name` is in the running Python's standard library or is the installer itself."""
    if name == "k3bundle.installer" or name.startswith("k3bundle.installer."):
        return True
    return name.split(".")[0] in sys.stdlib_module_names or name == "__future__"


def marked_optional(source: List[str], node: ast.stmt) -> bool:
    """True when one of the statement's lines carries the '# optional' comment."""
    last = node.end_lineno or node.lineno
    return any("# optional" in line for line in source[node.lineno - 1 : last])


def problems_in(path: Path) -> List[str]:
    """Each import in one installer module that breaks the standard-library-only rule."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    found = []
    for node, in_function in imports(ast.parse(text, str(path))):
        where = f"{path.name}:{node.lineno}"
        if isinstance(node, ast.ImportFrom) and node.level > 1:
            found.append(f"{where}: relative import leaves the installer package")
        for name in imported_names(node):
            if is_stdlib(name):
                continue
            lazy_ok = in_function and name.split(".")[0] == OPTIONAL
            if not (lazy_ok and marked_optional(lines, node)):
                found.append(f"{where}: imports {name}")
    return found


@pytest.mark.skipif(sys.version_info < (3, 10), reason="needs sys.stdlib_module_names")
def test_installer_imports_only_the_standard_library() -> None:
    assert len(SOURCES) > 5, f"installer sources not found under {INSTALLER}"
    problems = [problem for path in SOURCES for problem in problems_in(path)]
    assert problems == []


@pytest.mark.skipif(sys.version_info < (3, 10), reason="needs sys.stdlib_module_names")
def test_import_scan_catches_a_module_level_third_party_import(tmp_path: Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text(
        "import json\nimport yaml\nfrom . import errors\nimport k3bundle.bundler.cache\n\n"
        "def f():\n    import cryptography  # optional\n    import click\n"
        "\nimport cryptography  # optional\n"
    )
    assert sorted(problems_in(module)) == [
        "bad.py:10: imports cryptography",
        "bad.py:2: imports yaml",
        "bad.py:4: imports k3bundle.bundler.cache",
        "bad.py:8: imports click",
    ]


CHILD = textwrap.dedent(
    """
    import importlib, importlib.util, json, sys
    folder = sys.argv[1]
    sys.path.insert(0, folder)
    import k3bundle.installer.cli
    for name in sys.argv[2:]:
        importlib.import_module("k3bundle.installer." + name)
    print(json.dumps({
        "cli": k3bundle.installer.cli.__file__,
        "path": sys.path,
        "modules": sorted(sys.modules),
        "click_findable": importlib.util.find_spec("click") is not None,
    }))
    """
)


def test_installer_cli_imports_with_no_site_packages(tmp_path: Path) -> None:
    package = tmp_path / "k3bundle" / "installer"
    shutil.copytree(INSTALLER, package, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "k3bundle" / "__init__.py").write_text("")
    modules = [
        ".".join(p.relative_to(INSTALLER).with_suffix("").parts)
        for p in SOURCES
        if p.stem not in ("__init__", "__main__")
    ]
    # -I: no PYTHONPATH, no user site, no cwd; -S: no site-packages and no .pth hooks (such as
    # the editable install's finder), so only the stdlib and the copied package are importable.
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", CHILD, str(tmp_path), *modules],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    child = json.loads(done.stdout)
    assert package in Path(child["cli"]).parents
    assert not any("site-packages" in entry or "dist-packages" in entry for entry in child["path"])
    assert child["click_findable"] is False
    leaked = [
        name
        for name in child["modules"]
        for banned in FORBIDDEN
        if name == banned or name.startswith(banned + ".")
    ]
    assert leaked == []
    assert "k3bundle.installer.format.signature" in child["modules"]


# imported by the commands (or the rare hosts) that need them, never by an install's start-up
LAZY = (
    "subprocess",
    "tempfile",
    "traceback",
    "k3bundle.installer.host.lifecycle",
    "k3bundle.installer.summaries",
    "k3bundle.installer.yaml.subset",
)


def test_the_install_path_leaves_other_commands_modules_unimported() -> None:
    # start-up is part of every install's time, and the zipapp compiles each imported module
    def loaded_by(modules: str) -> set[str]:
        code = f"import sys, {modules}; print(' '.join(sorted(sys.modules)))"
        done = subprocess.run(
            [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True
        )
        return set(done.stdout.split())

    # what `install` imports (cli._install imports the last two when it runs)
    loaded = loaded_by(
        "k3bundle.installer.cli, k3bundle.installer.host.install, "
        "k3bundle.installer.host.install_args"
    )
    assert [name for name in LAZY if name in loaded] == []
    # inspect, verify and status load none of the host's install machinery
    assert "k3bundle.installer.host.install" not in loaded_by("k3bundle.installer.cli")
