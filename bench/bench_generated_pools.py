"""Does a blender retrained with generated candidates in its pools rank better with generation on? (issue 17)

Generation costs seconds per reply on this CPU, so the saved ranking data of a trained workspace
(``<home>/artifacts/blender-data``) is reused and only a sample S of its contexts (``--dev`` dev and
``--train`` train contexts) is rebuilt, once, with up to two generated candidates each (the served
generator: the workspace LM with UPRISE demonstrations from its prompt retriever, the serving filters,
``--budget`` seconds per context). From that one build:

- **off**: blender B trained on all pools with the generated rows removed (``restrict_origins``, which
  recomputes the pool-relative columns), evaluated on the rebuilt dev pools without them;
- **on**: blender G trained on the same pools with the generated rows, evaluated on the dev pools with them;
- **B on pools with generation**: the blender that never saw a generated reply, facing them (the
  situation the issue found: it put the generated reply first).

R@1 and R@10 count the gold reply at the top / in the top 10 (the gold is in every pool); "generated
picked" is the share of dev pools whose top candidate is generated. Paired bootstrap intervals over
the dev pools of S. Generated replies are labelled 0 like every non-gold candidate, so R@k can only fall
when they enter: the question is by how much, and how often the blender still serves them.

    cp -a /work/train-home /tmp/gen-home && cp -a <home with prompts>/artifacts/prompt-* /tmp/gen-home/artifacts/
    .venv/bin/python -m bench.bench_generated_pools --home /tmp/gen-home --dev 100 --train 150 --budget 4
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ranker.dataset import RankingDataset
from ranker.training_data import concat_datasets


def without_groups(dataset: RankingDataset, drop: set[str]) -> RankingDataset:
    keep = [g for g, c in enumerate(dataset.context_ids) if c not in drop]
    off = dataset.offsets
    rows = np.concatenate([np.arange(off[g], off[g + 1]) for g in keep])
    return replace(dataset, X=dataset.X[rows], y=dataset.y[rows], group_sizes=dataset.group_sizes[keep],
                   context_ids=[dataset.context_ids[g] for g in keep],
                   conversation_ids=[dataset.conversation_ids[g] for g in keep],
                   splits=[dataset.splits[g] for g in keep], texts=[dataset.texts[r] for r in rows],
                   origins=[dataset.origins[r] for r in rows])


def per_pool(scores: np.ndarray, data: RankingDataset) -> dict[str, np.ndarray]:
    """Per pool: gold at 1, gold in the top 10, top candidate generated (ties broken against the gold)."""
    r1, r10, gen = [], [], []
    for a, b in zip(data.offsets[:-1], data.offsets[1:], strict=True):
        s, y = scores[a:b], data.y[a:b]
        gold = s[y > 0].max()
        rank = 1 + int((s[y <= 0] >= gold).sum())
        r1.append(rank == 1)
        r10.append(rank <= 10)
        gen.append(data.origins[a + int(np.argmax(s))] == "generated")
    return {"r@1": np.array(r1, float), "r@10": np.array(r10, float), "generated_top1": np.array(gen, float)}


def paired_ci(a: np.ndarray, b: np.ndarray, seed: int = 0, resamples: int = 2000) -> list[float]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(resamples, len(a)))
    diffs = (a[idx] - b[idx]).mean(axis=1)
    return [round(float(np.quantile(diffs, 0.025)), 4), round(float(np.quantile(diffs, 0.975)), 4)]


def build_sample(settings: Any, saved: RankingDataset, data_dir: Path, args: argparse.Namespace
                 ) -> tuple[RankingDataset, Any, Any, Any]:
    """Rebuild the sampled contexts' pools with generated candidates, with the saved data's own features."""
    from core.bank.store import PhraseBank
    from core.corpora import ContextPair
    from core.job_configs import DEFAULT_POOLS
    from core.types import SOURCE_BANK, Candidate
    from dialog.generation.training import TrainingGeneration, training_generator
    from ranker.annotators import build_annotators, describe
    from ranker.dataset import build_ranking_dataset, encoder_similarity
    from ranker.idf import IdfTable
    from ranker.training_data import load_training_data
    from retriever.encoder import Encoder
    from retriever.encoder_cache import index_backed_encoder
    from rl.blender_setup import annotator_resources

    _, contexts, languages = load_training_data(data_dir)
    responses = {json.loads(line)["context_id"]: json.loads(line)["response"]
                 for line in (data_dir / "contexts.jsonl").read_text(encoding="utf-8").splitlines()}
    rng = np.random.default_rng(args.seed)
    chosen = []
    for split, n in (("dev", args.dev), ("train", args.train)):
        ids = [g for g, s in enumerate(saved.splits) if s == split]
        chosen += sorted(rng.choice(ids, size=min(n, len(ids)), replace=False).tolist())
    pairs = [ContextPair(saved.context_ids[g], saved.conversation_ids[g], languages[saved.context_ids[g]],
                         contexts[saved.context_ids[g]], responses[saved.context_ids[g]], {}) for g in chosen]
    idf = IdfTable.load(data_dir / "idf.json")
    with PhraseBank(settings.bank_path) as bank:
        encoder = index_backed_encoder(settings, Encoder.from_config(settings), bank)
        approved = [Candidate(p.text, SOURCE_BANK, p.language, phrase_id=p.id) for p in bank.phrases(status="approved")]
    resources, descriptor = annotator_resources(settings, encoder, idf)
    annotators = build_annotators(resources)
    if describe(annotators) != saved.annotators or {"idf": idf.hash, **descriptor} != saved.resources:
        raise SystemExit("the saved ranking data was built with other annotators or resources; retrain the blender")
    generate = training_generator(settings, TrainingGeneration(per_context=2, max_contexts=len(pairs),
                                                               budget_s=args.budget, seed=args.seed))
    started = time.perf_counter()
    done = [0]

    def progress(n: int) -> None:
        done[0] += n
        print(f"  {done[0]}/{len(pairs)} contexts, {generate.stats.candidates} generated, "
              f"{time.perf_counter() - started:.0f} s", flush=True)

    sample = build_ranking_dataset(pairs, annotators, approved, generate=generate,
                                   similarity=encoder_similarity(encoder, settings.retrieval.context_turns),
                                   config=replace(DEFAULT_POOLS, batch_size=16), resources=saved.resources,
                                   progress=progress)
    return sample, annotators, idf, generate


def evaluate(settings: Any, saved: RankingDataset, sample: RankingDataset, annotators: Any, idf: Any,
             out: Path, rounds: int) -> dict[str, Any]:
    from core.job_configs import BlenderTrainConfig
    from ranker.blender import Blender
    from ranker.dataset import restrict_origins
    from ranker.train import train_blender

    no_gen = restrict_origins(sample, set(sample.origins) - {"generated"}, annotators)
    rest = without_groups(saved, set(sample.context_ids))
    config = BlenderTrainConfig(rounds=rounds)
    fits = {"on": train_blender(concat_datasets([rest, sample]), config, out / "blender-gen", idf=idf,
                                annotators=annotators),
            "off": train_blender(concat_datasets([rest, no_gen]), config, out / "blender-nogen", idf=idf,
                                 annotators=annotators)}
    blenders = {k: Blender.load(out / f"blender-{'gen' if k == 'on' else 'nogen'}") for k in ("on", "off")}
    dev_on, dev_off = sample.subset("dev"), no_gen.subset("dev")
    rows = {"off": per_pool(blenders["off"].raw_scores(dev_off.X), dev_off),
            "on": per_pool(blenders["on"].raw_scores(dev_on.X), dev_on),
            "B with generation": per_pool(blenders["off"].raw_scores(dev_on.X), dev_on)}
    has_gen = np.array([any(dev_on.origins[i] == "generated" for i in range(a, b))
                        for a, b in zip(dev_on.offsets[:-1], dev_on.offsets[1:], strict=True)])
    result: dict[str, Any] = {"dev_pools": len(dev_on.group_sizes), "dev_pools_with_generated": int(has_gen.sum()),
                              "fit": {k: {m: v for m, v in f.items() if isinstance(v, int | float)}
                                      for k, f in fits.items()}, "systems": {}}
    for name, values in rows.items():
        result["systems"][name] = {m: round(float(v.mean()), 4) for m, v in values.items()}
        result["systems"][name]["generated_top1_where_present"] = round(
            float(values["generated_top1"][has_gen].mean()) if has_gen.any() else 0.0, 4)
    for metric in ("r@1", "r@10"):
        result[f"{metric}_on_minus_off_ci"] = paired_ci(rows["on"][metric], rows["off"][metric])
    return result


def section(result: dict[str, Any], args: argparse.Namespace) -> str:
    from bench.report import markdown_table

    gen = result["generation"]
    table = markdown_table(["system (dev pools of S)", "R@1", "R@10", "generated picked", "… where a generated one "
                            "is in the pool"],
                           [[name, s["r@1"], s["r@10"], s["generated_top1"], s["generated_top1_where_present"]]
                            for name, s in result["systems"].items()])
    return (
        "### Generated candidates in the blender's pools — `bench/bench_generated_pools.py`\n\n"
        f"{args.dev} dev + {args.train} train contexts of the workspace's saved ranking data rebuilt with up to 2 "
        f"generated candidates each ({result['lm']}, UPRISE demonstrations: {result['prompts']}; {args.budget} s "
        f"budget per context). Generation: {gen['candidates']} candidates for {gen['contexts']} contexts, "
        f"{gen['empty']} contexts got none (no sample finished within the budget and max_new_tokens, or none "
        f"passed the filters), {gen['seconds_per_context']} s per context. "
        f"{result['dev_pools']} dev pools, {result['dev_pools_with_generated']} of them with a generated candidate. "
        "off = blender trained and evaluated without the generated rows; on = retrained with them, evaluated "
        "with them; B with generation = the off blender facing generated candidates.\n\n" + table +
        f"\n\nPaired 95% bootstrap, on − off: R@1 {result['r@1_on_minus_off_ci']}, "
        f"R@10 {result['r@10_on_minus_off_ci']}."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", required=True, help="a COPY of a trained workspace (blenders are written in it)")
    parser.add_argument("--dev", type=int, default=100)
    parser.add_argument("--train", type=int, default=150)
    parser.add_argument("--budget", type=float, default=4.0, help="generation seconds per context")
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    from core.config import load_settings

    settings = load_settings(environ={**os.environ, "REPLIQ_HOME": args.home})
    data_dir = settings.artifacts_dir / "blender-data"
    saved = RankingDataset.load(data_dir / "dataset.npz")
    sample, annotators, idf, generate = build_sample(settings, saved, data_dir, args)
    result = evaluate(settings, saved, sample, annotators, idf, settings.artifacts_dir / "generated-pools",
                      args.rounds)
    result.update(generation=generate.stats.to_json(), lm=generate.source.version,
                  prompts=generate.source.generator.prompts_ref or "none (zero-shot)")
    print(json.dumps(result, indent=2, ensure_ascii=False))
    if not args.no_write:
        from bench.report import write_results

        write_results("generated_pools", {"dev": args.dev, "train": args.train, "budget_s": args.budget, **result},
                      section(result, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
