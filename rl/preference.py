"""Bradley–Terry preference reward model: r(context, reply) = w · φ(context, reply).

P(chosen ≻ rejected) = σ(r(chosen) − r(rejected)); ``w`` minimizes the weighted −log of that plus an
L2 penalty. φ is pluggable: the built-in featurizer is cheap and lexical so the model trains in
milliseconds on rater preferences; encoder embeddings can replace it without touching the fitting.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize

from core.artifacts import (
    ArtifactError,
    ArtifactManifest,
    load_manifest,
    package_versions,
    rebuild_command,
    save_manifest,
)
from core.atomic import atomic_directory, atomic_write_text, sha256_bytes, sha256_json
from core.text import detect_language, normalize_text, word_tokens
from core.types import Context, Turn

MODEL_FILE = "preference_model.json"
MANIFEST_FILE = "manifest.json"
KIND = "preference-reward"


class PreferenceDataError(ValueError):
    """Preference data or a saved model that cannot be used; the message names the row or file."""


@dataclass(frozen=True)
class PreferencePair:
    context: Context
    chosen: str
    rejected: str
    weight: float = 1.0


def pair_to_json(pair: PreferencePair, **meta: Any) -> dict[str, Any]:
    turns = [{"speaker": t.speaker, "text": t.text} for t in pair.context.turns]
    return {"context": {"turns": turns}, "chosen": pair.chosen, "rejected": pair.rejected,
            "weight": pair.weight, **({"meta": meta} if meta else {})}


def write_preferences(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    atomic_write_text(Path(path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_preferences(path: Path) -> list[PreferencePair]:
    """Lines of ``{"context": {"turns": [...]}, "chosen", "rejected", "weight"?, "meta"?}``."""
    path = Path(path)
    if not path.is_file():
        raise PreferenceDataError(f"{path} not found; create it with `repliq ssa preferences`")
    pairs, problems = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            turns = obj["context"]["turns"]
            context = Context(tuple(Turn(str(t["speaker"]), str(t["text"])) for t in turns))
            chosen, rejected, weight = obj["chosen"], obj["rejected"], float(obj.get("weight", 1.0))
            if not (isinstance(chosen, str) and isinstance(rejected, str) and turns):
                raise TypeError("'chosen'/'rejected' must be strings and 'turns' non-empty")
            if not weight > 0:
                raise ValueError(f"weight {weight} must be > 0")
        except json.JSONDecodeError as exc:
            problems.append(f"{path.name}: line {number}: not valid JSON ({exc.msg})")
            continue
        except KeyError as exc:
            problems.append(f"{path.name}: line {number}: missing field {exc}")
            continue
        except (TypeError, ValueError, AttributeError) as exc:
            problems.append(f"{path.name}: line {number}: {exc}")
            continue
        pairs.append(PreferencePair(context, chosen, rejected, weight))
    if problems:
        raise PreferenceDataError(f"{path}: fix these rows and run again\n  " + "\n  ".join(problems[:40]))
    if not pairs:
        raise PreferenceDataError(f"{path} holds no preference pairs")
    return pairs


class CheapFeaturizer:
    """Lexical features any reply has: cheap, language-agnostic, and a sane baseline before embeddings."""

    name = "cheap-v1"
    feature_names = ("log_chars", "log_words", "overlap_last", "overlap_context", "question", "exclamation",
                     "distinct_ratio", "short_generic", "same_language", "copies_last", "has_digit")

    def __call__(self, context: Context, response: str) -> np.ndarray:
        words = word_tokens(response)
        last = set(word_tokens(context.last_text))
        everything = {w for t in context.turns for w in word_tokens(t.text)}
        unique = set(words)
        return np.array([
            np.log1p(len(response)), np.log1p(len(words)),
            len(unique & last) / len(unique | last) if unique | last else 0.0,
            len(unique & everything) / len(unique) if unique else 0.0,
            float("?" in response), float("!" in response),
            len(unique) / len(words) if words else 0.0, float(len(words) <= 2),
            float(detect_language(response) == detect_language(context.last_text)),
            float(normalize_text(response).lower() == normalize_text(context.last_text).lower()),
            float(any(ch.isdigit() for ch in response)),
        ], dtype=float)


Featurizer = Callable[[Context, str], np.ndarray]


def _featurizer_name(featurizer: Featurizer) -> str:
    return str(getattr(featurizer, "name", getattr(featurizer, "__name__", type(featurizer).__name__)))


def data_hash(pairs: Sequence[PreferencePair]) -> str:
    return sha256_json([pair_to_json(p) for p in pairs])


class PreferenceRewardModel:
    def __init__(self, featurizer: Featurizer | None = None, l2: float = 1.0) -> None:
        self.featurizer: Featurizer = featurizer or CheapFeaturizer()
        self.l2 = l2
        self.weights: np.ndarray | None = None
        self.mean: np.ndarray | None = None
        self.scale: np.ndarray | None = None
        self.fit_info: dict[str, Any] = {}

    def _features(self, context: Context, responses: Sequence[str]) -> np.ndarray:
        return np.stack([np.asarray(self.featurizer(context, r), dtype=float) for r in responses])

    def _standardized(self, raw: np.ndarray) -> np.ndarray:
        assert self.mean is not None and self.scale is not None
        return (raw - self.mean) / self.scale

    def fit(self, pairs: Sequence[PreferencePair]) -> PreferenceRewardModel:
        if not pairs:
            raise PreferenceDataError("no preference pairs to fit on")
        chosen = np.stack([self._features(p.context, [p.chosen])[0] for p in pairs])
        rejected = np.stack([self._features(p.context, [p.rejected])[0] for p in pairs])
        both = np.vstack([chosen, rejected])
        self.mean = both.mean(axis=0)
        # Constant features get scale 1 so they stay at zero instead of dividing by zero.
        self.scale = np.where(both.std(axis=0) > 1e-9, both.std(axis=0), 1.0)
        diff = self._standardized(chosen) - self._standardized(rejected)
        weight = np.array([p.weight for p in pairs], dtype=float)
        weight = weight / weight.sum() * len(pairs)

        def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
            margin = diff @ w
            loss = float(np.sum(weight * np.logaddexp(0.0, -margin)) + 0.5 * self.l2 * w @ w)
            grad = -(weight / (1.0 + np.exp(margin))) @ diff + self.l2 * w
            return loss, grad

        result = minimize(objective, np.zeros(diff.shape[1]), jac=True, method="L-BFGS-B")
        self.weights = result.x
        self.fit_info = {"converged": bool(result.success), "iterations": int(result.nit),
                         "loss": float(result.fun), "pairs": len(pairs)}
        return self

    def score_many(self, context: Context, responses: Sequence[str]) -> np.ndarray:
        if self.weights is None:
            raise PreferenceDataError("the model is not trained: call fit() or load() first")
        return self._standardized(self._features(context, responses)) @ self.weights

    def score(self, context: Context, response: str) -> float:
        return float(self.score_many(context, [response])[0])

    def pairwise_accuracy(self, pairs: Sequence[PreferencePair]) -> float:
        """Share of pairs ranked the raters' way (weighted); a tie counts half."""
        if not pairs:
            return float("nan")
        hits = total = 0.0
        for p in pairs:
            chosen, rejected = self.score_many(p.context, [p.chosen, p.rejected])
            hits += p.weight * (1.0 if chosen > rejected else 0.5 if chosen == rejected else 0.0)
            total += p.weight
        return hits / total

    def save(self, directory: Path, data_sha256: str = "", metrics: dict[str, Any] | None = None) -> None:
        if self.weights is None or self.mean is None or self.scale is None:
            raise PreferenceDataError("nothing to save: the model is not trained")
        model = {"weights": self.weights.tolist(), "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                 "feature_names": list(getattr(self.featurizer, "feature_names", []))}
        model_text = json.dumps(model, indent=2) + "\n"
        featurizer = _featurizer_name(self.featurizer)
        manifest = ArtifactManifest(
            kind=KIND, identity=sha256_bytes(model_text.encode("utf-8")),
            config={"l2": self.l2, "featurizer": featurizer, "dim": len(self.weights)},
            data_sha256=data_sha256, lineage={"featurizer": featurizer}, metrics=metrics or {},
            versions=package_versions("numpy", "scipy", "repliq"),
            details={"model": "bradley-terry-linear", "fit": self.fit_info})
        with atomic_directory(Path(directory)) as scratch:
            (scratch / MODEL_FILE).write_text(model_text, encoding="utf-8")
            save_manifest(scratch / MANIFEST_FILE, manifest)

    @classmethod
    def load(cls, directory: Path, featurizer: Featurizer | None = None) -> PreferenceRewardModel:
        directory = Path(directory)
        try:
            manifest = load_manifest(directory / MANIFEST_FILE, KIND)
            model_bytes = (directory / MODEL_FILE).read_bytes()
            model = json.loads(model_bytes)
        except (ArtifactError, OSError, json.JSONDecodeError) as exc:
            raise PreferenceDataError(f"{directory} is not a saved preference model this code reads ({exc}); "
                                      f"train one with `{rebuild_command(KIND)}`") from exc
        if sha256_bytes(model_bytes) != manifest.identity:
            raise PreferenceDataError(f"{directory / MODEL_FILE} does not match its manifest hash (edited or damaged); "
                                      f"train it again with `{rebuild_command(KIND)}`")
        out = cls(featurizer, float(manifest.config["l2"]))
        if _featurizer_name(out.featurizer) != manifest.config["featurizer"]:
            raise PreferenceDataError(f"{directory} was trained with featurizer {manifest.config['featurizer']!r}, "
                                      f"not {_featurizer_name(out.featurizer)!r}; pass the same featurizer to load()")
        out.weights, out.mean, out.scale = (np.array(model[k], dtype=float) for k in ("weights", "mean", "scale"))
        out.fit_info = manifest.details.get("fit", {})
        return out


def train_preference_model(pairs: Sequence[PreferencePair], out_dir: Path | None = None, held_out: float = 0.2,
                           l2: float = 1.0, seed: int = 0,
                           featurizer: Featurizer | None = None) -> tuple[PreferenceRewardModel, dict[str, Any]]:
    """Fit on a seeded split and report held-out pairwise accuracy (the number to trust), then save."""
    if not 0.0 <= held_out < 1.0:
        raise PreferenceDataError(f"held_out={held_out} must be in [0, 1)")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_test = round(held_out * len(pairs))
    if held_out and (n_test == 0 or n_test == len(pairs)):
        raise PreferenceDataError(f"{len(pairs)} pairs are too few to hold out {held_out:.0%}; label more pairs")
    test = [pairs[i] for i in order[:n_test]]
    train = [pairs[i] for i in order[n_test:]]
    model = PreferenceRewardModel(featurizer, l2).fit(train)
    metrics = {"train_pairs": len(train), "held_out_pairs": len(test),
               "train_accuracy": model.pairwise_accuracy(train),
               "held_out_accuracy": model.pairwise_accuracy(test) if test else None}
    if out_dir is not None:
        model.save(out_dir, data_hash(pairs), metrics)
    return model, metrics
