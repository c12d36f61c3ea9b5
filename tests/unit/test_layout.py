"""The package's layout holds: what ships into images imports nothing of the host side,
and every import between the package's folders goes one way (down the layers below)."""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "nbcontainer_kernel"

#: Lowest first: a module may import from its own folder and from the folders before it,
#: never from one after it (lazy imports inside functions count as well).
LAYERS = [
    "runtime",  # ships into run images: standard library only
    "config",
    "docker",
    "guard",
    "snapshots",
    "images",
    "backends",
    "remote",
    "kernel",
    "widgets",
    "magics",
    "server",  # the Jupyter server extension: the runs API and page
    "cli",
]
#: The package's own __init__ is its facade: it names the API lazily, from any layer.
FACADE = "<root>"


@functools.cache
def _imports() -> list[tuple[str, str, str]]:
    """(importing module's folder, imported module's folder, where) for every import of
    the package by the package."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        is_package = parts[-1] == "__init__"
        module = parts[:-1] if is_package else parts
        package = module if is_package else module[:-1]
        source = module[1] if len(module) > 1 else FACADE
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[list[str]] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - (node.level - 1)]
                    target = base + (node.module.split(".") if node.module else [])
                else:
                    target = (node.module or "").split(".")
                if len(target) == 1 and target[0] == "nbcontainer_kernel":
                    targets = [target + [a.name] for a in node.names]
                else:
                    targets = [target]
            elif isinstance(node, ast.Import):
                targets = [a.name.split(".") for a in node.names]
            for target in targets:
                if target[0] != "nbcontainer_kernel" or len(target) < 2:
                    continue
                folder = target[1]
                # The version is a constant of the facade: every layer may read it.
                if folder not in (source, "__version__"):
                    found.append((source, folder, f"{rel}:{getattr(node, 'lineno', 0)}"))
    return found


def test_every_folder_of_the_package_has_its_place_in_the_layers() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert folders | modules == set(LAYERS)


def test_imports_between_folders_go_down_the_layers_only() -> None:
    upward = [
        f"{where}: {source} imports {target}"
        for source, target, where in _imports()
        if source != FACADE and (target == FACADE or LAYERS.index(target) > LAYERS.index(source))
    ]
    assert upward == []


def test_no_two_folders_import_each_other() -> None:
    pairs = {(s, t) for s, t, _ in _imports()}
    assert sorted(p for p in pairs if (p[1], p[0]) in pairs and FACADE not in p) == []


def test_the_in_image_package_loads_nothing_of_the_host_side_in_a_fresh_interpreter() -> None:
    code = (
        "import importlib, json, pkgutil, sys\n"
        "import nbcontainer_kernel.runtime as rt\n"
        "for m in pkgutil.iter_modules(rt.__path__):\n"
        "    importlib.import_module('nbcontainer_kernel.runtime.' + m.name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    import json

    loaded = json.loads(out)
    host_side = ("docker", "pandas", "numpy", "boto3", "botocore", "traitlets", "IPython")
    assert [m for m in loaded if m.split(".")[0] in host_side] == []
    ours = [m for m in loaded if m.startswith("nbcontainer_kernel.")]
    assert ours and all(m.startswith("nbcontainer_kernel.runtime") for m in ours), ours


@pytest.mark.parametrize("module", sorted(p.stem for p in (PACKAGE / "runtime").glob("*.py")))
def test_each_in_image_module_imports_only_the_standard_library_at_its_top(module: str) -> None:
    """The runner's own lazy imports (IPython for a cell, nbclient for a notebook) come
    from the image's dependency layer; at module level only the standard library."""
    tree = ast.parse((PACKAGE / "runtime" / f"{module}.py").read_text())
    top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    names = [a.name.split(".")[0] for n in top if isinstance(n, ast.Import) for a in n.names] + [
        n.module.split(".")[0]
        for n in top
        if isinstance(n, ast.ImportFrom) and n.module and not n.level
    ]
    assert [n for n in names if n not in sys.stdlib_module_names and n != "__future__"] == []


def test_no_function_of_the_package_is_longer_than_80_lines() -> None:
    """Split where a name would explain a part (ruff's C901 keeps the branching down)."""
    long = [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}"
        for path in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (node.end_lineno or node.lineno) - node.lineno + 1 > 80
    ]
    assert long == []
