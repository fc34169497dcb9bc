"""The labeling error types: one exception that lists every bad row, so a file is fixed in one pass."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

_MAX_PROBLEMS_SHOWN = 40


@dataclass(frozen=True)
class RowProblem:
    source: str
    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.source}: {self.where}: {self.reason}"


class LabelingError(ValueError):
    """Bad labeling input. ``problems`` lists every bad row so a whole file can be fixed in one pass."""

    def __init__(self, message: str, problems: Sequence[RowProblem] = ()) -> None:
        self.problems = list(problems)
        lines = [message]
        lines += [f"  {p}" for p in self.problems[:_MAX_PROBLEMS_SHOWN]]
        if len(self.problems) > _MAX_PROBLEMS_SHOWN:
            lines.append(f"  ... and {len(self.problems) - _MAX_PROBLEMS_SHOWN} more")
        super().__init__("\n".join(lines))
