"""The distilled specificity proxy: a small head on the retrieval encoder's embeddings that predicts the
teacher's specificity score (``rl.teacher``), so RL and the blender get it without running the LM.

Inputs (``ProxyConfig.inputs``), all with three length features (log characters, log words, mean word
length), since teacher scores grow with information content, which a normalized embedding encodes weakly:

* ``phrase``   the reply's passage embedding, the vector the bank index already holds;
* ``pair``     plus the context's query embedding (product, absolute difference, cosine), for conditional
               teacher definitions;
* ``lexical``  hashed character trigram counts instead of an embedding: no encoder at all, so scoring a
               new phrase costs tens of microseconds rather than an encoder pass (docs/rewards.md).

Several heads trained on different seeds and bootstrap subsamples form a :class:`ProxyEnsemble`; their
disagreement (sd across heads) grows on phrases unlike the training data and serves as a
distribution-shift alarm during RL (seed 000's "family of reward models").
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.stats import spearmanr

from core.job_configs import ProxyConfig
from core.text import word_tokens
from core.types import Context
from retriever.encoder_cache import cached
from rl.artifacts import (
    Head,
    RewardModelError,
    check_encoder,
    data_hash,
    fit_head,
    load_artifact,
    save_artifact,
    weights_digest,
)

if TYPE_CHECKING:
    from core.config import Settings
    from retriever.encoder import Encoder

KIND = "specificity-proxy"
HASH_DIM = 4096
Example = str | tuple[Context, str]


def length_features(texts: Sequence[str]) -> np.ndarray:
    rows = []
    for text in texts:
        words = word_tokens(text)
        rows.append((math.log1p(len(text)), math.log1p(len(words)),
                     sum(map(len, words)) / len(words) if words else 0.0))
    return np.array(rows, dtype=np.float32).reshape(len(texts), 3)


def trigram_counts(texts: Sequence[str], dim: int = HASH_DIM) -> np.ndarray:
    """Character trigrams of the lower-cased, space-padded text, hashed into ``dim`` buckets (crc32: stable
    across processes, unlike ``hash``)."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for row, text in enumerate(texts):
        padded = f" {text.lower()} "
        for i in range(len(padded) - 2):
            out[row, zlib.crc32(padded[i:i + 3].encode("utf-8")) % dim] += 1.0
    return out


def proxy_features(texts: Sequence[str], passages: np.ndarray | None, queries: np.ndarray | None = None) -> np.ndarray:
    """``passages=None`` means lexical inputs."""
    if passages is None:
        return np.hstack([trigram_counts(texts), length_features(texts)])
    parts = [np.asarray(passages, np.float32), length_features(texts)]
    if queries is not None:
        queries = np.asarray(queries, np.float32)
        parts += [queries * passages, np.abs(queries - passages), np.sum(queries * passages, axis=1, keepdims=True)]
    return np.hstack(parts)


def split_examples(examples: Sequence[Example]) -> tuple[list[Context] | None, list[str]]:
    """``(contexts or None, texts)``; mixing bare phrases and (context, phrase) pairs is refused."""
    pairs = [isinstance(e, tuple) for e in examples]
    if any(pairs) and not all(pairs):
        raise ValueError("give either phrases or (context, phrase) pairs, not a mix")
    if examples and all(pairs):
        return [e[0] for e in examples], [e[1] for e in examples]  # type: ignore[index]
    return None, [str(e) for e in examples]


