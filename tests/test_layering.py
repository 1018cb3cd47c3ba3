"""The layering of the packages, proved statically from every import statement in the repository.

Every ``import``/``from ... import`` (at module level AND inside functions, classes, ``if`` blocks)
and every ``importlib.import_module("...")`` / ``__import__("...")`` call with a literal name is
collected with :mod:`ast`, so an upward import hidden inside a function fails here even though an
import-time check would pass.

Layers, bottom to top: ``core`` < ``gs_renderer``, ``mesh_renderer`` < ``guidance`` < ``pipeline``
< the top-level scripts. ``testing`` (test-only model builders) is used by tests and benches only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".venv", "venv", "build", "dist", "__pycache__", "logs", "node_modules"}
#: Top-level scripts: command-line front ends nothing may import (tests aside, which test them).
SCRIPTS = frozenset(p.stem for p in ROOT.glob("*.py"))
PRODUCT = ("core", "gs_renderer", "mesh_renderer", "guidance", "pipeline", "tools")
#: package -> top-level names it must never import.
FORBIDDEN = {
    "core": {"pipeline", "guidance", "gs_renderer", "mesh_renderer", "testing", "tools", "bench", "tests"},
    "gs_renderer": {"guidance", "pipeline", "testing", "tools", "bench", "tests"},
    "mesh_renderer": {"guidance", "pipeline", "testing", "tools", "bench", "tests"},
    "guidance": {"pipeline", "testing", "tools", "bench", "tests"},
    "pipeline": {"testing", "tools", "bench", "tests"},
    "tools": {"testing", "bench", "tests"},
}


def module_name(path: Path, root: Path = ROOT) -> str:
    """``core/run.py`` -> ``core.run``; ``pkg/__init__.py`` -> ``pkg``; ``main.py`` -> ``main``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(module: str, level: int, importer: str, is_package: bool) -> str:
    """Absolute name of ``from <level dots><module> import ...`` written in ``importer``."""
    if level == 0:
        return module
    base = importer.split(".")
    if not is_package:
        base = base[:-1]  # a module's relative imports start from its package
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join([*base, module] if module else base)


def imports_of(source: str, importer: str, is_package: bool = False) -> list[tuple[str, int]]:
    """Every module ``source`` imports, anywhere in it: ``[(absolute dotted name, line)]``.

    ``from pkg import name`` yields ``pkg`` and ``pkg.name`` (``name`` may be a submodule).
    """
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = _resolve(node.module or "", node.level, importer, is_package)
            found.append((mod, node.lineno))
            found += [(f"{mod}.{a.name}", node.lineno) for a in node.names if a.name != "*"]
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            arg = node.args[0]
            if (
                name in ("import_module", "__import__")
                and isinstance(arg, ast.Constant)
                and isinstance(arg.value, str)
            ):
                dotted = arg.value.lstrip(".")
                level = len(arg.value) - len(dotted)
                found.append((_resolve(dotted, level, importer, is_package), node.lineno))
    return found


def violations(rel: str, source: str) -> list[str]:
    """The layering rules broken by the module at repo-relative path ``rel`` with text ``source``."""
    path = Path(rel)
    importer = module_name(ROOT / path)
    top = path.parts[0] if len(path.parts) > 1 else importer
    is_test = top == "tests"
    bad, seen = [], set()
    for name, line in imports_of(source, importer, path.name == "__init__.py"):
        target = name.split(".")[0]
        if target == top or (line, target) in seen:
            continue
        seen.add((line, target))
        why = None
        if target in FORBIDDEN.get(top, ()):
            why = f"{top} must not import {target}"
        elif target in SCRIPTS and not is_test and target != importer:
            why = f"no module may import the script {target}"
        elif target == "testing" and top in PRODUCT:
            why = "product code must not import testing"
        if why:
            bad.append(f"{rel}:{line}: imports {name} ({why})")
    return bad


def python_files() -> list[Path]:
    """Every ``.py`` file of the repository (not virtualenvs, caches or git internals)."""
    out = []
    for p in sorted(ROOT.rglob("*.py")):
        rel = p.relative_to(ROOT)
        if not any(part in SKIP_DIRS or part.startswith(".") for part in rel.parts[:-1]):
            out.append(p)
    return out


def test_the_whole_repository_keeps_its_layers():
    files = python_files()
    assert len(files) > 60  # the walk found the repository, not an empty folder
    assert {"core", "pipeline", "gs_renderer", "mesh_renderer", "guidance"} <= {
        f.relative_to(ROOT).parts[0] for f in files
    }
    bad = [v for f in files for v in violations(str(f.relative_to(ROOT)), f.read_text(encoding="utf-8"))]
    assert bad == [], "\n".join(bad)


def test_imports_inside_functions_and_import_module_calls_are_seen():
    src = (
        "import os\n"
        "def f():\n"
        "    from guidance.sir_step import refine\n"
        "    class A:\n"
        "        def g(self):\n"
        "            import pipeline.stage1\n"
        "    importlib.import_module('mesh_renderer.raster')\n"
        "    __import__('main_gs')\n"
        "    from . import images\n"
    )
    names = [n for n, _ in imports_of(src, "core.run")]
    for expected in (
        "os",
        "guidance.sir_step",
        "pipeline.stage1",
        "mesh_renderer.raster",
        "main_gs",
        "core.images",
    ):
        assert expected in names, (expected, names)
    assert len(violations("core/run.py", src)) == 4  # guidance, pipeline, mesh_renderer, main_gs


@pytest.mark.parametrize(
    ("rel", "line", "broken"),
    [
        ("core/images.py", "    from pipeline.reports import output_path", True),
        ("core/timing.py", "    import gs_renderer", True),
        ("gs_renderer/render.py", "    from guidance import load_denoiser", True),
        ("mesh_renderer/uv.py", "    import pipeline", True),
        ("guidance/oracle.py", "    from pipeline.sir import run_sir", True),
        ("guidance/oracle.py", "    from mesh_renderer import rasterize", False),  # the oracle renders meshes
        ("pipeline/stage1.py", "    import batch", True),
        ("pipeline/setup.py", "    from testing.random_models import save_zero123", True),
        ("bench/speed.py", "    from main_gs import main", True),
        ("bench/speed.py", "    from testing.random_models import save_zero123", False),
        ("tests/test_x.py", "    import main_gs", False),
    ],
)
def test_an_upward_import_inside_a_function_is_caught(rel, line, broken):
    """Mutation: append a function with one import to a real module; the rule must flag it."""
    path = ROOT / rel
    source = path.read_text(encoding="utf-8") if path.is_file() else ""
    mutated = source + "\n\ndef _mutant():\n" + line + "\n"
    assert violations(rel, source) == []
    assert bool(violations(rel, mutated)) is broken, violations(rel, mutated)
