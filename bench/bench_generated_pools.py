"""Does a blender retrained with generated candidates in its pools rank better with generation on? (issue 17)

Generation costs seconds per reply on this CPU, so the saved ranking data of a trained workspace
(``<home>/artifacts/blender-data``) is reused and only a sample S of its contexts (``--dev`` dev contexts
per language and ``--train`` train contexts) is rebuilt, once, with up to two generated candidates each
(the served generator: the workspace LM with UPRISE demonstrations from its prompt retriever, the serving
filters, ``--budget`` seconds per context). The rebuild adds the opt-in ``generation`` annotator
(``gen_logprob``, ``gen_pmi``; NaN for bank phrases, so the saved rows get NaN columns). The built sample
is cached by its arguments and the generator's version, so a rerun with another label rule is quick.
From that one build:

- **off**: blender trained on all pools with the generated rows removed (``restrict_origins``, which
  recomputes the pool-relative columns), evaluated on the rebuilt dev pools without them;
- **on, gold-only labels**: retrained with the generated rows, every one labelled 0 (the previous run);
- **on, graded labels**: retrained with the generated rows labelled by the teacher's PMI
  (``dialog.generation.grading``: 1 when a reply's PMI beats every one of the bank's top retrieved phrases,
  gold 2), evaluated on the dev pools with them;
- **B with generation**: the off blender facing generated candidates (what the issue found).

R@1 and R@10 count the gold reply at the top / in the top 10 (the gold is in every pool); "generated
picked" is the share of dev pools whose top candidate is generated. Paired bootstrap intervals over
the dev pools of S.

    cp -a /work/train-home /tmp/gen-home && cp -a <home with prompts>/artifacts/prompt-* /tmp/gen-home/artifacts/
    .venv/bin/python -m bench.bench_generated_pools --home /tmp/gen-home --dev 40 --train 150 --budget 6
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ranker.dataset import RankingDataset
from ranker.training_data import concat_datasets

SYSTEMS = ("off", "on, gold-only labels", "on, graded labels", "B with generation")


def without_groups(dataset: RankingDataset, drop: set[str]) -> RankingDataset:
    keep = [g for g, c in enumerate(dataset.context_ids) if c not in drop]
    off = dataset.offsets
    rows = np.concatenate([np.arange(off[g], off[g + 1]) for g in keep])
    return replace(dataset, X=dataset.X[rows], y=dataset.y[rows], group_sizes=dataset.group_sizes[keep],
                   context_ids=[dataset.context_ids[g] for g in keep],
                   conversation_ids=[dataset.conversation_ids[g] for g in keep],
                   splits=[dataset.splits[g] for g in keep], texts=[dataset.texts[r] for r in rows],
                   origins=[dataset.origins[r] for r in rows])


def with_columns(dataset: RankingDataset, annotators: Any) -> RankingDataset:
    """The saved rows with NaN in the added annotators' columns: exactly what those annotators give bank phrases."""
    from ranker.annotators import describe, feature_names

    names = feature_names(annotators)
    X = np.full((len(dataset.y), len(names)), np.nan, np.float32)
    for j, name in enumerate(dataset.feature_names):
        X[:, names.index(name)] = dataset.X[:, j]
    return replace(dataset, X=X, feature_names=names, annotators=describe(annotators))


def per_pool(scores: np.ndarray, data: RankingDataset) -> dict[str, np.ndarray]:
    """Per pool: gold at 1, gold in the top 10, top candidate generated (ties broken against the gold)."""
    r1, r10, gen, graded = [], [], [], []
    for a, b in zip(data.offsets[:-1], data.offsets[1:], strict=True):
        s = scores[a:b]
        is_gold = np.array([o == "gold" for o in data.origins[a:b]])
        gold = s[is_gold].max()
        rank = 1 + int((s[~is_gold] >= gold).sum())
        r1.append(rank == 1)
        r10.append(rank <= 10)
        top = a + int(np.argmax(s))
        gen.append(data.origins[top] == "generated")
        graded.append(data.origins[top] == "generated" and 0 < data.y[top] < data.y[a:b].max())
    return {"r@1": np.array(r1, float), "r@10": np.array(r10, float), "generated_top1": np.array(gen, float),
            "graded_up_generated_top1": np.array(graded, float)}


