"""What retrieved demonstrations cost a generated reply: latency with K UPRISE demonstrations vs zero-shot.

For dev contexts of each language (the dev hash split, never in the prompt pool) the served generator
(the workspace's LM, sampling settings and filters) answers each context twice, zero-shot and with the
workspace's prompt retriever's K demonstrations, in alternating order so that drift in the machine's
load hits both alike. Each attempt gets a generous deadline, so the time measured is what the reply
takes, not what the serving budget allows; the serving budget (``[generation] budget_s``) then says
which share would have made it in time. Reported per condition: prompt tokens, wall time per attempt
(median, p90), the paired ratio demonstrations / zero-shot, and the share of attempts that produced a
reply that passed the filters.

    python -m bench.bench_generation_latency --home WORKSPACE --data ../shared/data [--contexts 12]
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import markdown_table, write_results
from core.config import load_settings
from core.lm.wrapper import DecoderLM, LMOptions
from dialog.generation.generator import LMGenerator
from dialog.generation.source import load_prompts
from retriever.prompt_data import PromptCorpora, read_sources, training_examples

GENEROUS_S = 120.0


def measure(generator: LMGenerator, zero: LMGenerator, contexts: list[Any]) -> dict[str, list[dict[str, float]]]:
    rows: dict[str, list[dict[str, float]]] = {"zero-shot": [], "demonstrations": []}
    for i, pair in enumerate(contexts):
        order = [("zero-shot", zero), ("demonstrations", generator)]
        for name, gen in order if i % 2 == 0 else order[::-1]:
            plan = gen.plan(pair.context, pair.language)
            started = time.perf_counter()
            found = gen.candidates(pair.context, pair.language, gen.config.n_candidates,
                                   time.monotonic() + GENEROUS_S)
            rows[name].append({"seconds": time.perf_counter() - started, "prompt_tokens": float(len(plan.ids)),
                               "demonstrations": float(plan.demonstrations), "replied": float(bool(found)),
                               "language_ru": float(pair.language == "ru")})
    return rows


def summarize(rows: dict[str, list[dict[str, float]]], budget_s: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, items in rows.items():
        seconds = np.array([r["seconds"] for r in items])
        out[name] = {"attempts": len(items), "prompt_tokens_mean": float(np.mean([r["prompt_tokens"] for r in items])),
                     "demonstrations_mean": float(np.mean([r["demonstrations"] for r in items])),
                     "seconds_p50": float(np.median(seconds)), "seconds_p90": float(np.percentile(seconds, 90)),
                     "within_budget": float(np.mean(seconds <= budget_s)),
                     "replied": float(np.mean([r["replied"] for r in items]))}
    ratio = (np.array([r["seconds"] for r in rows["demonstrations"]])
             / np.array([r["seconds"] for r in rows["zero-shot"]]))
    out["paired_ratio_median"] = float(np.median(ratio))
    out["paired_ratio_p90"] = float(np.percentile(ratio, 90))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="workspace with a trained prompt retriever")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="the shared data folder")
    parser.add_argument("--contexts", type=int, default=12, help="dev contexts per language (default 12)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the LM (default 1)")
    args = parser.parse_args(argv)
    settings = load_settings(environ={**os.environ, "REPLIQ_HOME": str(args.home)})
    prompts, ref = load_prompts(settings)
    if prompts is None:
        raise SystemExit(f"no prompt retriever in {args.home}; run `repliq train prompts` there first")
    lm = DecoderLM.from_cache(settings.lm.name, settings.models_dir, LMOptions(dtype=settings.lm.dtype,
                                                                               threads=args.threads))
    generator = LMGenerator(lm, settings.generation, prompts=prompts, prompts_ref=ref)
    zero = LMGenerator(lm, replace(settings.generation, demonstrations=0))
    corpora = PromptCorpora(chitchat_conversations=0, russian=args.data / "ru" / "koziev_anekdot_dialogues.tar.xz",
                            topicalchat=args.data / "topicalchat_valid")
    contexts = training_examples((d for ds in read_sources(corpora).values() for d in ds), args.contexts, 7,
                                 settings.generation.context_turns, split="dev")
    generator.candidates(contexts[0].context, contexts[0].language, 1, time.monotonic() + GENEROUS_S)  # warm-up
    result = summarize(measure(generator, zero, contexts), settings.generation.budget_s)
    record = {"lm": lm.lm_id, "prompt_retriever": ref, "k": settings.generation.demonstrations,
              "n_candidates": settings.generation.n_candidates, "max_new_tokens": settings.generation.max_new_tokens,
              "budget_s": settings.generation.budget_s, "threads": args.threads, "contexts": len(contexts),
              "result": result}
    table = markdown_table(
        ["prompt", "attempts", "prompt tokens", "demonstrations", "p50 s", "p90 s",
         f"within the {settings.generation.budget_s:g} s budget", "got a reply"],
        [[name, r["attempts"], r["prompt_tokens_mean"], r["demonstrations_mean"], r["seconds_p50"], r["seconds_p90"],
          r["within_budget"], r["replied"]] for name, r in result.items() if isinstance(r, dict)])
    section = (
        "### Latency of retrieved demonstrations — `bench/bench_generation_latency.py`\n\n"
        f"{len(contexts)} dev contexts ({args.contexts} per language), each answered zero-shot and with "
        f"K = {settings.generation.demonstrations} demonstrations from {ref} in alternating order; {lm.lm_id}, "
        f"{args.threads} torch thread(s), {settings.generation.n_candidates} samples of at most "
        f"{settings.generation.max_new_tokens} tokens, no deadline pressure.\n\n{table}\n\n"
        f"Paired ratio demonstrations / zero-shot per context: median {result['paired_ratio_median']:.2f}, "
        f"p90 {result['paired_ratio_p90']:.2f}.")
    write_results("generation_latency", record, section)
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
