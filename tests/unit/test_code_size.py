"""Size rules for product code: no file over 400 lines, no function over 80, so each stays readable in one go."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("core", "retriever", "ranker", "rl", "dialog")
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80


def product_files() -> list[Path]:
    return sorted(p for package in PRODUCT for p in (ROOT / package).rglob("*.py"))


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """(name, lines) of every function or method longer than ``limit``, decorators excluded."""
    return [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > limit]


def test_no_product_file_over_400_lines() -> None:
    too_long = [f"{p.relative_to(ROOT)}: {n} lines" for p in product_files()
                if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_FILE_LINES]
    assert not too_long, "split these along concept lines:\n" + "\n".join(too_long)


def test_no_function_over_80_lines() -> None:
    too_long = [f"{p.relative_to(ROOT)}: {name} is {n} lines" for p in product_files()
                for name, n in long_functions(p.read_text(encoding="utf-8"))]
    assert not too_long, "split these functions:\n" + "\n".join(too_long)


def test_the_checks_can_fail() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(85))
    assert long_functions(f"def long():\n{body}\n") == [("long", 86)]
    assert long_functions("class A:\n    def short(self):\n        return 1\n") == []
    assert len(product_files()) > 50
