"""The RL evaluation as Markdown tables (``evaluation.md`` beside ``report.json``), one per language.

Each row is a policy judged against π_ref on the same dev pools: the saved seed's paired differences with
their 95% intervals (R@1 in points, P(sensible), teacher specificity in sd), the spread of those
differences over seeds, and whether the target holds; best-of-N rows sit under the β whose KL they match.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _interval(entry: Mapping[str, float] | None, scale: float = 1.0, digits: int = 3) -> str:
    if entry is None:
        return "—"
    return (f"{scale * entry['diff']:+.{digits}f} [{scale * entry['lo']:+.{digits}f}, "
            f"{scale * entry['hi']:+.{digits}f}]")


def _sd(spread: Mapping[str, Any], metric: str, scale: float, digits: int) -> str:
    entry = spread.get(metric)
    return "—" if entry is None else f"{scale * entry['diff']['sd']:.{digits}f}"


def _row(name: str, kl: str, comparison: Mapping[str, Any], spread: Mapping[str, Any], target: str) -> str:
    sds = " / ".join(_sd(spread, m, s, d) for m, s, d in (("r_at_1", 100, 1), ("sensible", 1, 4),
                                                            ("teacher_z", 1, 2)))
    return (f"| {name} | {kl} | {comparison['top1_flip_rate']:.2f} | {_interval(comparison['r_at_1'], 100, 1)} | "
            f"{_interval(comparison['sensible'])} | {_interval(comparison['teacher_z'], 1, 2)} | {sds} | {target} |")


def _target(check: Mapping[str, Any] | None) -> str:
    if check is None:
        return "—"
    if check["met"]:
        return "met"
    failed = [name for name, c in check["constraints"].items() if not c["ok"]]
    return "missed: " + ", ".join(failed)


def evaluation_markdown(report: Mapping[str, Any]) -> str:
    """Per language: π_ref's values, then every β (saved seed, spread over seeds, target) and its best-of-N."""
    evaluation = report["evaluation"]
    first = str(evaluation["seeds"][0])
    judge = evaluation.get("judge") or {}
    lines = [f"Dev pools per language: {evaluation['dev'].get('contexts')} ({evaluation['dev']['source']}); "
             f"policy seeds {evaluation['seeds']} (rows: seed {first}, intervals paired bootstrap 95%); "
             f"sensibleness judge {str(judge.get('identity', 'none'))[:12]}.", ""]
    for language, reference in evaluation["reference"].items():
        values = ", ".join(f"{name} {value:.3f}" for name, value in reference.items() if value is not None)
        lines += [f"**{language}** — π_ref: {values}", "",
                  "| policy | dev KL | top-1 flips | ΔR@1 (points) | Δ P(sensible) | Δ teacher z (sd) | "
                  "sd over seeds (ΔR@1 / Δsens / Δz) | target |", "|---|---|---|---|---|---|---|---|"]
        for beta, policy in evaluation["policies"].items():
            comparison = policy["seeds"][first]["comparison"][language]
            lines.append(_row(f"β = {beta}", f"{policy['dev_kl_mean']:.3f}", comparison, policy["spread"][language],
                              _target(policy["target"].get(language))))
            bon = evaluation["best_of_n"].get(beta)
            if bon is not None:
                draw = next(iter(bon["seeds"].values()))["comparison"][language]
                lines.append(_row(f"best-of-{bon['n']} (KL of β = {beta})", f"{bon['kl_exact']:.3f}", draw,
                                  bon["spread"][language], "—"))
        lines.append("")
    lines.append("Binding constraint per language: " + "; ".join(
        f"{language}: {entry}" for language, entry in evaluation["binding"].items()))
    return "\n".join(lines) + "\n"
