"""`repliq rl tune`: the supervised blender becomes a policy tuned toward sensible *and* specific replies.

Straight-line: load π_ref (the supervised blender) and the data it was trained on, compute rewards
with the distilled proxy gated by relevance, tune for each β (and each policy seed), and judge every
policy on held-out dev contexts with the LM **teacher** and the sensibleness judge (never the proxy it
was tuned on) and with R@1 against the gold reply, each as a paired interval against π_ref, beside
best-of-N at the same KL (rl.policy_sweep). The dev contexts are the blender dataset's dev split, or
``--dev-contexts N`` per language built from the dev hash splits (rl.dev_pools). The β that meets the
target in every language is saved (else the R@1 guard's choice, with the binding constraint reported);
a policy that fails its guard is written for inspection only.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from core.artifacts import ArtifactManifest, package_versions, save_manifest
from core.atomic import atomic_write_json, atomic_write_text, jsonable, sha256_json
from core.bank.store import PhraseBank
from core.config import Settings
from core.job_configs import RLRunConfig
from core.lm.wrapper import DecoderLM, LMOptions
from core.types import Context
from ranker.blender import Blender
from ranker.training_data import data_dir_of, load_training_data
from retriever.encoder import Encoder
from retriever.encoder_cache import index_backed_encoder
from rl.blender_setup import BLENDER_DIR, SPECIFICITY_DIR, annotator_resources
from rl.dev_pools import build_dev_pools, stored_encoder
from rl.judge_cache import CachedJudge
from rl.plots import plot_pareto
from rl.policy import Groups, group_argmax
from rl.policy_eval import PolicyJudge
from rl.policy_guard import flip_rate, r_at_1_guard, tie_broken_scores
from rl.policy_report import evaluation_markdown
from rl.policy_sweep import SweepInputs, sweep
from rl.policy_targets import choose_by_target
from rl.proxy import load_specificity_proxy
from rl.relevance import load_relevance_model
from rl.rewards import RewardModel, proxy_specificity
from rl.teacher import TeacherCache, seed_teacher_from_bank
from rl.teachers import judge_scorer, length_model_of

log = logging.getLogger("repliq.rl")
RELEVANCE_DIR = "reward-relevance"
TUNED_DIR = "blender-rl"
# R@1 values are hit counts over pools; their float difference can exceed an exact 2-point drop by 1e-17.
R1_TOLERANCE = 1e-9


def _top1_texts(scores: np.ndarray, sizes: np.ndarray, texts: Sequence[str]) -> list[str]:
    return [texts[int(i)] for i in group_argmax(scores, sizes)]


def _r_at_1(scores: np.ndarray, sizes: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per pool: 1 when the policy's top candidate is a best-labelled one (the gold reply)."""
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    best = np.maximum.reduceat(y, starts)
    return (y[group_argmax(scores, sizes)] >= best).astype(np.float64) * (best > 0)


class DevJudge:
    """Held-out metrics for any scores over the dev pools, per language: R@1 and teacher specificity."""

    def __init__(self, dev: Any, contexts: list[Context], languages: list[str], teacher: Callable,
                 config: RLRunConfig) -> None:
        self.dev, self.contexts, self.languages, self.teacher = dev, contexts, np.array(languages), teacher
        rng = random.Random(config.seed)
        owners = np.repeat(np.arange(len(contexts)), dev.group_sizes)
        sample = rng.sample(range(len(dev.texts)), min(config.teacher_reference, len(dev.texts)))
        reference = np.asarray(teacher([contexts[owners[i]] for i in sample], [dev.texts[i] for i in sample]))
        self.teacher_mean, self.teacher_sd = float(reference.mean()), float(reference.std() or 1.0)

    def teacher_z(self, contexts: Sequence[Context], texts: Sequence[str]) -> np.ndarray:
        """Teacher specificity in units of the dev candidates' spread (the "sd" of the targets)."""
        return (np.asarray(self.teacher(contexts, texts)) - self.teacher_mean) / self.teacher_sd

    def top1_teacher(self, scores: np.ndarray) -> np.ndarray:
        return self.teacher_z(self.contexts, _top1_texts(scores, self.dev.group_sizes, self.dev.texts))

    def metrics(self, scores: np.ndarray) -> dict[str, float]:
        r1 = _r_at_1(scores, self.dev.group_sizes, self.dev.y)
        spec = self.top1_teacher(scores)
        out = {"r_at_1": float(r1.mean()), "teacher_specificity_z": float(spec.mean())}
        for language in sorted(set(self.languages)):
            mask = self.languages == language
            out[f"r_at_1_{language}"] = float(r1[mask].mean())
            out[f"teacher_specificity_z_{language}"] = float(spec[mask].mean())
        return out


