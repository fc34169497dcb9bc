"""From stored labels to numbers a team can act on: screened raters, aggregated items, SSA with CIs,
agreement, pairwise win rates, intransitivity warnings; written as report.md/json/png."""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from dialog.labeling.stats import (
    alpha_reading,
    bootstrap_means,
    dawid_skene_binary,
    find_cycle,
    krippendorff_alpha_nominal,
    majority,
    win_stats,
)
from dialog.labeling.store import Label, LabelStore
from dialog.labeling.tasks import (
    CHOICE_SCORES,
    FIVE_POINT,
    KEY_NAME,
    POINTWISE,
    ExportInfo,
    ExportKey,
    LabelingError,
    Task,
    load_export,
    load_key,
)

METHODS = ("majority", "dawid-skene")
# The statistics are re-exported: callers and tests read them from here as before.
__all__ = ["METHODS", "Analysis", "alpha_reading", "analyze", "bootstrap_means", "build_report", "dawid_skene_binary",
           "find_cycle", "honeypot_correct", "krippendorff_alpha_nominal", "majority", "render_markdown",
           "render_plot", "screen_raters", "win_stats"]


@dataclass
class Analysis:
    """Everything after screening and aggregation, before any statistics."""

    export: ExportInfo
    key: ExportKey
    method: str
    raters: dict[str, dict[str, Any]]
    kept: list[Label]
    # pointwise: task -> (sensible, specific) in {0, 0.5, 1}; pairwise: task -> (outcome for A in {-1, 0, 1}, margin)
    items: dict[str, tuple[float, float]] = field(default_factory=dict)

    def outcomes(self) -> list[tuple[str, str, str, float]]:
        """Per context and system pair: (context, better, worse, weight); a tie has weight 0, names sorted."""
        result = []
        if self.export.mode == POINTWISE:
            scores: dict[str, dict[str, float]] = defaultdict(dict)
            for tid, (sens, spec) in self.items.items():
                for name in self.key.names(tid):
                    scores[self.export.tasks[tid].context_id][name] = (sens + spec) / 2
            for cid, by_system in scores.items():
                for x, y in combinations(sorted(by_system), 2):
                    hi, lo = (y, x) if by_system[y] > by_system[x] else (x, y)
                    result.append((cid, hi, lo, abs(by_system[x] - by_system[y])))
            return result
        for tid, (outcome, margin) in self.items.items():
            a, b = self.key.names(tid)
            hi, lo = (a, b) if outcome > 0 or (outcome == 0 and a < b) else (b, a)
            result.append((self.export.tasks[tid].context_id, hi, lo, margin if outcome else 0.0))
        return result


def honeypot_correct(label: Label, task: Task, mode: str) -> bool:
    golden = task.golden or {}
    if mode == POINTWISE:
        return label.sensible == golden["sensible"] and (not golden["sensible"] or label.specific == golden["specific"])
    score = {**CHOICE_SCORES[FIVE_POINT], **CHOICE_SCORES["binary"]}[label.choice or "same"]
    return score != 0 and (score > 0) == (golden["better"] == "a")


def screen_raters(labels: Sequence[Label], export: ExportInfo, threshold: float) -> dict[str, dict[str, Any]]:
    raters: dict[str, dict[str, Any]] = defaultdict(lambda: {"labels": 0, "honeypots": 0, "correct": 0})
    for label in labels:
        row = raters[label.rater]
        row["labels"] += 1
        task = export.tasks[label.task_id]
        if task.honeypot:
            row["honeypots"] += 1
            row["correct"] += honeypot_correct(label, task, export.mode)
    for row in raters.values():
        row["accuracy"] = row["correct"] / row["honeypots"] if row["honeypots"] else None
        row["excluded"] = row["accuracy"] is not None and row["accuracy"] < threshold
    return dict(sorted(raters.items()))


