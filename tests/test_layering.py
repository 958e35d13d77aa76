"""The tree's layering, checked from the source: what each layer may import, and no private names across modules.

- `domain/` imports no other layer (entities, events, commands and their ports; no I/O);
- `pipeline/` imports `domain/` only, never `adapters/` or the composition roots;
- `testing/` (support for tests and benchmarks) imports neither `tests` nor `benchmarks`;
- `benchmarks/` never import `tests`; tests import a benchmark only to test that benchmark;
- nobody imports another module's `_private` name (tests may, of the module they test).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("domain", "pipeline", "adapters", "testing", "benchmarks")
TOP_MODULES = ("server", "settings", "cli")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files(*packages: str) -> list[Path]:
    files: list[Path] = []
    for pkg in packages:
        if (ROOT / pkg).is_dir():
            files += sorted((ROOT / pkg).rglob("*.py"))
    return files


def imports_of(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) for every import in the file, function-level ones included; relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join([*base, mod] if mod else base)
            found.append((mod, [alias.name for alias in node.names]))
    return found


def top(module: str) -> str:
    return module.split(".", 1)[0]


def test_every_module_imports() -> None:
    for path in source_files(*PACKAGES):
        if path.name == "__main__.py":
            continue  # runs the command when imported
        importlib.import_module(module_name(path))
    for name in TOP_MODULES:
        if (ROOT / f"{name}.py").exists():
            importlib.import_module(name)


@pytest.mark.parametrize(("layer", "forbidden"), [
    ("domain", {"pipeline", "adapters", "server", "settings", "cli", "testing", "tests", "benchmarks"}),
    ("pipeline", {"adapters", "server", "settings", "testing", "tests", "benchmarks"}),
    ("adapters", {"server", "testing", "tests", "benchmarks"}),
    ("testing", {"tests", "benchmarks"}),
    ("benchmarks", {"tests"}),
])
def test_layers_import_only_downwards(layer: str, forbidden: set[str]) -> None:
    wrong = [f"{module_name(path)} imports {mod}"
             for path in source_files(layer) for mod, _ in imports_of(path) if top(mod) in forbidden]
    assert not wrong, "\n".join(wrong)


def test_tests_import_benchmarks_only_to_test_them() -> None:
    wrong = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for mod, _ in imports_of(path):
            if top(mod) == "benchmarks" and not path.stem.endswith("_benchmark"):
                wrong.append(f"{path.name} imports {mod}")
            if top(mod) == "tests" and mod != "tests":
                wrong.append(f"{path.name} imports {mod} (shared helpers live in testing/)")
    assert not wrong, "\n".join(wrong)


def test_no_private_names_across_modules() -> None:
    wrong = []
    own = {top(p.stem) for p in (ROOT / "tests").glob("*.py")}
    for path in [*source_files(*PACKAGES), *(ROOT / f"{m}.py" for m in TOP_MODULES if (ROOT / f"{m}.py").exists()),
                 *sorted((ROOT / "tests").glob("*.py"))]:
        importer = module_name(path)
        for mod, names in imports_of(path):
            for name in names:
                if not (name.startswith("_") and not name.startswith("__")):
                    continue
                if mod == "pipeline" and name == "_dsp":
                    continue  # the compiled core's facade, pipeline/dsp.py, is its one importer
                if importer.startswith("tests.") and mod.rsplit(".", 1)[-1] in {s.removeprefix("test_") for s in own}:
                    continue  # a module's own tests may reach into it
                wrong.append(f"{importer}: from {mod} import {name}")
    assert not wrong, "\n".join(wrong)