def paired_drop_interval(ref_hits: np.ndarray, tuned_hits: np.ndarray, seed: int = 0, resamples: int = 2000,
                         level: float = 0.95) -> tuple[float, float]:
    """Bootstrap interval of the R@1 drop (π_ref − tuned), resampling pools with both policies paired.

    With a few hundred dev pools one flipped answer moves R@1 by ~0.4 points, so a point estimate alone
    cannot say whether a policy broke the 2-point guard or just drew an unlucky sample.
    """
    diff = np.asarray(ref_hits, dtype=np.float64) - np.asarray(tuned_hits, dtype=np.float64)
    if not len(diff):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


def run_rl_tune(settings: Settings, config: RLRunConfig, out_dir: Path | None = None,
                progress: Callable[[dict[str, float]], None] | None = None) -> dict[str, Any]:
    config.evaluation.validate()
    out_dir = out_dir or settings.artifacts_dir / "rl-run"
    encoder = Encoder.from_config(settings)
    resources, _ = annotator_resources(settings, encoder)
    blender_dir = settings.artifact_path(settings.ranker.blender, BLENDER_DIR) or settings.artifacts_dir / BLENDER_DIR
    reference = Blender.load(blender_dir, resources)
    data_dir = data_dir_of(blender_dir.with_name(BLENDER_DIR))
    dataset, contexts_by_id, languages_by_id = load_training_data(data_dir)
    train = dataset.subset("train")
    dev, dev_contexts_by_id, dev_languages_by_id, dev_info = _dev_set(settings, config, dataset, contexts_by_id,
                                                                      languages_by_id, data_dir)

    stored = stored_encoder(settings, encoder) if config.evaluation.dev_contexts > 0 else None
    with PhraseBank(settings.bank_path) as bank:  # the dev contexts' vectors are stored by the dev pools' build
        reusing = index_backed_encoder(settings, stored or encoder, bank)
    proxy = load_specificity_proxy(settings.artifacts_dir / SPECIFICITY_DIR, reusing)
    relevance = load_relevance_model(settings.artifacts_dir / RELEVANCE_DIR, reusing)
    reward = RewardModel(relevance, proxy_specificity(proxy), config.reward)
    train_contexts = [contexts_by_id[cid] for cid in train.context_ids]
    owners = np.repeat(np.arange(len(train_contexts)), train.group_sizes)
    train_languages = [languages_by_id[cid] for cid in train.context_ids]
    reward.fit_reference([train_contexts[o] for o in owners], list(train.texts),
                         [train_languages[o] for o in owners])
    train_rewards = reward.dataset_rewards(train, contexts_by_id, languages_by_id).total
    dev_parts = reward.dataset_rewards(dev, dev_contexts_by_id, dev_languages_by_id)

    lm = DecoderLM.from_cache(proxy.config.teacher_lm or settings.lm.name, settings.models_dir,
                              LMOptions(dtype=settings.lm.dtype))
    teacher = _teacher(settings, lm, proxy)
    dev_contexts = [dev_contexts_by_id[cid] for cid in dev.context_ids]
    dev_languages = [dev_languages_by_id[cid] for cid in dev.context_ids]
    judge = DevJudge(dev, dev_contexts, dev_languages, teacher, config)
    ref_scores = reference.raw_scores(dev.X)
    sensible, judge_info = _sensibleness_judge(settings, config)
    policy_judge = PolicyJudge(dev, dev_contexts, dev_languages, judge.teacher_z, sensible, ref_scores,
                               config.tie_tolerance, config.seed, config.evaluation.bootstrap_resamples)
    eval_fns = {"r_at_1": lambda s, _g: float(_r_at_1(s, dev.group_sizes, dev.y).mean()),
                "teacher_specificity_z": lambda s, _g: float(judge.top1_teacher(s).mean()),
                "top1_flip_rate": lambda s, _g: flip_rate(s, ref_scores, dev.group_sizes)}
    inputs = SweepInputs(reference.booster, Groups(train.X, train.group_sizes), Groups(dev.X, dev.group_sizes),
                         train_rewards, dev_parts.total, dev_parts.disagreement, eval_fns, policy_judge, judge.metrics)
    swept = sweep(inputs, config, out_dir, progress)
    report: dict[str, Any] = {"config": jsonable(asdict(config)), "reference": judge.metrics(ref_scores),
                              "runs": swept.runs, "reward": reward.state(), "dev_groups": len(dev.group_sizes),
                              "evaluation": {"dev": dev_info, "judge": judge_info, **swept.evaluation},
                              "teacher": {"definition": proxy.config.teacher, "lm": lm.lm_id,
                                          "reference_mean": judge.teacher_mean, "reference_sd": judge.teacher_sd}}
    points = [{"beta": float(b), "dev_specificity": run["final"]["teacher_specificity_z"],
               "dev_r_at_1": run["final"]["r_at_1"]} for b, run in report["runs"].items()]
    plot_pareto(points, out_dir / "pareto.png")
    main_beta, report["selection"] = select_beta(report, config)
    tuned_main = swept.results[main_beta]
    tuned = Blender.from_booster(tuned_main.booster, dataset, reference.manifest.params,
                                 annotators=reference.annotators, parent=reference.version, idf=reference.idf)
    tuned.manifest.resources = dict(reference.manifest.resources)
    tuned.manifest.training = {"rl": {"beta": main_beta, "alpha": config.policy.alpha,
                                      "reward": asdict(config.reward), "teacher": proxy.config.teacher},
                               "reference": reference.version,
                               "tie_break": _tie_break(reference, tuned_main, dev.X, ref_scores, config.tie_tolerance)}
    report["guard"] = tuned.manifest.training["guard"] = _guard(report, main_beta, config)
    # The issue-14 target: only a policy that met it should become the shipped default (the guard only says servable).
    tuned.manifest.training["target_met"] = main_beta in report["selection"].get("target_passing", [main_beta])
    tuned.manifest.metrics = report["runs"][f"{main_beta:g}"]["final"]
    lineage = _rl_lineage(reference, proxy.identity, relevance.manifest)
    tuned.manifest.kind, tuned.manifest.lineage = "blender-rl", lineage
    tuned.save(settings.artifacts_dir / TUNED_DIR)
    report["tuned_blender"] = str(settings.artifacts_dir / TUNED_DIR)
    _finish_report(report, main_beta, tuned_main, ref_scores, dev, judge, dev_contexts, config)
    atomic_write_json(out_dir / "report.json", report)
    atomic_write_text(out_dir / "samples.md", _samples_markdown(report["samples"]))
    atomic_write_text(out_dir / "evaluation.md", evaluation_markdown(report))
    save_run_manifest(out_dir, report, dataset.data_hash, lineage, tuned.manifest.to_artifact().ref)
    return report


