"""`repliq rl tune`: the supervised blender becomes a policy tuned toward sensible *and* specific replies.

Straight-line: load π_ref (the supervised blender) and the data it was trained on, compute rewards
with the distilled proxy gated by relevance, tune for each β, and judge every policy on held-out
dev contexts with the LM **teacher** (not the proxy it was tuned on) and with R@1 against the gold
reply. The run for the main β is saved as a servable blender; the others feed the Pareto plot.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from core.artifacts import ArtifactManifest, package_versions, save_manifest
from core.atomic import atomic_write_json, atomic_write_text, sha256_json
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
from rl.plots import plot_history, plot_pareto
from rl.policy import Groups, group_argmax
from rl.policy_guard import flip_rate, r_at_1_guard, tie_broken_scores
from rl.proxy import load_specificity_proxy
from rl.relevance import load_relevance_model
from rl.rewards import RewardModel, proxy_specificity
from rl.teacher import TeacherCache
from rl.teachers import judge_scorer, length_model_of
from rl.tune import tune_policy

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

    def top1_teacher(self, scores: np.ndarray) -> np.ndarray:
        texts = _top1_texts(scores, self.dev.group_sizes, self.dev.texts)
        return (np.asarray(self.teacher(self.contexts, texts)) - self.teacher_mean) / self.teacher_sd

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
    out_dir = out_dir or settings.artifacts_dir / "rl-run"
    encoder = Encoder.from_config(settings)
    resources, _ = annotator_resources(settings, encoder)
    blender_dir = settings.artifact_path(settings.ranker.blender, BLENDER_DIR) or settings.artifacts_dir / BLENDER_DIR
    reference = Blender.load(blender_dir, resources)
    dataset, contexts_by_id, languages_by_id = load_training_data(data_dir_of(blender_dir.with_name(BLENDER_DIR)))
    train, dev = dataset.subset("train"), dataset.subset("dev")

    with PhraseBank(settings.bank_path) as bank:
        reusing = index_backed_encoder(settings, encoder, bank)
    proxy = load_specificity_proxy(settings.artifacts_dir / SPECIFICITY_DIR, reusing)
    relevance = load_relevance_model(settings.artifacts_dir / RELEVANCE_DIR, reusing)
    reward = RewardModel(relevance, proxy_specificity(proxy), config.reward)
    train_contexts = [contexts_by_id[cid] for cid in train.context_ids]
    owners = np.repeat(np.arange(len(train_contexts)), train.group_sizes)
    train_languages = [languages_by_id[cid] for cid in train.context_ids]
    reward.fit_reference([train_contexts[o] for o in owners], list(train.texts),
                         [train_languages[o] for o in owners])
    train_rewards = reward.dataset_rewards(train, contexts_by_id, languages_by_id).total
    dev_parts = reward.dataset_rewards(dev, contexts_by_id, languages_by_id)

    lm = DecoderLM.from_cache(proxy.config.teacher_lm or settings.lm.name, settings.models_dir,
                              LMOptions(dtype=settings.lm.dtype))
    # Beside the model cache (as rl.teacher.default_cache_path), but following this run's settings.
    teacher = judge_scorer(lm, proxy.config.teacher, TeacherCache(settings.models_dir.parent / "teacher_cache.jsonl"),
                           length_model_of(proxy.manifest))
    dev_contexts = [contexts_by_id[cid] for cid in dev.context_ids]
    judge = DevJudge(dev, dev_contexts, [languages_by_id[cid] for cid in dev.context_ids], teacher, config)
    eval_fns = {"r_at_1": lambda s, _g: float(_r_at_1(s, dev.group_sizes, dev.y).mean()),
                "teacher_specificity_z": lambda s, _g: float(judge.top1_teacher(s).mean()),
                "top1_flip_rate": lambda s, _g: flip_rate(s, ref_scores, dev.group_sizes)}
    train_groups, dev_groups = Groups(train.X, train.group_sizes), Groups(dev.X, dev.group_sizes)
    ref_scores = reference.raw_scores(dev.X)
    report: dict[str, Any] = {"config": asdict(config), "reference": judge.metrics(ref_scores), "runs": {},
                              "reward": reward.state(), "dev_groups": len(dev.group_sizes),
                              "teacher": {"definition": proxy.config.teacher, "lm": lm.lm_id,
                                          "reference_mean": judge.teacher_mean, "reference_sd": judge.teacher_sd}}
    results = {}
    for beta in sorted(set(config.betas) | ({config.main_beta} if config.main_beta is not None else set())):
        tune_config = replace(config.policy, beta=beta)
        result = tune_policy(reference.booster, train_groups, dev_groups, train_rewards, eval_fns, tune_config,
                             progress, dev_rewards=dev_parts.total, out_dir=out_dir / f"beta-{beta:g}")
        scores = tie_broken_scores(result.predict(dev.X), ref_scores, dev.group_sizes, config.tie_tolerance)
        final = {**judge.metrics(scores), "top1_flip_rate": flip_rate(scores, ref_scores, dev.group_sizes),
                 "top1_flip_rate_without_tie_break": flip_rate(result.predict(dev.X), ref_scores, dev.group_sizes)}
        disagreement = _top_disagreement(scores, dev.group_sizes, dev_parts.disagreement)
        report["runs"][f"{beta:g}"] = {"history": result.history, "final": final,
                                       "proxy_disagreement_top1": disagreement}
        plot_history(result.history, out_dir / f"curves-beta-{beta:g}.png")
        results[beta] = result
    points = [{"beta": float(b), "dev_specificity": run["final"]["teacher_specificity_z"],
               "dev_r_at_1": run["final"]["r_at_1"]} for b, run in report["runs"].items()]
    plot_pareto(points, out_dir / "pareto.png")
    main_beta, report["selection"] = choose_beta(report, config)
    tuned_main = results[main_beta]
    tuned = Blender.from_booster(tuned_main.booster, dataset, reference.manifest.params,
                                 annotators=reference.annotators, parent=reference.version, idf=reference.idf)
    tuned.manifest.resources = dict(reference.manifest.resources)
    tuned.manifest.training = {"rl": {"beta": main_beta, "alpha": config.policy.alpha,
                                      "reward": asdict(config.reward), "teacher": proxy.config.teacher},
                               "reference": reference.version,
                               "tie_break": _tie_break(reference, tuned_main, dev.X, ref_scores, config.tie_tolerance)}
    report["guard"] = tuned.manifest.training["guard"] = _guard(report, main_beta, config)
    tuned.manifest.metrics = report["runs"][f"{main_beta:g}"]["final"]
    lineage = _rl_lineage(reference, proxy.identity, relevance.manifest)
    tuned.manifest.kind, tuned.manifest.lineage = "blender-rl", lineage
    tuned.save(settings.artifacts_dir / TUNED_DIR)
    report["tuned_blender"] = str(settings.artifacts_dir / TUNED_DIR)
    tuned_scores = tie_broken_scores(tuned_main.predict(dev.X), ref_scores, dev.group_sizes, config.tie_tolerance)
    report["samples"] = _samples(ref_scores, tuned_scores, dev, dev_contexts, config)
    report["targets"] = _targets(report, main_beta, _r_at_1(ref_scores, dev.group_sizes, dev.y),
                                 _r_at_1(tuned_scores, dev.group_sizes, dev.y), judge.languages, config.seed)
    atomic_write_json(out_dir / "report.json", report)
    atomic_write_text(out_dir / "samples.md", _samples_markdown(report["samples"]))
    save_run_manifest(out_dir, report, dataset.data_hash, lineage, tuned.manifest.to_artifact().ref)
    return report


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


def _top_disagreement(scores: np.ndarray, sizes: np.ndarray, disagreement: np.ndarray) -> float:
    """Proxy-ensemble spread at the chosen answers: a rise means the policy left the proxy's data."""
    return float(np.mean(disagreement[group_argmax(scores, sizes)]))


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
