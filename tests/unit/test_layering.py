"""The floor rule: a package imports only from its own package or the floors below it, and no module
import cycles exist, type-only ones included. Checked on the source, so a violation fails before anyone
runs it.

Floors, top to bottom: bench (0) > dialog (1) > rl (2) > ranker, retriever (3, siblings that never
import each other) > core (4). Inside dialog, the jobs (``dialog/jobs``) run downhill only: a job
imports nothing else from ``dialog`` (a shared ``dialog.jobs`` helper at most), so the CLI and the
serving layer can call any job without dragging in each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FLOORS = {"bench": 0, "dialog": 1, "rl": 2, "ranker": 3, "retriever": 3, "core": 4}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every absolute import of the module, at any depth (function bodies and ``if TYPE_CHECKING:`` too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in FLOORS for p in (ROOT / package).rglob("*.py")}


def floor_violation(importer: str, imported: str) -> str | None:
    """Why ``importer`` may not import ``imported``, or None when the import runs downhill."""
    mine, theirs = importer.split(".")[0], imported.split(".")[0]
    if theirs not in FLOORS or theirs == mine:
        return None
    if FLOORS[theirs] < FLOORS[mine]:
        return f"{importer} (floor {FLOORS[mine]}) imports {imported} (floor {FLOORS[theirs]})"
    if FLOORS[theirs] == FLOORS[mine]:
        return f"{importer} imports its sibling {imported} (floor {FLOORS[mine]}): move the shared part below both"
    return None


def test_imports_only_run_downhill() -> None:
    violations = [why for name, path in project_modules().items() for imported in imports_of(path)
                  if (why := floor_violation(name, imported))]
    assert not violations, "\n".join(sorted(violations))


@pytest.mark.parametrize(("importer", "imported", "allowed"), [
    ("ranker.blender", "retriever.encoder", False),
    ("retriever.index", "ranker.idf", False),
    ("rl.tune", "dialog.jobs.rl_tune", False),
    ("core.config", "ranker.train", False),
    ("dialog.cli.main", "bench.report", False),
    ("bench.bench_lm", "dialog.serving.pipeline", True),
    ("dialog.jobs.rl_tune", "rl.tune", True),
    ("ranker.blender", "core.atomic", True),
])
def test_floor_rule_itself(importer: str, imported: str, allowed: bool) -> None:
    """The rule must be able to fail: known-bad edges are flagged, known-good ones are not."""
    assert (floor_violation(importer, imported) is None) == allowed


# Jobs whose whole point is to run other jobs in order (and nothing else imports them).
ORCHESTRATORS = ("dialog.jobs.train_default",)


def test_jobs_do_not_climb_back_into_dialog() -> None:
    """A job (``dialog/jobs/<job>.py``) uses rl, ranker, retriever and core, never the CLI, serving,
    labeling or generation: the path CLI -> job -> lower floors runs downhill."""
    violations = []
    for name, path in project_modules().items():
        if not name.startswith("dialog.jobs."):
            continue
        for imported in imports_of(path):
            if imported.startswith("dialog.") and not imported.startswith("dialog.jobs"):
                violations.append(f"{name} imports {imported}")
            elif (imported.startswith("dialog.jobs.") and imported.split(".")[2] not in ("common",)
                  and name not in ORCHESTRATORS):
                violations.append(f"{name} imports another job, {imported}; share it through dialog.jobs.common")
    assert not violations, "\n".join(sorted(violations))


def test_nothing_imports_bench() -> None:
    offenders = [f"{name} imports {imported}" for name, path in project_modules().items()
                 if not name.startswith("bench") for imported in imports_of(path) if imported.split(".")[0] == "bench"]
    assert not offenders, "\n".join(offenders)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
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
        for target in sorted(graph.get(node, ())):
            visit(target, [*trail, node])
        visiting.discard(node)
        done.add(node)

    for node in sorted(graph):
        visit(node, [])
    return cycles


def test_find_cycles_finds_one() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_module_import_cycles() -> None:
    """Type-only imports count: a loop that only ``TYPE_CHECKING`` hides still ties two modules together."""
    modules = project_modules()
    graph = {
        name: {imp for imp in imports_of(path) if imp in modules and imp != name}
        for name, path in modules.items()
    }
    # Drop edges into a package's own __init__ that only re-export (an import of `pkg` from `pkg.x`).
    graph = {name: {t for t in targets if not name.startswith(t + ".")} for name, targets in graph.items()}
    cycles = find_cycles(graph)
    assert not cycles, "\n".join(" -> ".join(cycle) for cycle in cycles)
