"""The tree's rules, checked on the source: stage layering, no cycles, doubles kept out.

Every import counts, also the ones inside functions (that is where the heavy ones live),
so a lazy import cannot sneak a cycle or a test double into production code.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = ("tasks", "model_registry", "plugins", "api", "dags")
HEAVY = ("tensorflow", "keras", "mlflow", "pymilvus", "great_expectations")

# Which stage package may import which: the pipeline's order, core at the bottom.
ALLOWED: dict[str, set[str]] = {
    "tasks.core": set(),
    "tasks.data": {"tasks.core"},
    "tasks.model": {"tasks.core"},
    "model_registry": {"tasks.core", "tasks.model"},
    "tasks.serving": {"tasks.core", "tasks.model", "model_registry"},
    "plugins": {"tasks.core", "tasks.serving"},
    "api": {"tasks.core", "tasks.model", "tasks.serving"},
    "dags": {
        "plugins",
        "tasks.core",
        "tasks.data",
        "tasks.model",
        "tasks.serving",
        "model_registry",
    },
}
OURS = (*PRODUCTION, "tests")


def _package(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "tasks" and len(parts) > 1 else parts[0]


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module top level?) for every import statement in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(node) for node in tree.body}
    found: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, id(node) in top))
    return found


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return ".".join(p for p in rel.parts if p != "__init__")


def _production_files() -> list[Path]:
    files = [p for top in PRODUCTION for p in sorted((ROOT / top).rglob("*.py"))]
    assert len(files) > 40, "the production tree was not found"
    return files


def _package_edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for path in _production_files():
        src = _package(_module_name(path))
        for module, _ in _imports(path):
            dst = _package(module)
            if dst.split(".")[0] in OURS and dst != src:
                edges[src].add(dst)
    return edges


def test_stage_packages_import_only_downstream_layers() -> None:
    edges = _package_edges()
    assert set(edges) <= set(ALLOWED), f"unknown packages: {set(edges) - set(ALLOWED)}"
    bad = {src: sorted(dsts - ALLOWED[src]) for src, dsts in edges.items() if dsts - ALLOWED[src]}
    assert bad == {}


def test_no_import_cycles_between_packages() -> None:
    edges = _package_edges()

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in edges.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cyclic = sorted(pkg for pkg in edges if reaches(pkg, pkg, {pkg}))
    assert cyclic == []


def test_production_never_imports_test_doubles() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in _production_files()
        for module, _ in _imports(path)
        if module.split(".")[0] == "tests"
    ]
    assert offenders == []


def test_pipeline_logic_imports_nothing_from_airflow() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {module}"
        for top in ("tasks", "model_registry", "api")
        for path in sorted((ROOT / top).rglob("*.py"))
        for module, _ in _imports(path)
        if module.split(".")[0] == "airflow"
    ]
    assert offenders == []


def test_heavy_libraries_are_imported_inside_functions() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {module} at module level"
        for path in _production_files()
        for module, top in _imports(path)
        if top and module.split(".")[0] in HEAVY
    ]
    assert offenders == []


@pytest.mark.parametrize(
    ("module", "package"),
    [
        ("tasks.core.db", "tasks.core"),
        ("tasks", "tasks"),
        ("model_registry.gate", "model_registry"),
    ],
)
def test_package_of_a_module(module: str, package: str) -> None:
    assert _package(module) == package


def test_the_checker_sees_a_lazy_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import os\n\ndef f():\n    import tensorflow as tf\n    from tests.doubles import mirror\n"
    )
    assert _imports(probe) == [("os", True), ("tensorflow", False), ("tests.doubles", False)]
