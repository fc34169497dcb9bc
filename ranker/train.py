"""Training entry point for the blender: lambdarank on the train split, early stopping on dev.

Exposed as plain functions; the CLI (`repliq train blender`) builds the dataset and calls
:func:`train_blender`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from core.atomic import atomic_write_json
from core.job_configs import BlenderTrainConfig
from ranker.annotators import Annotator
from ranker.blender import Blender
from ranker.dataset import DatasetError, RankingDataset, missingness_gaps
from ranker.idf import IdfTable

log = logging.getLogger(__name__)

HISTORY_NAME = "history.json"


RETRIEVAL_FEATURE = "retrieval_cosine"


def ranking_metrics(scores: np.ndarray, y: np.ndarray, group_sizes: Sequence[int]) -> dict[str, float]:
    """Recall@1 (the top candidate has the best label), MRR of the best positive, and random R@1 for scale.

    Ties are resolved by expectation over random tie-breaking, so a constant scorer scores exactly the
    random baseline whatever the row order. Groups without a positive are skipped.
    """
    r1, rr, random_r1 = [], [], []
    start = 0
    for size in group_sizes:
        s, labels = scores[start:start + size], y[start:start + size]
        start += size
        if not (labels > 0).any():
            continue
        best = labels.max()
        top = s == s.max()
        r1.append(float((labels[top] == best).sum()) / float(top.sum()))
        target = s[labels == best].max()
        rank = 1 + float((s > target).sum()) + float((s == target).sum() - 1) / 2
        rr.append(1.0 / rank)
        random_r1.append(float((labels == best).sum()) / size)
    if not r1:
        return {"groups": 0.0}
    return {"r@1": float(np.mean(r1)), "mrr": float(np.mean(rr)), "random_r@1": float(np.mean(random_r1)),
            "groups": float(len(r1))}


def retrieval_only_r_at_1(data: RankingDataset) -> float:
    """R@1 of the retriever's cosine alone on the same pools: the bar a blender must clear to be worth serving.

    Rows without a cosine (generated replies) rank last, as a retrieval-only system would never pick them.
    """
    cosine = data.X[:, data.feature_names.index(RETRIEVAL_FEATURE)].astype(np.float64)
    scores = np.where(np.isnan(cosine), -np.inf, cosine)
    return ranking_metrics(scores, data.y, data.group_sizes).get("r@1", float("nan"))


def _lgb_dataset(data: RankingDataset, reference: lgb.Dataset | None = None) -> lgb.Dataset:
    return lgb.Dataset(data.X, data.y, group=data.group_sizes, feature_name=list(data.feature_names),
                       reference=reference, free_raw_data=False)


def _log_rounds(every: int) -> Any:
    def callback(env: lgb.callback.CallbackEnv) -> None:
        if every > 0 and (env.iteration + 1) % every == 0:
            scores = ", ".join(f"{data} {metric} {value:.4f}" for data, metric, value, _ in env.evaluation_result_list)
            log.info("round %d: %s", env.iteration + 1, scores)
    return callback


def train_blender(dataset: RankingDataset, config: BlenderTrainConfig, out_dir: Path,
                  idf: IdfTable | None = None, annotators: Sequence[Annotator] | None = None,
                  labels: dict[str, Any] | None = None) -> dict[str, float]:
    """Fit, evaluate on dev and test, save the blender to ``out_dir``; returns the metrics.

    ``labels`` says how labels beyond gold-only were made (e.g. graded generated replies); it is kept in the
    manifest's ``training.labels`` so the blender says what it was taught."""
    train, dev, test = (dataset.subset(s) for s in ("train", "dev", "test"))
    if len(train.group_sizes) == 0 or len(dev.group_sizes) == 0:
        raise DatasetError(
            f"need train and dev contexts (have {len(train.group_sizes)} train, {len(dev.group_sizes)} dev); "
            "use more conversations or a larger dev_fraction"
        )
    if idf is not None and dataset.resources.get("idf") not in (None, idf.hash):
        raise DatasetError("the IDF table differs from the one the dataset was built with; rebuild the dataset")
    for name, (pos, neg) in missingness_gaps(train).items():
        log.warning("feature %s is missing for %.0f%% of positives but %.0f%% of negatives: possible leakage",
                    name, 100 * pos, 100 * neg)
    params = config.params()
    train_set = _lgb_dataset(train)
    dev_set = _lgb_dataset(dev, reference=train_set)
    history: dict[str, dict[str, list[float]]] = {}
    callbacks = [lgb.record_evaluation(history), _log_rounds(config.log_every)]
    if config.early_stopping > 0:
        callbacks.append(lgb.early_stopping(config.early_stopping, first_metric_only=True, verbose=False))
    booster = lgb.train(
        params, train_set, num_boost_round=config.rounds, valid_sets=[dev_set], valid_names=["dev"],
        callbacks=callbacks,
    )
    best = booster.best_iteration or booster.current_iteration()
    booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
    blender = Blender.from_booster(booster, dataset, params, annotators=annotators, idf=idf)
    metrics: dict[str, float] = {"best_iteration": float(best), "train_groups": float(len(train.group_sizes))}
    for split, part in (("dev", dev), ("test", test)):
        if len(part.group_sizes):
            values = ranking_metrics(blender.raw_scores(part.X), part.y, part.group_sizes)
            metrics.update({f"{split}_{k}": v for k, v in values.items()})
            if RETRIEVAL_FEATURE in part.feature_names:
                metrics[f"{split}_retrieval_r@1"] = retrieval_only_r_at_1(part)
    if metrics.get("dev_r@1", 1.0) <= metrics.get("dev_retrieval_r@1", 0.0):
        log.warning("the blender (dev R@1 %.3f) does not beat ranking by the retriever's cosine alone (%.3f) on the "
                    "same dev pools; serving it would be a regression: set [ranker] blender = \"none\" or retrain "
                    "with other corpora or negatives", metrics["dev_r@1"], metrics["dev_retrieval_r@1"])
    log.info("blender trained: %s", ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    blender.manifest.metrics = metrics
    blender.manifest.training = {"config": asdict(config), "history_file": HISTORY_NAME,
                                 **({"labels": labels} if labels is not None else {})}
    blender.save(Path(out_dir))
    atomic_write_json(Path(out_dir) / HISTORY_NAME, history)
    return metrics