def paired_ci(a: np.ndarray, b: np.ndarray, seed: int = 0, resamples: int = 2000) -> list[float]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(resamples, len(a)))
    diffs = (a[idx] - b[idx]).mean(axis=1)
    return [round(float(np.quantile(diffs, 0.025)), 4), round(float(np.quantile(diffs, 0.975)), 4)]


def choose(saved: RankingDataset, languages: dict[str, str], args: argparse.Namespace) -> list[int]:
    """``--dev`` dev groups per language and ``--train`` train groups, seeded."""
    rng = np.random.default_rng(args.seed)
    chosen: list[int] = []
    for language in ("en", "ru"):
        ids = [g for g, s in enumerate(saved.splits) if s == "dev" and languages[saved.context_ids[g]] == language]
        chosen += sorted(rng.choice(ids, size=min(args.dev, len(ids)), replace=False).tolist())
    ids = [g for g, s in enumerate(saved.splits) if s == "train"]
    return chosen + sorted(rng.choice(ids, size=min(args.train, len(ids)), replace=False).tolist())


def build_sample(settings: Any, saved: RankingDataset, data_dir: Path, args: argparse.Namespace, out: Path
                 ) -> dict[str, Any]:
    """Rebuild the sampled contexts' pools with generated candidates and grade them (the build is cached)."""
    from core.atomic import atomic_write_json
    from core.bank.store import PhraseBank
    from core.corpora import ContextPair
    from core.job_configs import DEFAULT_POOLS
    from core.types import SOURCE_BANK, Candidate
    from dialog.generation.grading import GradeConfig, pmi_grader
    from dialog.generation.training import TrainingGeneration, training_generator
    from ranker.annotators import build_annotators, describe
    from ranker.dataset import build_ranking_dataset, encoder_similarity
    from ranker.features.generation import GENERATION_ANNOTATORS
    from ranker.idf import IdfTable
    from ranker.training_data import load_training_data
    from retriever.bank_index import load_index
    from retriever.bank_retriever import BankRetriever
    from retriever.encoder import Encoder
    from retriever.encoder_cache import index_backed_encoder
    from rl.blender_setup import annotator_resources

    _, contexts, languages = load_training_data(data_dir)
    responses = {json.loads(line)["context_id"]: json.loads(line)["response"]
                 for line in (data_dir / "contexts.jsonl").read_text(encoding="utf-8").splitlines()}
    pairs = [ContextPair(saved.context_ids[g], saved.conversation_ids[g], languages[saved.context_ids[g]],
                         contexts[saved.context_ids[g]], responses[saved.context_ids[g]], {})
             for g in choose(saved, languages, args)]
    idf = IdfTable.load(data_dir / "idf.json")
    generate = training_generator(settings, TrainingGeneration(per_context=2, max_contexts=len(pairs),
                                                               budget_s=args.budget, seed=args.seed))
    key = hashlib.sha256(json.dumps([saved.data_hash, [p.context_id for p in pairs], args.seed, args.budget,
                                     generate.source.version]).encode()).hexdigest()[:12]
    cached = out / f"sample-{key}.npz"
    with PhraseBank(settings.bank_path) as bank:
        encoder = index_backed_encoder(settings, Encoder.from_config(settings), bank)
        resources, descriptor = annotator_resources(settings, encoder, idf)
        annotators = build_annotators(resources, [*(a["name"] for a in saved.annotators), *GENERATION_ANNOTATORS])
        if describe(annotators)[:len(saved.annotators)] != saved.annotators or \
                {"idf": idf.hash, **descriptor} != saved.resources:
            raise SystemExit("the saved ranking data was built with other annotators or resources; retrain the blender")
        if cached.is_file():
            sample = RankingDataset.load(cached)
            stats = json.loads(cached.with_suffix(".json").read_text(encoding="utf-8"))
            print(f"reusing the generated sample {cached}", flush=True)
        else:
            started, done = time.perf_counter(), [0]

            def progress(n: int) -> None:
                done[0] += n
                print(f"  {done[0]}/{len(pairs)} contexts, {generate.stats.candidates} generated, "
                      f"{time.perf_counter() - started:.0f} s", flush=True)

            sample = build_ranking_dataset(pairs, annotators, approved_candidates(bank, SOURCE_BANK, Candidate),
                                           generate=generate, config=replace(DEFAULT_POOLS, batch_size=16),
                                           similarity=encoder_similarity(encoder, settings.retrieval.context_turns),
                                           resources=saved.resources, progress=progress)
            stats = generate.stats.to_json()
            sample.save(cached)
            atomic_write_json(cached.with_suffix(".json"), stats)
        retriever = BankRetriever(encoder, load_index(settings, encoder, bank), bank,
                                  context_turns=settings.retrieval.context_turns)
        cache_path = out / "pmi-cache.json"  # teacher PMIs: a rerun (another margin, rule) scores nothing twice
        cache = json.loads(cache_path.read_text(encoding="utf-8")) if cache_path.is_file() else {}
        by_id = {p.context_id: (p.context, p.language) for p in pairs}
        graders, graded = {}, {}
        for margin in args.margins:
            graders[margin] = pmi_grader(settings, generate.source.generator.lm,
                                         GradeConfig(rule="pmi", against=args.against, margin=margin))
            graders[margin].cache = cache
            graded[margin] = graders[margin](sample, by_id, retriever.retrieve_many)
            atomic_write_json(cache_path, cache)
    return {"sample": sample, "graded": graded, "graders": graders, "annotators": annotators, "idf": idf,
            "generation": stats, "lm": generate.source.version,
            "prompts": generate.source.generator.prompts_ref or "none (zero-shot)"}