def _teacher(settings: Settings, lm: DecoderLM, proxy: Any) -> Callable:
    """The LM teacher that judges every policy, its cache beside the model cache (as rl.teacher.default_cache_path,
    but following this run's settings), with chosen bank phrases judged from their stored LM scores."""
    teacher_cache = TeacherCache(settings.models_dir.parent / "teacher_cache.jsonl")
    with PhraseBank(settings.bank_path) as bank:
        log.info("teacher: %d bank phrases' stored LM scores added to its cache",
                 seed_teacher_from_bank(teacher_cache, bank, lm.lm_id))
    return judge_scorer(lm, proxy.config.teacher, teacher_cache, length_model_of(proxy.manifest))


def _finish_report(report: dict[str, Any], main_beta: float, tuned_main: Any, ref_scores: np.ndarray, dev: Any,
                   judge: DevJudge, dev_contexts: list[Context], config: RLRunConfig) -> None:
    """Side-by-side samples of the saved policy and its per-language targets with the R@1 drop interval."""
    tuned_scores = tie_broken_scores(tuned_main.predict(dev.X), ref_scores, dev.group_sizes, config.tie_tolerance)
    report["samples"] = _samples(ref_scores, tuned_scores, dev, dev_contexts, config)
    report["targets"] = _targets(report, main_beta, _r_at_1(ref_scores, dev.group_sizes, dev.y),
                                 _r_at_1(tuned_scores, dev.group_sizes, dev.y), judge.languages, config.seed)


