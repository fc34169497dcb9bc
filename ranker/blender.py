"""The blender: a LightGBM lambdarank model over annotator features that orders the candidate pool.

A saved blender is a directory: ``booster.txt`` (LightGBM text model), ``blender_manifest.json`` (a
:class:`core.artifacts.ArtifactManifest` of kind ``blender`` or ``blender-rl``: features, annotator names
and versions, resources and lineage, data hash, metrics, params, package versions) and, when lexical
features were used, ``idf.json``. Loading refuses another format and annotators that differ from the
manifest.

For the RL work the booster is exposed as a policy: :meth:`Blender.raw_scores` gives logits,
:meth:`Blender.policy` a softmax within each group, and :meth:`Blender.continue_training` adds trees
with a custom objective starting from the current model (LightGBM ``init_model``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from core.artifacts import ArtifactError, ArtifactManifest, load_manifest, now, package_versions, save_manifest
from core.atomic import atomic_directory, sha256_bytes
from core.types import Candidate, Context
from ranker.annotators import Annotator, AnnotatorResources, annotate_all, build_annotators, describe
from ranker.dataset import RankingDataset
from ranker.idf import IdfTable

log = logging.getLogger(__name__)

MANIFEST_NAME = "blender_manifest.json"
BOOSTER_NAME = "booster.txt"
IDF_NAME = "idf.json"
BLENDER_KINDS = ("blender", "blender-rl")
RETRAIN_HINT = "run `repliq train blender` to retrain it on the current annotators"

# LightGBM custom objective: (raw scores, training Dataset) -> (gradient, hessian).
Objective = Callable[[np.ndarray, lgb.Dataset], tuple[np.ndarray, np.ndarray]]


class BlenderMismatchError(RuntimeError):
    """The saved blender and the live annotators disagree on features; the message lists the differences."""


# Resource keys that name workspace artifacts: they become the manifest's lineage.
RESOURCE_LINEAGE = ("encoder", "specificity")


@dataclass
class BlenderManifest:
    """The blender's view of its :class:`core.artifacts.ArtifactManifest` (``blender_manifest.json``).

    ``resources`` is what the annotators were given (compared field by field at load time); its
    encoder and specificity proxy, plus ``lineage`` (e.g. the π_ref and rewards of an RL-tuned
    blender), form the artifact's lineage.
    """

    feature_names: list[str]
    annotators: list[dict[str, Any]]
    data_hash: str
    model_sha256: str
    params: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, str] = field(default_factory=dict)
    # How the booster was produced beyond LightGBM params (train config, RL objective, ...).
    training: dict[str, Any] = field(default_factory=dict)
    lightgbm_version: str = lgb.__version__
    parent: str | None = None
    created_at: str = field(default_factory=now)
    kind: str = "blender"  # "blender-rl" for a policy tuned by `repliq rl tune`
    lineage: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=lambda: package_versions("lightgbm", "numpy", "repliq"))

    def to_artifact(self) -> ArtifactManifest:
        lineage = {key: self.resources[key] for key in RESOURCE_LINEAGE if key in self.resources}
        return ArtifactManifest(
            kind=self.kind, identity=self.model_sha256, config=self.params, data_sha256=self.data_hash,
            lineage={**lineage, **self.lineage}, versions=self.versions, metrics=self.metrics,
            created_at=self.created_at,
            details={"feature_names": self.feature_names, "annotators": self.annotators, "data_hash": self.data_hash,
                     "model_sha256": self.model_sha256, "resources": self.resources, "training": self.training,
                     "lightgbm_version": self.lightgbm_version, "parent": self.parent})

    @classmethod
    def from_artifact(cls, artifact: ArtifactManifest) -> BlenderManifest:
        d = artifact.details
        return cls(feature_names=list(d["feature_names"]), annotators=list(d["annotators"]),
                   data_hash=artifact.data_sha256, model_sha256=artifact.identity, params=artifact.config,
                   metrics=artifact.metrics, resources=dict(d.get("resources") or {}),
                   training=dict(d.get("training") or {}), lightgbm_version=str(d.get("lightgbm_version", "")),
                   parent=d.get("parent"), created_at=artifact.created_at, kind=artifact.kind,
                   lineage={k: v for k, v in artifact.lineage.items() if k not in RESOURCE_LINEAGE},
                   versions=artifact.versions)


def read_blender_manifest(directory: Path) -> BlenderManifest:
    """The checked manifest of a blender directory (supervised or RL-tuned), without loading the booster."""
    try:
        artifact = load_manifest(Path(directory) / MANIFEST_NAME, BLENDER_KINDS)
        return BlenderManifest.from_artifact(artifact)
    except (ArtifactError, KeyError) as exc:
        message = str(exc) if isinstance(exc, ArtifactError) else f"its manifest lacks {exc}; {RETRAIN_HINT}"
        raise BlenderMismatchError(f"blender {directory}: {message}") from exc


def _json_params(params: dict[str, Any]) -> dict[str, Any]:
    return {k: (getattr(v, "__name__", repr(v)) if callable(v) else v) for k, v in params.items()}


class Blender:
    """Implements ``core.types.Reranker``: features for the pool, raw booster scores, sorted descending."""

    name = "blender"

    def __init__(self, booster: lgb.Booster, manifest: BlenderManifest,
                 annotators: Sequence[Annotator] | None = None, idf: IdfTable | None = None) -> None:
        if list(booster.feature_name()) != list(manifest.feature_names):
            raise BlenderMismatchError(
                f"booster features {booster.feature_name()} differ from its manifest; {RETRAIN_HINT}"
            )
        self.booster = booster
        self.manifest = manifest
        self.annotators: list[Annotator] = list(annotators or [])
        self.idf = idf
        if self.annotators:
            self.check_compatible(self.annotators)

    @property
    def version(self) -> str:
        return self.manifest.model_sha256[:12]

    @property
    def feature_names(self) -> list[str]:
        return list(self.manifest.feature_names)

    # ---- scoring ------------------------------------------------------------------------------

    def raw_scores(self, X: np.ndarray) -> np.ndarray:
        """Booster margins (the lambdarank logits); one thread, since pools are small."""
        return np.asarray(self.booster.predict(X, raw_score=True, num_threads=1), dtype=np.float64)

    def pool_scores(self, X: np.ndarray) -> np.ndarray:
        """One pool's scores as :meth:`rerank` orders them; an RL policy adds its near-tie rule
        (``rl.policy_guard.TieBrokenPolicy``)."""
        return self.raw_scores(X)

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """(rows, features + 1) SHAP-style contributions; the last column is the bias; rows sum to the score."""
        return np.asarray(self.booster.predict(X, pred_contrib=True, num_threads=1), dtype=np.float64)

    @staticmethod
    def policy(scores: np.ndarray, group_sizes: Sequence[int] | None = None, temperature: float = 1.0) -> np.ndarray:
        """Softmax of scores within each group: the blender read as a stochastic policy over candidates."""
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        scores = np.asarray(scores, dtype=np.float64)
        sizes = [len(scores)] if group_sizes is None else list(group_sizes)
        if sum(sizes) != len(scores):
            raise ValueError(f"group sizes sum to {sum(sizes)} but there are {len(scores)} scores")
        out = np.empty_like(scores)
        start = 0
        for size in sizes:
            z = scores[start:start + size] / temperature
            e = np.exp(z - z.max()) if size else z
            out[start:start + size] = e / e.sum() if size else e
            start += size
        return out

    def features(self, context: Context, candidates: Sequence[Candidate]) -> np.ndarray:
        if not self.annotators:
            raise RuntimeError("this blender has no annotators; load it with Blender.load(directory)")
        return annotate_all(self.annotators, [context], [candidates])[0]

    def rerank(self, context: Context, candidates: list[Candidate], explain: bool = False) -> list[Candidate]:
        if not candidates:
            return []
        X = self.features(context, candidates)
        scores = self.pool_scores(X)
        contrib = self.contributions(X) if explain else None
        names = self.manifest.feature_names
        for i, cand in enumerate(candidates):
            cand.score = float(scores[i])
            cand.stage_scores["blender"] = cand.score
            cand.features = dict(zip(names, X[i].tolist(), strict=True))
            if contrib is not None:
                cand.contributions = {**dict(zip(names, contrib[i, :-1].tolist(), strict=True)),
                                      "bias": float(contrib[i, -1])}
        return sorted(candidates, key=lambda c: c.score, reverse=True)

    # ---- compatibility ------------------------------------------------------------------------

    def check_compatible(self, annotators: Sequence[Annotator]) -> None:
        saved = {a["name"]: a for a in self.manifest.annotators}
        live = {a["name"]: a for a in describe(annotators)}
        problems = []
        for name in saved.keys() - live.keys():
            problems.append(f"annotator {name!r} is missing")
        for name in live.keys() - saved.keys():
            problems.append(f"annotator {name!r} was not used in training")
        for name in saved.keys() & live.keys():
            if saved[name]["version"] != live[name]["version"]:
                problems.append(f"annotator {name!r} is version {live[name]['version']}, "
                                f"trained with {saved[name]['version']}")
        live_features = [f for a in annotators for f in a.feature_names]
        if live_features != self.manifest.feature_names:
            missing = [f for f in self.manifest.feature_names if f not in live_features]
            extra = [f for f in live_features if f not in self.manifest.feature_names]
            detail = f"missing {missing}, unexpected {extra}" if missing or extra else "same features, other order"
            problems.append(f"features differ: {detail}")
        if problems:
            raise BlenderMismatchError(
                f"blender {self.version} does not match the current annotators: {'; '.join(problems)}; {RETRAIN_HINT}"
            )

    # ---- persistence --------------------------------------------------------------------------

    @classmethod
    def from_booster(cls, booster: lgb.Booster, dataset: RankingDataset, params: dict[str, Any],
                     metrics: dict[str, float] | None = None, annotators: Sequence[Annotator] | None = None,
                     parent: str | None = None, idf: IdfTable | None = None) -> Blender:
        model_text = booster.model_to_string()
        manifest = BlenderManifest(
            feature_names=list(dataset.feature_names), annotators=list(dataset.annotators),
            data_hash=dataset.data_hash, model_sha256=sha256_bytes(model_text.encode("utf-8")),
            params=_json_params(params), metrics=dict(metrics or {}), resources=dict(dataset.resources),
            parent=parent,
        )
        return cls(booster, manifest, annotators, idf)

    def save(self, directory: Path, idf: IdfTable | None = None) -> None:
        """Write the directory atomically: a reader sees the old blender or the new one, never a mix."""
        idf = idf or self.idf
        model_text = self.booster.model_to_string()
        manifest = replace(self.manifest, model_sha256=sha256_bytes(model_text.encode("utf-8")))
        with atomic_directory(Path(directory)) as scratch:
            (scratch / BOOSTER_NAME).write_text(model_text, encoding="utf-8")
            if idf is not None:
                manifest.resources = {**manifest.resources, "idf": idf.save(scratch / IDF_NAME)}
            save_manifest(scratch / MANIFEST_NAME, manifest.to_artifact())
        self.manifest = manifest

    @classmethod
    def load(cls, directory: Path, resources: AnnotatorResources | None = None) -> Blender:
        """Load and rebuild the annotators it was trained with; ``idf.json`` is used unless one is given."""
        directory = Path(directory)
        if not (directory / MANIFEST_NAME).exists():
            raise FileNotFoundError(f"{directory} holds no trained blender ({MANIFEST_NAME} missing); "
                                    "run `repliq train blender`")
        manifest = read_blender_manifest(directory)
        model_text = (directory / BOOSTER_NAME).read_text(encoding="utf-8")
        if sha256_bytes(model_text.encode("utf-8")) != manifest.model_sha256:
            raise BlenderMismatchError(f"{directory / BOOSTER_NAME} does not match its manifest hash; {RETRAIN_HINT}")
        resources = resources or AnnotatorResources()
        if resources.idf is None and (directory / IDF_NAME).exists():
            resources = replace(resources, idf=IdfTable.load(directory / IDF_NAME))
        elif resources.idf is not None and manifest.resources.get("idf") not in (None, resources.idf.hash):
            log.warning("blender %s was trained with another IDF table; lexical features may drift", directory)
        try:
            annotators = build_annotators(resources, [a["name"] for a in manifest.annotators])
        except KeyError as exc:
            raise BlenderMismatchError(f"{exc.args[0]}; {RETRAIN_HINT}") from exc
        return cls(lgb.Booster(model_str=model_text), manifest, annotators, resources.idf)

    # ---- RL hook ------------------------------------------------------------------------------

    def continue_training(self, dataset: RankingDataset, objective: Objective, rounds: int,
                          params: dict[str, Any] | None = None) -> Blender:
        """More trees fit to a custom objective, starting from this booster's scores.

        LightGBM passes the objective the full raw scores (old trees included), so a policy-gradient
        objective sees the current policy's logits. Returns a new blender; this one is unchanged.
        """
        if list(dataset.feature_names) != self.feature_names:
            raise BlenderMismatchError(f"dataset features {dataset.feature_names} differ from the blender's "
                                       f"{self.feature_names}; rebuild the dataset with the blender's annotators")
        train_set = lgb.Dataset(dataset.X, dataset.y, group=dataset.group_sizes,
                                feature_name=list(dataset.feature_names), free_raw_data=False)
        merged = {**{k: v for k, v in self.manifest.params.items() if k not in ("objective", "metric", "eval_at")},
                  **(params or {}), "objective": objective, "metric": "None", "verbosity": -1}
        booster = lgb.train(merged, train_set, num_boost_round=rounds, init_model=self.booster,
                            keep_training_booster=True)
        booster = lgb.Booster(model_str=booster.model_to_string())
        tuned = Blender.from_booster(booster, dataset, merged, annotators=self.annotators or None,
                                     parent=self.version, idf=self.idf)
        tuned.manifest.training = {"continued_from": self.version, "rounds": rounds,
                                   "objective": getattr(objective, "__name__", repr(objective))}
        return tuned