class ProxyEnsemble:
    """K ≥ 1 heads over one encoder (none for lexical inputs); ``score`` is their mean and the
    disagreement their sd (0 when K = 1)."""

    def __init__(self, heads: list[Head], config: ProxyConfig, encoder: Encoder | None = None,
                 manifest: dict[str, Any] | None = None, cache_size: int = 20_000) -> None:
        if not heads:
            raise ValueError("a proxy needs at least one head")
        self.heads, self.config, self.manifest = heads, config, manifest or {}
        self.encoder = cached(encoder, max_cached=cache_size) if encoder is not None else None

    @property
    def identity(self) -> str:
        """Names these exact weights, for manifests of models that consume the proxy (e.g. a blender)."""
        digest = self.manifest.get("weights_sha256") or weights_digest(self.arrays())
        return f"{KIND}@{digest[:12]}"

    def arrays(self) -> dict[str, np.ndarray]:
        return {f"m{k}_{name}": value for k, h in enumerate(self.heads) for name, value in h.arrays().items()}

    def _encoder(self) -> Encoder:
        if self.encoder is None:
            raise RewardModelError("this proxy has no encoder attached; load it with load_specificity_proxy(dir, "
                                   "encoder) or pass precomputed embeddings")
        return self.encoder

    def _passages(self, texts: Sequence[str]) -> np.ndarray:
        """Passage embeddings through the encoder cache: bank phrases recur on every request."""
        return self._encoder().encode_passages(list(texts))

    def features(self, texts: Sequence[str], contexts: Sequence[Context] | None = None,
                 passages: np.ndarray | None = None, queries: np.ndarray | None = None) -> np.ndarray:
        if self.config.inputs == "lexical":
            return proxy_features(texts, None)
        if passages is None:
            passages = self._passages(texts)
        if self.config.inputs == "pair" and queries is None:
            if contexts is None or len(contexts) != len(texts):
                raise ValueError("this proxy scores (context, phrase) pairs: pass one context per text")
            queries = self._encoder().encode_queries([c.as_query_text(self.config.context_turns) for c in contexts])
        return proxy_features(texts, passages, queries if self.config.inputs == "pair" else None)

    def member_scores(self, texts: Sequence[str], contexts: Sequence[Context] | None = None,
                      passages: np.ndarray | None = None, queries: np.ndarray | None = None) -> np.ndarray:
        """Shape (K, n): every head's prediction of the teacher score."""
        if not len(texts):
            return np.zeros((len(self.heads), 0))
        x = self.features(texts, contexts, passages, queries)
        return np.stack([head(x) for head in self.heads])

    def score(self, texts: Sequence[str], contexts: Sequence[Context] | None = None,
              passages: np.ndarray | None = None, queries: np.ndarray | None = None) -> np.ndarray:
        return self.member_scores(texts, contexts, passages, queries).mean(axis=0)

    def score_with_disagreement(self, texts: Sequence[str], contexts: Sequence[Context] | None = None,
                                passages: np.ndarray | None = None,
                                queries: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        members = self.member_scores(texts, contexts, passages, queries)
        return members.mean(axis=0), members.std(axis=0)

    def annotator(self) -> Any:
        """The callable ``ranker.annotator_base.AnnotatorResources.specificity`` expects."""

        def specificity(context: Context, texts: Sequence[str]) -> list[float]:
            contexts = [context] * len(texts) if self.config.inputs == "pair" else None
            return self.score(list(texts), contexts).tolist()

        return specificity


def _encode(encoder: Encoder | None, contexts: list[Context] | None, texts: list[str],
            config: ProxyConfig) -> tuple[np.ndarray | None, np.ndarray | None]:
    if config.inputs == "lexical":
        return None, None
    if encoder is None:
        raise ValueError(f"inputs={config.inputs!r} need an encoder: pass settings (to load the configured one) "
                         "or an encoder")
    passages = encoder.encode_passages(texts)
    if config.inputs == "phrase":
        return passages, None
    if contexts is None:
        raise ValueError("inputs='pair' needs (context, phrase) examples")
    return passages, encoder.encode_queries([c.as_query_text(config.context_turns) for c in contexts])


def _per_language_spearman(pred: np.ndarray, target: np.ndarray, languages: Sequence[str]) -> dict[str, float]:
    out = {}
    for language in sorted(set(languages)):
        mask = np.array([lang == language for lang in languages])
        if mask.sum() >= 3:
            out[language] = float(spearmanr(pred[mask], target[mask]).statistic)
    return out


def fit_proxy(x: np.ndarray, y: np.ndarray, config: ProxyConfig, seed: int) -> list[Head]:
    rng = np.random.default_rng(seed)
    heads = []
    for member in range(config.members):
        rows = np.arange(len(y))
        if config.members > 1 and config.subsample < 1.0:
            rows = np.sort(rng.choice(len(y), size=max(2, int(config.subsample * len(y))), replace=False))
        options = {"hidden": config.hidden, "epochs": config.epochs} if config.head == "mlp" else {"l2": config.l2}
        heads.append(fit_head(config.head, x[rows], y[rows], seed=seed * 1000 + member, **options))
    return heads


def train_specificity_proxy(settings: Settings | None, texts_or_pairs: Sequence[Example],
                            teacher_scores: Sequence[float], out_dir: Path | None, seed: int = 0,
                            languages: Sequence[str] | None = None, config: ProxyConfig | None = None,
                            encoder: Encoder | None = None, passages: np.ndarray | None = None,
                            queries: np.ndarray | None = None,
                            extra_metrics: dict[str, Any] | None = None) -> tuple[ProxyEnsemble, dict[str, Any]]:
    """Fit on a seeded split, report held-out Spearman vs the teacher per language, refit on all rows, save.

    ``languages`` (one per example) enables the per-language metrics the fidelity target is stated in;
    ``encoder`` overrides ``Encoder.from_config(settings)`` (e.g. to share an already loaded one), and
    ``passages``/``queries`` skip encoding when the embeddings already exist (e.g. from the bank index).
    """
    from core.text import detect_language

    config = config or ProxyConfig()
    config.validate()
    contexts, texts = split_examples(texts_or_pairs)
    y = np.asarray(teacher_scores, dtype=np.float64)
    if len(y) != len(texts):
        raise ValueError(f"got {len(y)} teacher scores for {len(texts)} examples")
    if len(texts) < 20 or not np.isfinite(y).all():
        raise ValueError("need at least 20 examples with finite teacher scores; drop unscored rows first")
    languages = list(languages) if languages is not None else [detect_language(t) for t in texts]
    if encoder is None and settings is not None and config.inputs != "lexical":
        from retriever.encoder import Encoder as EncoderClass

        encoder = EncoderClass.from_config(settings)
    started = time.perf_counter()
    if passages is None or (config.inputs == "pair" and queries is None):
        passages, queries = _encode(encoder, contexts, texts, config)
    elif len(passages) != len(texts) or (queries is not None and len(queries) != len(texts)):
        raise ValueError(f"got {len(passages)} passage embeddings for {len(texts)} examples")
    x = proxy_features(texts, passages, queries)
    encode_s = time.perf_counter() - started
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = round(config.held_out * len(y))
    test, train = order[:n_test], order[n_test:]
    metrics: dict[str, Any] = {**(extra_metrics or {}), "examples": len(y), "held_out": n_test, "encode_s": encode_s,
                               "languages": {lang: languages.count(lang) for lang in sorted(set(languages))}}
    if n_test:
        heads = fit_proxy(x[train], y[train], config, seed)
        pred = np.mean([h(x[test]) for h in heads], axis=0)
        metrics["held_out_spearman"] = float(spearmanr(pred, y[test]).statistic)
        metrics["held_out_spearman_by_language"] = _per_language_spearman(pred, y[test], [languages[i] for i in test])
        if config.head == "ridge":
            metrics["ridge_l2_chosen"] = [h.info.get("l2") for h in heads]
    heads = fit_proxy(x, y, config, seed)
    proxy = ProxyEnsemble(heads, config, None if config.inputs == "lexical" else encoder)
    if out_dir is not None:
        arrays = proxy.arrays()
        fingerprint = data_hash([[t.text for t in c.turns] for c in contexts] if contexts else None, texts, y)
        identity = None if encoder is None or config.inputs == "lexical" else encoder.identity
        proxy.manifest = save_artifact(Path(out_dir), KIND, arrays, config=asdict(config), encoder=identity,
                                       data_sha256=fingerprint, metrics=metrics)
    return proxy, metrics


def load_specificity_proxy(directory: Path, encoder: Encoder | None) -> ProxyEnsemble:
    """Load a saved proxy; refuses one trained on a different encoder than ``encoder`` (lexical proxies
    read no embeddings and load with any encoder, or none)."""
    manifest, arrays = load_artifact(Path(directory), KIND)
    if encoder is not None and "encoder" in manifest["lineage"]:  # lexical proxies read no embeddings
        check_encoder(manifest, encoder.identity, Path(directory))
    config = ProxyConfig(**manifest["config"])
    heads = [Head.from_arrays(config.head, arrays, f"m{k}_") for k in range(config.members)]
    return ProxyEnsemble(heads, config, encoder, manifest)


def load_proxy_scorer(directory: Path, encoder: Encoder) -> tuple[Any, str]:
    """``(annotator callable, identity)`` for the blender's ``specificity_proxy`` slot."""
    proxy = load_specificity_proxy(directory, encoder)
    return proxy.annotator(), proxy.identity



def distill_specificity_proxy(settings: Settings | None, lm: Any, texts: Sequence[str], languages: Sequence[str],
                              out_dir: Path | None, seed: int = 0, config: ProxyConfig | None = None,
                              cache_path: Path | None = None,
                              encoder: Encoder | None = None) -> tuple[ProxyEnsemble, dict[str, Any]]:
    """Teacher-score phrases (through the on-disk cache, so reruns score nothing twice), then distil.

    For phrase and lexical inputs only: a conditional teacher needs dialogues, see ``train_specificity_proxy``.
    ``lm`` is a ``core.lm.wrapper.DecoderLM``; ``config.teacher_lm`` should name it in the model cache.
    """
    from rl.teacher import CONDITIONAL, TeacherCache, default_cache_path, score_with_cache, teacher_values

    config = config or ProxyConfig()
    config.validate()
    if config.inputs == "pair" or config.teacher in CONDITIONAL:
        raise ValueError(f"teacher {config.teacher!r} with inputs {config.inputs!r} needs (context, phrase) pairs; "
                         "score them with rl.teacher.score_with_cache and call train_specificity_proxy")
    if len(texts) != len(languages):
        raise ValueError(f"got {len(languages)} languages for {len(texts)} texts")
    cache = TeacherCache(cache_path or default_cache_path())
    started = time.perf_counter()
    scores = score_with_cache(lm, [None] * len(texts), list(texts), list(languages), cache)
    values = teacher_values(scores, config.teacher)
    teacher_s = time.perf_counter() - started
    teacher = {"teacher": {"lm_id": lm.lm_id, "definition": config.teacher, "seconds": teacher_s}}
    return train_specificity_proxy(settings, list(texts), values, out_dir, seed, languages, config, encoder,
                                   extra_metrics=teacher)