def _dev_set(settings: Settings, config: RLRunConfig, dataset: Any, contexts_by_id: dict[str, Context],
             languages_by_id: dict[str, str], data_dir: Path) -> tuple[Any, dict, dict, dict[str, Any]]:
    """The dev pools every policy is judged on: the blender's own dev split, or ``evaluation.dev_contexts``
    per language built from the corpora's dev hash split with the blender's recipe (rl.dev_pools)."""
    if config.evaluation.dev_contexts <= 0:
        dev = dataset.subset("dev")
        langs = [languages_by_id[c] for c in dev.context_ids]
        counts = {lang: langs.count(lang) for lang in set(languages_by_id.values())}
        return dev, contexts_by_id, languages_by_id, {"source": "the blender dataset's dev split",
                                                      "contexts": dict(sorted(counts.items()))}
    built = build_dev_pools(settings, dataset, languages_by_id, data_dir, config.evaluation, settings.train.pools,
                            config.seed)
    return built.dataset, built.contexts, built.languages, {"source": "rl.dev_pools (dev hash split)", **built.info}


def _sensibleness_judge(settings: Settings, config: RLRunConfig) -> tuple[CachedJudge | None, dict[str, Any] | None]:
    """The sensibleness judge behind a content cache beside the model cache (as the teacher's), or None."""
    if config.evaluation.judge is None:
        return None, None
    from rl.judge import load_judge

    loaded = load_judge(config.evaluation.judge, settings.models_dir)
    cached = CachedJudge.of(loaded, settings.models_dir.parent / "judge_cache.jsonl")
    return cached, {"path": str(config.evaluation.judge), "identity": cached.identity}


def select_beta(report: dict[str, Any], config: RLRunConfig) -> tuple[float, dict[str, Any]]:
    """The given β; else the most specific β meeting the target in every language; else ``choose_beta``'s
    R@1 guard, with the binding constraint per language said in the selection."""
    policies = report["evaluation"]["policies"]
    checks = {float(b): entry["target"] for b, entry in policies.items()}
    gains = {float(b): float(np.mean([v["teacher_z"]["diff"] for k, v in entry["seeds"][
        str(config.evaluation.seeds[0])]["comparison"].items() if k != "all"])) for b, entry in policies.items()}
    beta, passing = choose_by_target(checks, gains)
    if config.main_beta is None and beta is not None:
        return beta, {"rule": "most specific β meeting the target in every language", "beta": beta,
                      "passing": passing, "target_passing": passing}
    chosen, selection = choose_beta(report, config)
    return chosen, {**selection, "target_passing": passing, "binding": report["evaluation"]["binding"]}


def _guard(report: dict[str, Any], main_beta: float, config: RLRunConfig) -> dict[str, Any]:
    """The saved policy's guard result; a failed one is written for inspection only (the server refuses it)."""
    guard = r_at_1_guard(report["reference"], report["runs"][f"{main_beta:g}"]["final"], config.max_r_at_1_drop)
    if not guard["servable"]:
        log.warning("the saved policy failed its guard (%s): written for inspection only, the server refuses it; %s",
                    guard["detail"], guard["fix"])
    return guard


def _tie_break(reference: Blender, tuned: Any, X: np.ndarray, ref_scores: np.ndarray, tolerance: float) -> dict:
    """The saved policy's near-tie rule; serving reads π_ref's scores from the tuned booster's first trees,
    so check here that those trees still give π_ref's scores."""
    trees = reference.booster.num_trees()
    head = tuned.booster.predict(X, raw_score=True, num_iteration=trees)
    if not np.allclose(head, ref_scores, atol=1e-6):
        raise RuntimeError("the tuned booster's first trees no longer reproduce π_ref's scores, so serving could not "
                           "apply the near-tie rule; rerun `repliq rl tune` with a new --out directory")
    return {"reference_trees": trees, "tolerance": tolerance}


def _rl_lineage(reference: Blender, proxy_identity: str, relevance_manifest: dict[str, Any]) -> dict[str, str]:
    """What an RL run stands on beyond the blender's own resources: π_ref and the two reward models."""
    return {BLENDER_DIR: reference.manifest.to_artifact().ref, SPECIFICITY_DIR: proxy_identity,
            RELEVANCE_DIR: ArtifactManifest.from_json(relevance_manifest, RELEVANCE_DIR).ref}


