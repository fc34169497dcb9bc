"""The RL target (issue 14, item 4) per language, which β meets it, and which constraint binds when none does.

A β's policy meets the target in a language when, against π_ref on the dev pools: its teacher specificity
gains at least ``min_specificity_gain`` sd, the 95% interval of its sensibleness difference has a lower
bound of at least ``min_sensible_lower`` (not less sensible), and its R@1 fell at most ``max_r_at_1_drop``.
One policy serves both languages, so a β passes when it meets the target in every language. When none
does, the report names per language the constraint that binds and how far it is from its limit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.job_configs import RLRunConfig

R1_TOLERANCE = 1e-9  # R@1 values are hit counts over pools; an exact 2-point drop may exceed 0.02 by 1e-17


def _constraint(value: float | None, limit: float, at_least: bool, missing: str = "") -> dict[str, Any]:
    if value is None:
        return {"value": None, "limit": limit, "ok": False, "gap": None, "note": missing}
    gap = (limit - value) if at_least else (value - limit)
    return {"value": value, "limit": limit, "ok": gap <= R1_TOLERANCE, "gap": max(gap, 0.0)}


def target_check(comparison: Mapping[str, Any], config: RLRunConfig) -> dict[str, Any]:
    """Per language (not the pooled "all"): each constraint's value, limit, whether it holds, and its gap."""
    targets = config.evaluation
    out: dict[str, Any] = {}
    for language, entry in comparison.items():
        if language == "all":
            continue
        sensible = entry["sensible"]
        constraints = {
            "specificity_gain_sd": _constraint(entry["teacher_z"]["diff"], targets.min_specificity_gain, True),
            "sensible_diff_lower95": _constraint(None if sensible is None else sensible["lo"],
                                                 targets.min_sensible_lower, True,
                                                 "not judged: give the sensibleness judge (--judge DIR)"),
            "r_at_1_drop": _constraint(-entry["r_at_1"]["diff"], config.max_r_at_1_drop, False),
        }
        out[language] = {"met": all(c["ok"] for c in constraints.values()), "constraints": constraints}
    return out


def binding_constraints(checks: Mapping[float, Mapping[str, Any]]) -> dict[str, Any]:
    """Per language, over the β sweep: what stops the target.

    The guards (sensibleness, R@1) loosen as β grows and specificity gains shrink, so: among the βs that
    keep both guards, the best specificity gain and its gap to the target (specificity binds); when no β
    keeps them, the guard that fails at the β closest to π_ref (the largest) and by how much.
    """
    out: dict[str, Any] = {}
    languages = sorted({language for check in checks.values() for language in check})
    for language in languages:
        rows = {beta: check[language]["constraints"] for beta, check in checks.items() if language in check}
        if any(checks[beta][language]["met"] for beta in rows):
            out[language] = {"binding": None, "met_by": sorted(b for b in rows if checks[b][language]["met"])}
            continue
        within = [b for b, c in rows.items() if c["sensible_diff_lower95"]["ok"] and c["r_at_1_drop"]["ok"]]
        if within:
            best = max(within, key=lambda b: rows[b]["specificity_gain_sd"]["value"])
            spec = rows[best]["specificity_gain_sd"]
            out[language] = {"binding": "specificity_gain_sd", "beta": best, "value": spec["value"],
                             "limit": spec["limit"], "gap": spec["gap"]}
            continue
        closest = max(rows)
        failing = {name: c for name, c in rows[closest].items() if name != "specificity_gain_sd" and not c["ok"]}
        out[language] = {"binding": sorted(failing), "beta": closest,
                         "gaps": {name: {k: c.get(k) for k in ("value", "limit", "gap", "note") if k in c}
                                  for name, c in failing.items()}}
    return out


def choose_by_target(checks: Mapping[float, Mapping[str, Any]], gains: Mapping[float, float]
                     ) -> tuple[float | None, list[float]]:
    """The most specific β (``gains``: its mean specificity gain) meeting the target in every language."""
    passing = sorted(b for b, check in checks.items() if check and all(entry["met"] for entry in check.values()))
    return (max(passing, key=lambda b: gains[b]) if passing else None), passing
