"""Simulated-rater SSA of the served answer with generation off vs always, same workspace and blender (issue 17).

Both systems are the workspace's serving pipeline with one blender, the one retrained with generated
candidates in its pools (``bench.bench_generated_pools`` writes ``<home>/artifacts/generated-pools/
blender-graded-m0`` for margin 0), and differ only in ``[generation] mode``: "off" (bank phrases only) or "always" (the
generator with UPRISE demonstrations adds up to ``n_candidates`` replies within its ``budget_s``). Each
answers held-out contexts (the side-by-side bench's draw: Topical-Chat valid, Russian dev), and the
real labeling loop runs on their top answers (`ssa export` → simulated raters → `ssa import` →
`ssa report`, as in ``bench.bench_ssa_default``) with each planted truth: ``scripted`` (form only) and
``judge`` (the sensibleness judge; needs ``--judge``). The paired difference on − off of per-context
SSA (majority of the simulated raters) gets a bootstrap 95% interval over contexts, per language.

    python -m bench.bench_generation_ssa --home WORKSPACE --data ../shared/data [--per-language 40]
        [--blender DIR] [--judge DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

OFF, ON, OLD_OFF, OLD = "generation-off", "generation-on", "generation-off-old-blender", "generation-on-old-blender"
BASELINE = {ON: OFF, OLD: OLD_OFF}  # each "on" system against "off" with the same blender


def answer_all(settings: Any, items: list[tuple[str, Any, str]]) -> dict[str, Any]:
    """Each context's top answer, whether it was generated, and the seconds per request."""
    from dialog.serving.assembly import build_pipeline
    from dialog.serving.pipeline import PipelineRequest

    assembled = build_pipeline(settings)
    try:
        texts, generated, seconds = {}, {}, []
        for i, (language, context, _gold) in enumerate(items):
            started = time.monotonic()
            request = PipelineRequest(context, top_k=1, deadline=started + 60, language_hint=language)
            result = assembled.pipeline.respond(request)
            seconds.append(time.monotonic() - started)
            top = result.candidates[0] if result.candidates else None
            texts[f"{language}-{i:03d}"] = top.text if top is not None else "(no answer)"
            generated[f"{language}-{i:03d}"] = top is not None and top.source == "generated"
        return {"texts": texts, "generated": generated, "seconds": seconds,
                "versions": dict(assembled.pipeline.versions)}
    finally:
        assembled.close()


def paired_ssa(work: Path, on: str, off: str) -> dict[str, float]:
    """Per-context SSA of each system from the aggregated labels; on − off with a bootstrap 95% interval."""
    from dialog.labeling.report import analyze
    from dialog.labeling.store import LabelStore

    with LabelStore(work / "labels.sqlite") as store:
        a = analyze(store, work / "export")
    per: dict[str, dict[str, float]] = {}
    for tid, (sens, spec) in a.items.items():
        for name in a.key.names(tid):
            per.setdefault(a.export.tasks[tid].context_id, {})[name] = (sens + spec) / 2
    diffs = np.array([row[on] - row[off] for row in per.values() if on in row and off in row])
    if not len(diffs):
        return {"contexts": 0}
    boot = np.random.default_rng(0).integers(0, len(diffs), size=(2000, len(diffs)))
    means = diffs[boot].mean(axis=1)
    return {"contexts": len(diffs), "on_minus_off": round(float(diffs.mean()), 4),
            "ci_low": round(float(np.quantile(means, 0.025)), 4), "ci_high": round(float(np.quantile(means, 0.975)), 4),
            "on_better": int((diffs > 0).sum()), "off_better": int((diffs < 0).sum())}