def approved_candidates(bank: Any, source: str, candidate: Any) -> list[Any]:
    return [candidate(p.text, source, p.language, phrase_id=p.id) for p in bank.phrases(status="approved")]


def evaluate(saved: RankingDataset, built: dict[str, Any], out: Path, rounds: int) -> dict[str, Any]:
    from core.job_configs import BlenderTrainConfig
    from ranker.blender import Blender
    from ranker.dataset import restrict_origins
    from ranker.train import train_blender

    sample, annotators = built["sample"], built["annotators"]
    no_gen = restrict_origins(sample, set(sample.origins) - {"generated"}, annotators)
    rest = with_columns(without_groups(saved, set(sample.context_ids)), annotators)
    config = BlenderTrainConfig(rounds=rounds)
    # The saved pools hold no generated reply: graded, only their gold moves to the graded scale.
    graders, first = built["graders"], min(built["graders"])
    rest_graded = replace(rest, y=np.where(rest.y == 1.0, graders[first].config.gold_label, rest.y).astype(np.float32))
    data = {"off": concat_datasets([rest, no_gen]), "gen": concat_datasets([rest, sample])}
    data.update({f"graded-m{m:g}": concat_datasets([rest_graded, built["graded"][m]]) for m in graders})
    fits = {name: train_blender(d, config, out / f"blender-{name}", idf=built["idf"], annotators=annotators,
                                labels=graders[float(name[8:])].record() if name.startswith("graded") else None)
            for name, d in data.items()}
    blenders = {name: Blender.load(out / f"blender-{name}") for name in data}
    dev_on, dev_off = sample.subset("dev"), no_gen.subset("dev")
    dev_graded = {m: built["graded"][m].subset("dev") for m in graders}
    rows = {"off": per_pool(blenders["off"].raw_scores(dev_off.X), dev_off),
            "on, gold-only labels": per_pool(blenders["gen"].raw_scores(dev_on.X), dev_graded[first])}
    rows.update({f"on, graded labels (margin {m:g})": per_pool(blenders[f"graded-m{m:g}"].raw_scores(dev_on.X),
                                                               dev_graded[m]) for m in graders})
    rows["B with generation"] = per_pool(blenders["off"].raw_scores(dev_on.X), dev_graded[first])
    offsets = list(zip(dev_on.offsets[:-1], dev_on.offsets[1:], strict=True))
    has_gen = np.array([any(dev_on.origins[i] == "generated" for i in range(a, b)) for a, b in offsets])
    result: dict[str, Any] = {
        "dev_pools": len(dev_on.group_sizes), "dev_pools_with_generated": int(has_gen.sum()),
        "dev_pools_with_graded_up_generated": {
            f"{m:g}": int(sum(any(d.origins[i] == "generated" and d.y[i] == 1 for i in range(a, b))
                              for a, b in offsets)) for m, d in dev_graded.items()},
        "labels": {f"{m:g}": g.record() for m, g in graders.items()},
        "fit": {k: {m: v for m, v in f.items() if isinstance(v, int | float)} for k, f in fits.items()},
        "systems": {}}
    for name, values in rows.items():
        result["systems"][name] = {m: round(float(v.mean()), 4) for m, v in values.items()}
        result["systems"][name]["generated_top1_where_present"] = round(
            float(values["generated_top1"][has_gen].mean()) if has_gen.any() else 0.0, 4)
    for name in [n for n in rows if n.startswith("on")]:
        for metric in ("r@1", "r@10"):
            result.setdefault("ci", {})[f"{name} − off {metric}"] = paired_ci(rows[name][metric], rows["off"][metric])
    return result