def analyze(store: LabelStore, export_dir: Path, key_path: Path | None = None, method: str = "majority",
            min_honeypot_accuracy: float = 0.7) -> Analysis:
    if method not in METHODS:
        raise LabelingError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    export = load_export(export_dir)
    key = load_key(Path(key_path) if key_path else Path(export_dir) / KEY_NAME, export)
    labels = store.labels(export.export_id)
    if not labels:
        raise LabelingError(f"no labels stored for export {export.export_id}; run `repliq ssa import` first")
    raters = screen_raters(labels, export, min_honeypot_accuracy)
    kept = [lb for lb in labels if not raters[lb.rater]["excluded"] and not export.tasks[lb.task_id].honeypot]
    analysis = Analysis(export, key, method, raters, kept)
    by_task: dict[str, list[Label]] = defaultdict(list)
    for label in kept:
        by_task[label.task_id].append(label)
    if export.mode == POINTWISE:
        if method == "majority":
            analysis.items = {t: (majority([float(x.sensible) for x in ls]), majority([float(x.specific) for x in ls]))
                              for t, ls in by_task.items()}
        else:
            sens = _hard(dawid_skene_binary([(x.task_id, x.rater, int(bool(x.sensible))) for x in kept]))
            spec = _hard(dawid_skene_binary([(x.task_id, x.rater, int(bool(x.specific))) for x in kept]))
            analysis.items = {t: (sens[t], min(spec[t], sens[t])) for t in by_task}
        return analysis
    scores = CHOICE_SCORES[export.scale or FIVE_POINT]
    top = max(scores.values())
    if method == "majority":
        for t, ls in by_task.items():
            mean = float(np.mean([scores[x.choice or ""] for x in ls]))
            analysis.items[t] = (float(np.sign(mean)), abs(mean) / top)
    else:
        posterior = dawid_skene_binary([(x.task_id, x.rater, int(scores[x.choice or ""] > 0))
                                        for x in kept if scores[x.choice or ""] != 0])
        for t in by_task:
            p = posterior.get(t, 0.5)
            analysis.items[t] = (float(np.sign(p - 0.5)), abs(2 * p - 1))
    return analysis


def _hard(posterior: Mapping[Hashable, float]) -> dict[Any, float]:
    return {k: 1.0 if p > 0.5 else 0.0 if p < 0.5 else 0.5 for k, p in posterior.items()}


