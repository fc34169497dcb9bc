"""The floor rule: a package imports only from its own floor or the floors below it, and no module
import cycles exist. Checked on the source, so a violation fails before anyone runs it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FLOORS = {"dialog": 1, "rl": 2, "ranker": 3, "retriever": 4, "core": 5}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def type_checking_nodes(tree: ast.AST) -> set[int]:
    """Nodes under ``if TYPE_CHECKING:``: type-only imports never run, so they cannot form a cycle."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    return skipped


def imports_of(path: Path, runtime_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = type_checking_nodes(tree) if runtime_only else set()
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in FLOORS for p in (ROOT / package).rglob("*.py")}


def test_imports_only_run_downhill() -> None:
    violations = []
    for name, path in project_modules().items():
        floor = FLOORS[name.split(".")[0]]
        for imported in imports_of(path):
            top = imported.split(".")[0]
            if top in FLOORS and FLOORS[top] < floor:
                violations.append(f"{name} (floor {floor}) imports {imported} (floor {FLOORS[top]})")
    assert not violations, "\n".join(sorted(violations))


def test_no_module_import_cycles() -> None:
    modules = project_modules()
    graph = {
        name: {imp for imp in imports_of(path, runtime_only=True) if imp in modules and imp != name}
        for name, path in modules.items()
    }
    # Drop edges into a package's own __init__ that only re-export (an import of `pkg` from `pkg.x`).
    graph = {name: {t for t in targets if not name.startswith(t + ".")} for name, targets in graph.items()}
    visiting: set[str] = set()
    done: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        if node in done:
            return
        if node in visiting:
            cycles.append([*trail[trail.index(node):], node])
            return
        visiting.add(node)
        for target in sorted(graph[node]):
            visit(target, [*trail, node])
        visiting.discard(node)
        done.add(node)

    for node in sorted(graph):
        visit(node, [])
    assert not cycles, "\n".join(" -> ".join(cycle) for cycle in cycles)