def section(result: dict[str, Any], args: argparse.Namespace) -> str:
    from bench.report import markdown_table

    gen = result["generation"]
    grading = ", ".join(f"margin {m}: {r['graded_up']} of {r['generated']} labelled 1 "
                        f"({result['dev_pools_with_graded_up_generated'][m]} dev pools hold one)"
                        for m, r in result["labels"].items())
    labels = next(iter(result["labels"].values()))
    table = markdown_table(["system (dev pools of S)", "R@1", "R@10", "generated picked",
                            "… where one is in the pool", "picked a graded-up one"],
                           [[name, s["r@1"], s["r@10"], s["generated_top1"], s["generated_top1_where_present"],
                             s["graded_up_generated_top1"]] for name, s in result["systems"].items()])
    cis = "; ".join(f"{k} {v}" for k, v in result["ci"].items())
    return (
        "### Generated candidates in the blender's pools — `bench/bench_generated_pools.py`\n\n"
        f"{args.dev} dev contexts per language + {args.train} train contexts of the workspace's saved ranking data "
        f"rebuilt with up to 2 generated candidates each ({result['lm']}, UPRISE demonstrations: "
        f"{result['prompts']}; {args.budget} s budget per context). Generation: {gen['candidates']} candidates for "
        f"{gen['contexts']} contexts, {gen['empty']} contexts got none, {gen['seconds_per_context']} s per context. "
        f"Graded labels (teacher {labels['teacher_lm']}, PMI above every one of the bank's top {labels['against']} "
        f"retrieved phrases + margin, nats/token): {grading}; teacher scoring {labels['seconds']} s. "
        f"{result['dev_pools']} dev pools, {result['dev_pools_with_generated']} with a generated candidate.\n\n"
        + table +
        f"\n\nPaired 95% bootstrap over the dev pools: {cis}."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", required=True, help="a COPY of a trained workspace (blenders are written in it)")
    parser.add_argument("--dev", type=int, default=40, help="dev contexts per language")
    parser.add_argument("--train", type=int, default=150)
    parser.add_argument("--budget", type=float, default=6.0, help="generation seconds per context")
    parser.add_argument("--against", type=int, default=10, help="top retrieved bank phrases a generated reply "
                        "must beat (by teacher PMI) to be labelled 1")
    parser.add_argument("--margins", type=float, nargs="+", default=[0.0],
                        help="PMI margins over the best retrieved phrase, one graded blender each")
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    from core.config import load_settings

    settings = load_settings(environ={**os.environ, "REPLIQ_HOME": args.home})
    data_dir = settings.artifacts_dir / "blender-data"
    out = settings.artifacts_dir / "generated-pools"
    out.mkdir(parents=True, exist_ok=True)
    saved = RankingDataset.load(data_dir / "dataset.npz")
    built = build_sample(settings, saved, data_dir, args, out)
    result = evaluate(saved, built, out, args.rounds)
    result.update(generation=built["generation"], lm=built["lm"], prompts=built["prompts"])
    print(json.dumps(result, indent=2, ensure_ascii=False))
    if not args.no_write:
        from bench.report import write_results

        write_results("generated_pools", {"dev_per_language": args.dev, "train": args.train, "budget_s": args.budget,
                                          **result}, section(result, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