def build_report(store: LabelStore, export_dir: Path, key_path: Path | None = None, out_dir: Path | None = None,
                 method: str = "majority", min_honeypot_accuracy: float = 0.7, n_boot: int = 1000,
                 seed: int = 0) -> dict[str, Any]:
    """The SSA report as a dict; with ``out_dir``, also report.md, report.json and report.png (atomically)."""
    a = analyze(store, export_dir, key_path, method, min_honeypot_accuracy)
    export, names = a.export, sorted(set(a.key.systems.values()))
    excluded = [r for r, row in a.raters.items() if row["excluded"]]
    report: dict[str, Any] = {
        "export_id": export.export_id, "mode": export.mode, "scale": export.scale, "method": method,
        "min_honeypot_accuracy": min_honeypot_accuracy, "overlap": export.overlap,
        "labels": {"stored": sum(r["labels"] for r in a.raters.values()), "used": len(a.kept)},
        "raters": a.raters, "excluded_raters": excluded, "systems": {}, "agreement": {}, "comparisons": [],
        "intransitive_cycle": None, "warnings": []}
    warn = report["warnings"].append
    if not a.kept:
        warn("no usable labels: every answer came from an excluded rater or was on a honeypot")
    if excluded:
        warn(f"{len(excluded)} rater(s) excluded, honeypot accuracy below {min_honeypot_accuracy}: "
             + ", ".join(excluded))
    unscreened = [r for r, row in a.raters.items() if row["honeypots"] == 0]
    if unscreened:
        warn(f"{len(unscreened)} rater(s) answered no honeypot and could not be screened")
    by_task: dict[str, list[Label]] = defaultdict(list)
    for label in a.kept:
        by_task[label.task_id].append(label)
    item_tasks = [t for t in export.tasks.values() if not t.honeypot]
    below = sum(len(by_task.get(t.task_id, [])) < export.overlap for t in item_tasks)
    report["coverage"] = {"item_tasks": len(item_tasks), "labelled": sum(t.task_id in by_task for t in item_tasks),
                          "below_overlap": below}
    if below:
        warn(f"{below} of {len(item_tasks)} tasks have fewer than {export.overlap} usable answers")
    questions = {"sensible": lambda x: x.sensible, "specific": lambda x: x.specific} if export.mode == POINTWISE \
        else {"choice": lambda x: x.choice}
    for question, get in questions.items():
        alpha = krippendorff_alpha_nominal([[get(x) for x in ls] for ls in by_task.values()])
        reading = alpha_reading(alpha)
        report["agreement"][question] = {"alpha": None if np.isnan(alpha) else alpha, "reading": reading,
                                         "units": sum(len(ls) >= 2 for ls in by_task.values())}
        if reading == "unreliable":
            warn(f"agreement on '{question}' is unreliable (alpha {alpha:.2f} < 0.667): clarify the instructions")
    if export.mode == POINTWISE:
        report["systems"] = _system_table(a, names, n_boot, seed)
    wins: dict[tuple[str, str], int] = defaultdict(int)
    ties: dict[tuple[str, str], int] = defaultdict(int)
    for _, hi, lo, weight in a.outcomes():
        if weight > 0:
            wins[(hi, lo)] += 1
        else:
            ties[tuple(sorted((hi, lo)))] += 1  # type: ignore[index]
    beats: dict[str, set[str]] = defaultdict(set)
    for x, y in combinations(names, 2):
        if not (wins[(x, y)] or wins[(y, x)] or ties[(x, y)]):
            continue
        stats = win_stats(wins[(x, y)], wins[(y, x)], ties[(x, y)])
        row = {"system_a": x, "system_b": y, "source": export.mode, **stats}
        report["comparisons"].append(row)
        if wins[(x, y)] != wins[(y, x)]:
            beats[x if wins[(x, y)] > wins[(y, x)] else y].add(y if wins[(x, y)] > wins[(y, x)] else x)
    cycle = find_cycle(beats) if len(names) >= 3 else None
    if cycle:
        report["intransitive_cycle"] = cycle
        warn("intransitive preferences: " + " > ".join([*cycle, cycle[0]]) +
             " (a Condorcet cycle); no overall ranking follows, compare the systems you care about directly")
    if out_dir is not None:
        out = Path(out_dir)
        atomic_write_json(out / "report.json", report)
        atomic_write_text(out / "report.md", render_markdown(report))
        atomic_write_bytes(out / "report.png", render_plot(report))
    return report


def _system_table(a: Analysis, names: Sequence[str], n_boot: int, seed: int) -> dict[str, Any]:
    contexts = sorted({a.export.tasks[t].context_id for t in a.items})
    row_of = {cid: i for i, cid in enumerate(contexts)}
    sens = np.full((len(contexts), len(names)), np.nan)
    spec = sens.copy()
    for tid, (s, p) in a.items.items():
        for name in a.key.names(tid):
            sens[row_of[a.export.tasks[tid].context_id], names.index(name)] = s
            spec[row_of[a.export.tasks[tid].context_id], names.index(name)] = p
    table: dict[str, Any] = {}
    if not contexts:
        return table
    metrics = {"sensibleness": sens, "specificity": spec, "ssa": (sens + spec) / 2}
    boots = {m: bootstrap_means(values, n_boot, seed) for m, values in metrics.items()}
    for j, name in enumerate(names):
        if np.all(np.isnan(sens[:, j])):
            continue  # no usable labels for this system; the coverage warning says so
        table[name] = {"contexts": int(np.sum(~np.isnan(sens[:, j])))}
        for m in metrics:
            value, lo, hi = boots[m][j]
            table[name][m] = {"value": value, "ci_low": lo, "ci_high": hi}
    return table


def _fmt(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.3f}"


