"""The SSA loop with simulated raters: the previous fresh-install default against the shipped chain.

Runs the real labeling loop (`ssa export` → simulated answers in the platform's format → `ssa import` →
`ssa report`) on held-out contexts (Topical-Chat dev+test, Russian dev; the same draw as the side-by-side
bench), with two systems answering from the same bank: plain e5-small cosine, bank-first (what a fresh
install served before the shipped chain) and the shipped chain (query adapter + blender + hygiene).

Simulated raters need a planted truth. ``--truth scripted`` is the labeling module's transparent rule
(right language, not a repeat; specific = also ≥ 6 words and not generic): it cannot see relevance, so it
measures form, not sense. ``--truth judge`` takes sensibleness from the trained sensibleness judge
(score above the threshold that accepts 80% of gold replies on the same contexts) and specificity from
the scripted rule on top of it. Both are stand-ins for people and the report says which one ran.

    python -m bench.bench_ssa_default --home WORKSPACE --data ../shared/data [--per-language 100]
        [--truth scripted|judge --judge DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.bench_side_by_side import contexts as heldout_contexts
from bench.report import markdown_table, write_results
from core.config import Settings, load_settings
from core.types import Context
from dialog.labeling.report import build_report
from dialog.labeling.simulate import SimulatedRater, Truth, scripted_truth, simulate_answers, write_simulated
from dialog.labeling.store import LabelStore
from dialog.labeling.tasks import load_export, load_key
from dialog.labeling.workflow import export_pointwise, import_labels
from dialog.serving.assembly import build_pipeline
from dialog.serving.pipeline import PipelineRequest

SYSTEMS = ("previous-default", "shipped")


def answer_all(settings: Settings, items: list[tuple[str, Context, str]]) -> tuple[dict[str, str], dict[str, str]]:
    """Each context id's top answer under ``settings``, and the pipeline's versions."""
    assembled = build_pipeline(settings)
    try:
        out = {}
        for i, (language, context, _gold) in enumerate(items):
            request = PipelineRequest(context, top_k=1, deadline=time.monotonic() + 60, language_hint=language)
            result = assembled.pipeline.respond(request)
            out[f"{language}-{i:03d}"] = result.candidates[0].text if result.candidates else "(no answer)"
        return out, dict(assembled.pipeline.versions)
    finally:
        assembled.close()


def judge_truth(export_dir: Path, judge_dir: Path, models_dir: Path, items: dict[str, tuple[str, Context, str]]
                ) -> tuple[dict[tuple[str, str], Truth], float]:
    """Sensible from the judge (threshold accepting 80% of golds), specific from the scripted rule on top."""
    from rl.judge import load_judge  # optional artifact: only this truth needs it

    judge = load_judge(judge_dir, models_dir)
    scripted = scripted_truth(export_dir)
    export = load_export(export_dir)
    key = load_key(export_dir / "key.json", export)
    golds = judge.score([items[cid][1] for cid in items], [items[cid][2] for cid in items])
    threshold = float(np.quantile(np.asarray(golds), 0.2))
    truth: dict[tuple[str, str], Truth] = {}
    for task_id, task in export.tasks.items():
        if task.honeypot:
            continue
        score = float(judge.score([items[task.context_id][1]], [task.responses[0]])[0])
        for name in key.names(task_id):
            sensible = score >= threshold
            truth[(task.context_id, name)] = Truth(sensible, sensible and scripted[(task.context_id, name)].specific)
    return truth, threshold


def run_loop(work: Path, systems: dict[str, Callable[[Context], str]], contexts: dict[str, Context],
             truth_of: Callable[[Path], dict[tuple[str, str], Truth]], seed: int) -> dict[str, Any]:
    """Export → simulated answers (five careful raters, one careless) → import → report, as a team would."""
    export_dir = work / "export"
    export_pointwise(contexts, systems, export_dir, "jsonl", overlap=5, honeypot_rate=0.0, seed=seed)
    raters = [SimulatedRater(f"rater-{n}", 0.9) for n in range(1, 6)] + [SimulatedRater("rater-6", careless=True)]
    answers = simulate_answers(export_dir, raters, truth_of(export_dir), seed=seed)
    path = write_simulated(answers, export_dir, work / "answers.jsonl", "jsonl")
    with LabelStore(work / "labels.sqlite") as store:
        import_labels(export_dir, path, "jsonl", store)
        return build_report(store, export_dir, out_dir=work / "report", seed=seed)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="workspace with the default bank and its index")
    parser.add_argument("--data", type=Path, required=True, help="folder with topicalchat_valid/ and ru/")
    parser.add_argument("--per-language", type=int, default=100)
    parser.add_argument("--truth", choices=("scripted", "judge"), default="scripted")
    parser.add_argument("--judge", type=Path, default=None, help="sensibleness judge directory (--truth judge)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.truth == "judge" and args.judge is None:
        parser.error("--truth judge needs --judge DIR (train one with `repliq train judge`)")
    settings = load_settings(environ={"REPLIQ_HOME": str(args.home)})
    before = replace(settings, encoder=replace(settings.encoder, adapter="none"),
                     ranker=replace(settings.ranker, blender="none"))
    items = heldout_contexts(args.data, args.per_language)
    keyed = {f"{lang}-{i:03d}": (lang, ctx, gold) for i, (lang, ctx, gold) in enumerate(items)}
    answers = {"previous-default": answer_all(before, items), "shipped": answer_all(settings, items)}
    rows: list[list[Any]] = []
    record: dict[str, Any] = {"truth": args.truth, "per_language": args.per_language, "languages": {},
                              "versions": {name: versions for name, (_, versions) in answers.items()}}
    for language in ("en", "ru"):
        ids = [cid for cid, (lang, _, _) in keyed.items() if lang == language]
        id_of = {id(keyed[cid][1]): cid for cid in ids}
        systems = {name: (lambda ctx, _a=replies, _id=id_of: _a[_id[id(ctx)]])
                   for name, (replies, _) in answers.items()}
        contexts = {cid: keyed[cid][1] for cid in ids}

        def truth_of(export_dir: Path, _ids: list[str] = ids, _lang: str = language) -> dict[tuple[str, str], Truth]:
            if args.truth == "scripted":
                return scripted_truth(export_dir)
            truth, threshold = judge_truth(export_dir, args.judge, settings.models_dir,
                                           {cid: keyed[cid] for cid in _ids})
            record.setdefault("judge_threshold", {})[_lang] = threshold
            return truth

        with tempfile.TemporaryDirectory(prefix=f"ssa-{language}-") as tmp:
            report = run_loop(Path(tmp), systems, contexts, truth_of, args.seed)
        record["languages"][language] = report["systems"]
        for name in SYSTEMS:
            row = report["systems"][name]
            rows.append([language, name, row["contexts"]] + [
                f"{row[m]['value']:.3f} [{row[m]['ci_low']:.3f}, {row[m]['ci_high']:.3f}]"
                for m in ("sensibleness", "specificity", "ssa")])
        record["languages"][language]["comparisons"] = report["comparisons"]
    section = (f"## SSA with simulated raters: previous default vs shipped chain — `bench/bench_ssa_default.py`\n\n"
               f"{args.per_language} held-out contexts per language, both systems answering from the same bank; "
               f"five simulated raters at 0.9 accuracy plus one careless rater, majority vote, bootstrap 95% "
               f"intervals. Planted truth: **{args.truth}** "
               + ("(right language, not a repeat; specific = ≥ 6 words and not generic: it measures form, not "
                  "relevance)" if args.truth == "scripted" else
                  "(sensible = the sensibleness judge above the score that accepts 80% of gold replies; "
                  "specific = sensible and the scripted rule)")
               + ".\n\n" + markdown_table(["lang", "system", "contexts", "sensibleness", "specificity", "SSA"], rows))
    write_results(f"ssa_default_{args.truth}", record, section)


if __name__ == "__main__":
    main()
