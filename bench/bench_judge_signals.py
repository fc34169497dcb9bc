"""Which scorer tells the gold reply from a plausible wrong one? The judge's dev pools, every candidate signal.

The sensibleness judge (`repliq train judge`) missed its AUC targets (gold vs same-corpus ≥ 0.75, gold vs
retrieved ≥ 0.70). Before spending hours of CPU on a bigger judge, this measures whether the signals the project
already has separate those pairs at all, on the very rows the judge is scored on (dev hash splits only):

* the trained judge and the relevance gate (the workspace's, or fitted on the judge's train contexts);
* the teacher LM's conditional signals: PMI (log p(r|c) − log p(r)), its per-token form, and the conditional
  log-probability per token. The teacher study found PMI the one candidate that tracks hand-labelled SSA;
  if it also ranks gold above retrieved phrases, it is the teacher to distil the judge from.

Writes `bench/results/judge_signals.json` and its table into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from bench.report import markdown_table, write_results
from core.config import load_settings
from core.judge_config import JudgeJobConfig
from core.lm.wrapper import DecoderLM, LMOptions
from dialog.jobs.train_judge import judge_pools, judge_relevance, read_dialogues
from rl.judge import load_judge
from rl.judge_data import flatten, group_aucs, split_pairs
from rl.teacher import TeacherCache, score_with_cache, teacher_values

LM_SIGNALS = ("pmi", "pmi_per_token", "cond_log_ppl")
# Higher must mean "more sensible" for an AUC of gold vs negative; the log-perplexity is flipped.
SIGN = {"pmi": 1.0, "pmi_per_token": 1.0, "cond_log_ppl": -1.0}


def measure(home: Path, data: Path, judge_dir: Path | None, dev_contexts: int, lm_name: str) -> dict:
    settings = load_settings(environ={**os.environ, "REPLIQ_HOME": str(home)})
    config = JudgeJobConfig(russian=data / "ru" / "koziev_anekdot_dialogues.tar.xz",
                            topicalchat=data / "topicalchat_valid", convai2=data / "convai2",
                            dev_contexts=dev_contexts)
    dialogues = read_dialogues(config)
    turns = config.train.context_turns
    train = split_pairs(dialogues, "train", config.train_contexts, turns, config.train.seed)
    dev = split_pairs(dialogues, "dev", config.dev_contexts, turns, config.train.seed)
    _, dev_groups, encoder = judge_pools(settings, config, train, dev)
    contexts, texts, kinds, languages = flatten(dev_groups)
    scorers: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    if judge_dir is not None:
        started = time.perf_counter()
        scorers["judge"] = load_judge(judge_dir, settings.models_dir).score(contexts, texts)
        seconds["judge"] = time.perf_counter() - started
    relevance, relevance_source = judge_relevance(settings, config, train, encoder)
    scorers["relevance gate"] = relevance.score(contexts, texts)
    lm = DecoderLM.from_cache(lm_name, settings.models_dir, LMOptions(dtype=settings.lm.dtype))
    cache = TeacherCache.open(home / "artifacts" / "judge-signals-cache.jsonl")
    started = time.perf_counter()
    scores = score_with_cache(lm, contexts, texts, list(languages), cache, context_turns=turns)
    cache.save()
    seconds["lm"] = time.perf_counter() - started
    for name in LM_SIGNALS:
        scorers[name] = SIGN[name] * teacher_values(scores, name)
    return {"rows": len(texts), "groups": len(dev_groups), "lm": lm.lm_id, "relevance_source": relevance_source,
            "judge": str(judge_dir) if judge_dir else None, "seconds": seconds,
            "aucs": {name: group_aucs(np.nan_to_num(values, nan=-1e9), kinds, languages)
                     for name, values in scorers.items()}}


def render(result: dict) -> str:
    rows = []
    for name, per_language in result["aucs"].items():
        for language, row in sorted(per_language.items()):
            rows.append([name, language, int(row["contexts"]), row.get("auc_gold_vs_corpus", float("nan")),
                         row.get("auc_gold_vs_retrieved", float("nan")), row.get("auc_gold_vs_random", float("nan"))])
    return "\n".join([
        "## Which signal tells gold from plausible? (issue 14) — `bench/bench_judge_signals.py`", "",
        f"The sensibleness judge's dev pools ({result['groups']} contexts from the dev hash splits, one gold, one "
        "same-corpus reply of another dialogue, one of the bank's top-5 retrieved phrases and one random bank phrase "
        f"each; {result['rows']} rows), scored by every signal at hand. LM signals from {result['lm']}; the relevance "
        f"gate is {result['relevance_source']}. Targets for the judge: gold vs same-corpus ≥ 0.75, gold vs retrieved "
        "≥ 0.70.", "",
        markdown_table(["scorer", "language", "contexts", "AUC gold vs same-corpus", "AUC gold vs retrieved",
                        "AUC gold vs random"], rows),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="workspace with the bank and its index")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--judge", type=Path, default=None, help="a trained judge directory (artifacts/judge)")
    parser.add_argument("--dev-contexts", type=int, default=200, help="dev contexts per language")
    parser.add_argument("--lm", default="gemma-3-270m")
    parser.add_argument("--dry-run", action="store_true", help="print the results, write nothing")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    result = measure(args.home, args.data, args.judge, args.dev_contexts, args.lm)
    print(render(result))
    if not args.dry_run:
        write_results("judge_signals", result, render(result))


if __name__ == "__main__":
    main()