def run_truth(truth: str, args: argparse.Namespace, settings: Any, keyed: dict[str, tuple[str, Any, str]],
              answers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from bench.bench_ssa_default import judge_truth, run_loop
    from dialog.labeling.simulate import scripted_truth

    out: dict[str, Any] = {}
    for language in ("en", "ru"):
        ids = [cid for cid, (lang, _, _) in keyed.items() if lang == language]
        id_of = {id(keyed[cid][1]): cid for cid in ids}
        systems = {name: (lambda ctx, _t=answers[name]["texts"], _id=id_of: _t[_id[id(ctx)]]) for name in answers}
        record: dict[str, Any] = {}

        def truth_of(export_dir: Path, _ids: list[str] = ids, _record: dict[str, Any] = record) -> Any:
            if truth == "scripted":
                return scripted_truth(export_dir)
            planted, threshold = judge_truth(export_dir, args.judge, settings.models_dir,
                                             {cid: keyed[cid] for cid in _ids})
            _record["judge_threshold"] = threshold
            return planted

        with tempfile.TemporaryDirectory(prefix=f"gen-ssa-{language}-") as tmp:
            report = run_loop(Path(tmp), systems, {cid: keyed[cid][1] for cid in ids}, truth_of, args.seed)
            out[language] = {"systems": report["systems"], **record, "on": {
                name: {"paired": paired_ssa(Path(tmp), name, off), "baseline": off,
                       "served_generated": sum(answers[name]["generated"][cid] for cid in ids),
                       "answers_differ": sum(answers[off]["texts"][cid] != answers[name]["texts"][cid] for cid in ids)}
                for name, off in BASELINE.items() if name in answers}}
    return out


def section(record: dict[str, Any]) -> str:
    from bench.report import markdown_table

    rows = []
    for truth, by_language in record["truths"].items():
        for language, r in by_language.items():
            for name, o in r["on"].items():
                p = o["paired"]
                cells = [f"{r['systems'][n]['ssa']['value']:.3f}" if n in r["systems"] else "–"
                         for n in (o["baseline"], name)]
                rows.append([truth, language, name, p.get("contexts", 0), *cells,
                             f"{p.get('on_minus_off', float('nan')):+.3f} [{p.get('ci_low', float('nan')):+.3f}, "
                             f"{p.get('ci_high', float('nan')):+.3f}]",
                             f"{p.get('on_better', 0)}/{p.get('off_better', 0)}", o["served_generated"],
                             o["answers_differ"]])
    lat = record["seconds_per_request"]
    return ("### SSA of the served answer, generation off vs on — `bench/bench_generation_ssa.py`\n\n"
            f"{record['per_language']} held-out contexts per language; generation off and on serve the same "
            f"workspace and blender (`{record['blender']}`), generation off vs always ({record['generator']}). "
            + (f"'{OLD}' and '{OLD_OFF}' serve the workspace's own blender (trained without generated candidates). "
               if OLD in lat else "")
            + "Five simulated raters at 0.9 accuracy plus one careless, majority vote; on − off is the paired "
            "difference of per-context SSA with a bootstrap 95% interval. Seconds per request: "
            + ", ".join(f"{name} {value}" for name, value in lat.items()) + ".\n\n"
            + markdown_table(["truth", "lang", "system on (vs off, same blender)", "contexts", "SSA off", "SSA on",
                              "on − off [95% CI]",
                              "contexts on better / off better", "served answers generated", "answers differ"], rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, required=True, help="workspace (its LM, prompt retriever, bank)")
    parser.add_argument("--data", type=Path, required=True, help="folder with topicalchat_valid/ and ru/")
    parser.add_argument("--per-language", type=int, default=40)
    parser.add_argument("--blender", type=Path, help="default: <home>/artifacts/generated-pools/blender-graded-m0")
    parser.add_argument("--judge", type=Path, help="sensibleness judge directory; without it only scripted truth")
    parser.add_argument("--old-blender", action="store_true",
                        help="also serve generation with the workspace's own blender (trained without generated "
                             "candidates): what generated replies do to SSA when they are served often")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    from bench.bench_side_by_side import contexts as heldout_contexts
    from core.config import load_settings

    settings = load_settings(environ={**os.environ, "REPLIQ_HOME": str(args.home)})
    blender = args.blender or settings.artifacts_dir / "generated-pools" / "blender-graded-m0"
    if not blender.is_dir():
        parser.error(f"no blender at {blender}; run bench.bench_generated_pools on this workspace first")
    base = replace(settings, ranker=replace(settings.ranker, blender=str(blender)))
    systems = {OFF: replace(base, generation=replace(base.generation, mode="off")),
               ON: replace(base, generation=replace(base.generation, mode="always"))}
    if args.old_blender:  # the workspace's own blender, never trained with generated candidates
        systems[OLD_OFF] = replace(settings, generation=replace(settings.generation, mode="off"))
        systems[OLD] = replace(settings, generation=replace(settings.generation, mode="always"))
    items = heldout_contexts(args.data, args.per_language)
    keyed = {f"{lang}-{i:03d}": (lang, ctx, gold) for i, (lang, ctx, gold) in enumerate(items)}
    answers = {name: answer_all(system, items) for name, system in systems.items()}
    record: dict[str, Any] = {
        "per_language": args.per_language, "blender": str(blender),
        "generator": answers[ON]["versions"].get("generator", "none"),
        "versions": {name: a["versions"] for name, a in answers.items()},
        "seconds_per_request": {name: round(float(np.mean(a["seconds"])), 2) for name, a in answers.items()},
        "examples": [{"context": keyed[cid][1].last_text, **{n: answers[n]["texts"][cid] for n in answers}}
                     for cid in list(keyed)[:: max(1, len(keyed) // 12)]],
        "truths": {}}
    for truth in ("scripted", "judge") if args.judge else ("scripted",):
        record["truths"][truth] = run_truth(truth, args, settings, keyed, answers)
    print(section(record))
    if not args.no_write:
        from bench.report import write_results

        write_results("generation_ssa", record, section(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