def render_markdown(report: Mapping[str, Any]) -> str:
    lines = [f"# SSA report — export {report['export_id']}", "",
             f"Mode: {report['mode']}" + (f" ({report['scale']} scale)" if report["scale"] else "") +
             f"; aggregation: {report['method']}; labels used {report['labels']['used']} of "
             f"{report['labels']['stored']}; overlap {report['overlap']}.", ""]
    if report["warnings"]:
        lines += ["## Warnings", "", *[f"- {w}" for w in report["warnings"]], ""]
    if report["systems"]:
        lines += ["## Systems (95% bootstrap CI over contexts)", "",
                  "| system | contexts | sensibleness | specificity | SSA |", "|---|---|---|---|---|"]
        for name, row in report["systems"].items():
            cells = [f"{_fmt(row[m]['value'])} [{_fmt(row[m]['ci_low'])}, {_fmt(row[m]['ci_high'])}]"
                     for m in ("sensibleness", "specificity", "ssa")]
            lines.append(f"| {name} | {row['contexts']} | " + " | ".join(cells) + " |")
        lines.append("")
    if report["comparisons"]:
        lines += ["## Pairwise comparisons (ties excluded; exact 95% CI; two-sided sign test)", "",
                  "| A | B | A wins | B wins | ties | A win rate [95% CI] | p | significant |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in report["comparisons"]:
            lines.append(f"| {c['system_a']} | {c['system_b']} | {c['wins_a']} | {c['wins_b']} | {c['ties']} | "
                         f"{_fmt(c['win_rate_a'])} [{_fmt(c['ci_low'])}, {_fmt(c['ci_high'])}] | "
                         f"{_fmt(c['p_value'])} | {'yes' if c['significant'] else 'no'} |")
        lines.append("")
    lines += ["## Agreement (Krippendorff's alpha, nominal; ≥0.8 reliable, 0.667–0.8 tentative)", ""]
    lines += [f"- {q}: {_fmt(v['alpha'])} — {v['reading']} ({v['units']} tasks with ≥2 answers)"
              for q, v in report["agreement"].items()]
    lines += ["", "## Raters (honeypot accuracy)", "", "| rater | answers | honeypots | accuracy | excluded |",
              "|---|---|---|---|---|"]
    lines += [f"| {r} | {row['labels']} | {row['honeypots']} | {_fmt(row['accuracy'])} | "
              f"{'yes' if row['excluded'] else 'no'} |" for r, row in report["raters"].items()]
    return "\n".join(lines) + "\n"


def render_plot(report: Mapping[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    if report["systems"]:
        names = list(report["systems"])
        x = np.arange(len(names))
        for k, metric in enumerate(("sensibleness", "specificity", "ssa")):
            rows = [report["systems"][n][metric] for n in names]
            values = np.array([r["value"] for r in rows])
            err = np.array([[r["value"] - r["ci_low"] for r in rows], [r["ci_high"] - r["value"] for r in rows]])
            left.bar(x + (k - 1) * 0.27, values, 0.27, yerr=err, capsize=3, label=metric)
        left.set_xticks(x, names)
        left.set_ylim(0, 1)
        left.legend()
        left.set_title("SSA per system (95% CI)")
    else:
        rows = [c for c in report["comparisons"] if c["win_rate_a"] is not None]
        labels = [f"{c['system_a']} vs {c['system_b']}" for c in rows]
        rates = np.array([c["win_rate_a"] for c in rows])
        err = np.array([[c["win_rate_a"] - c["ci_low"] for c in rows], [c["ci_high"] - c["win_rate_a"] for c in rows]])
        left.barh(np.arange(len(rows)), rates, xerr=err.reshape(2, -1), capsize=3)
        left.set_yticks(np.arange(len(rows)), labels)
        left.axvline(0.5, color="grey", linestyle="--")
        left.set_xlim(0, 1)
        left.set_title("Win rate of A (ties excluded, 95% CI)")
    screened = {r: row["accuracy"] for r, row in report["raters"].items() if row["accuracy"] is not None}
    right.bar(list(screened), list(screened.values()),
              color=["tab:red" if report["raters"][r]["excluded"] else "tab:green" for r in screened])
    right.axhline(report["min_honeypot_accuracy"], color="grey", linestyle="--")
    right.set_ylim(0, 1)
    right.set_title("Honeypot accuracy per rater")
    right.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