def save_run_manifest(out_dir: Path, report: dict[str, Any], data_sha256: str, lineage: dict[str, str],
                      tuned_ref: str) -> ArtifactManifest:
    """``rl-run/manifest.json``: the run as an artifact, so `repliq artifacts list` sees when π_ref moved on."""
    manifest = ArtifactManifest(
        kind="rl-run", identity=sha256_json(report), config=report["config"], data_sha256=data_sha256,
        lineage=lineage, versions=package_versions("lightgbm", "numpy", "torch", "repliq"),
        metrics={key: report[key] for key in ("reference", "selection", "targets", "guard") if key in report},
        details={"report": "report.json", "tuned_blender": tuned_ref})
    save_manifest(Path(out_dir) / "manifest.json", manifest)
    return manifest


def _samples(ref: np.ndarray, tuned: np.ndarray, dev: Any, contexts: list[Context],
             config: RLRunConfig) -> list[dict[str, str]]:
    ref_texts = _top1_texts(ref, dev.group_sizes, dev.texts)
    tuned_texts = _top1_texts(tuned, dev.group_sizes, dev.texts)
    changed = [i for i in range(len(contexts)) if ref_texts[i] != tuned_texts[i]]
    rng = random.Random(config.seed)
    chosen = sorted(rng.sample(changed, min(config.samples_in_report, len(changed))))
    return [{"context": contexts[i].last_text, "reference": ref_texts[i], "tuned": tuned_texts[i]} for i in chosen]


def _samples_markdown(samples: list[dict[str, str]]) -> str:
    lines = ["| context | π_ref answer | tuned answer |", "|---|---|---|"]
    lines += [f"| {s['context']} | {s['reference']} | {s['tuned']} |".replace("\n", " ") for s in samples]
    return "\n".join(lines) + "\n"


def choose_beta(report: dict[str, Any], config: RLRunConfig) -> tuple[float, dict[str, Any]]:
    """The β to serve: the given one, else the most specific policy that keeps relevance.

    "Keeps relevance" is the Goodhart guard: dev R@1 (overall and in every language) no more than
    ``max_r_at_1_drop`` below π_ref. When no β passes, the largest β (the policy closest to π_ref) is
    served and the report says the guard failed, rather than shipping a policy that lost the gold.
    """
    if config.main_beta is not None:
        return config.main_beta, {"rule": "given", "beta": config.main_beta}
    ref = report["reference"]
    r1_keys = [k for k in ref if k.startswith("r_at_1")]

    def keeps_relevance(final: dict[str, float]) -> bool:
        return all(ref[k] - final[k] <= config.max_r_at_1_drop + R1_TOLERANCE for k in r1_keys)

    runs = {float(b): run["final"] for b, run in report["runs"].items()}
    passing = [b for b, final in runs.items() if keeps_relevance(final)]
    if passing:
        beta = max(passing, key=lambda b: runs[b]["teacher_specificity_z"])
        return beta, {"rule": "most specific within the R@1 guard", "beta": beta, "passing": sorted(passing),
                      "max_r_at_1_drop": config.max_r_at_1_drop}
    beta = max(runs)
    return beta, {"rule": "no β kept R@1 within the guard; serving the one closest to π_ref", "beta": beta,
                  "passing": [], "max_r_at_1_drop": config.max_r_at_1_drop}


def _targets(report: dict[str, Any], main_beta: float, ref_hits: np.ndarray, tuned_hits: np.ndarray,
             languages: np.ndarray, seed: int) -> dict[str, Any]:
    """Per language and overall: the specificity gain, the R@1 drop with its paired interval, and "met"."""
    ref, final = report["reference"], report["runs"][f"{main_beta:g}"]["final"]
    out: dict[str, Any] = {}
    for key in [k for k in ref if k.startswith("teacher_specificity_z")]:
        suffix = key[len("teacher_specificity_z"):]
        gain = final[key] - ref[key]
        drop = ref[f"r_at_1{suffix}"] - final[f"r_at_1{suffix}"]
        language = suffix.strip("_")
        rows = languages == language if language else np.ones(len(ref_hits), dtype=bool)
        interval = paired_drop_interval(ref_hits[rows], tuned_hits[rows], seed)
        out[language or "all"] = {"specificity_gain_sd": gain, "r_at_1_drop": drop, "r_at_1_drop_ci95": list(interval),
                                  "met": bool(gain >= 0.3 and drop <= 0.02 + R1_TOLERANCE)}
    return out
