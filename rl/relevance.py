"""The relevance (sensibleness) reward: does a reply fit its context?

Trained as DialogRPT's human-vs-rand task: the reply a human gave (gold) against a random reply from
another conversation, plus "hard" negatives, replies from other conversations that the encoder itself
places near the context. Random negatives teach topic fit; hard ones (down-weighted, see below) teach
more than topic overlap.

Features are few and cheap (measured in docs/rewards.md; the full 768-dimensional product/difference
of the embeddings overfit and did no better):

* the query–reply cosine of the retrieval encoder;
* hubness terms as in CSLS: the reply's mean similarity to its k nearest *reference contexts* and the
  context's to its k nearest reference replies, plus both means over the whole reference set. A generic
  reply ("yes", "I don't know") is close to every context; subtracting that makes the score PMI-like;
* lexical overlap with the last turn and the whole context, reply length, context length, and whether the
  last turn asks a question.

Hard negatives are chosen by the same encoder's cosine, so they look *more* relevant to it than the gold
does (and some are valid answers): at full weight they teach the model to distrust cosine and cost
gold-vs-random accuracy. ``hard_weight`` (0.3) keeps most of one while gaining some of the other.

Its job in the total reward (``rl.rewards``) is to gate specificity: a reply full of rare words scores
high on any information-content teacher, and only a relevance model can say it does not belong.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.special import expit

from core.corpora import ContextPair
from core.text import normalize_text, word_tokens
from core.types import Context
from rl.artifacts import Head, data_hash, fit_head, load_artifact, save_artifact
from rl.teacher import pairwise_accuracy

if TYPE_CHECKING:
    from core.config import Settings
    from retriever.encoder import Encoder

KIND = "relevance"
RELEVANCE_DIR = "reward-relevance"  # under <home>/artifacts, and the shipped name
FEATURES = ("cosine", "reply_hub_knn", "context_hub_knn", "reply_hub_mean", "context_hub_mean", "overlap_last",
            "overlap_context", "log_reply_words", "log_context_chars", "context_question")


@dataclass(frozen=True)
class RelevanceConfig:
    head: str = "mlp"
    random_negatives: int = 1
    hard_negatives: int = 1
    hard_weight: float = 0.3
    # Hard negatives are drawn from this many nearest other-conversation replies (rank 1 is often a
    # paraphrase of a valid answer, so not always the top one).
    hard_pool: int = 10
    # Replies and contexts the hub features compare against; they travel in the weights file (2 x 384 floats each).
    reference_size: int = 256
    hub_k: int = 10
    held_out: float = 0.2
    context_turns: int = 3
    l2: float = 1.0
    hidden: int = 32
    epochs: int = 200

    def validate(self) -> None:
        if self.head not in ("logistic", "mlp"):
            raise ValueError(f"relevance head must be 'logistic' or 'mlp', got {self.head!r}")
        if self.random_negatives < 0 or self.hard_negatives < 0 or self.random_negatives + self.hard_negatives < 1:
            raise ValueError("need at least one random or hard negative per gold reply")
        if not 0.0 <= self.held_out < 1.0 or self.hard_pool < 1 or self.hub_k < 1 or self.reference_size < 1:
            raise ValueError(f"need 0 <= held_out < 1 and positive hard_pool, hub_k, reference_size; got {self}")
        if not self.hard_weight > 0:
            raise ValueError(f"hard_weight must be > 0 (use hard_negatives=0 to drop them), got {self.hard_weight}")


@dataclass(frozen=True)
class Reference:
    """Embeddings of reference contexts and replies that define what "generic" means (hubness)."""

    queries: np.ndarray
    passages: np.ndarray


def _lexical(context: Context, reply: str, context_turns: int) -> list[float]:
    window = context.window(context_turns)
    last = {w.lower() for w in word_tokens(window.last_text)}
    everything = {w.lower() for t in window.turns for w in word_tokens(t.text)}
    words = [w.lower() for w in word_tokens(reply)]
    unique = set(words)
    return [len(unique & last) / len(unique | last) if unique | last else 0.0,
            len(unique & everything) / len(unique) if unique else 0.0,
            math.log1p(len(words)), math.log1p(len(window.last_text)), float("?" in window.last_text)]


def relevance_features(queries: np.ndarray, passages: np.ndarray, reference: Reference, k: int,
                       contexts: Sequence[Context], texts: Sequence[str], context_turns: int) -> np.ndarray:
    q, p = np.asarray(queries, np.float32), np.asarray(passages, np.float32)
    k = min(k, len(reference.queries))
    to_contexts, to_replies = p @ reference.queries.T, q @ reference.passages.T
    knn = [np.partition(m, -k, axis=1)[:, -k:].mean(axis=1) for m in (to_contexts, to_replies)]
    lexical = np.array([_lexical(c, t, context_turns) for c, t in zip(contexts, texts, strict=True)], np.float32)
    return np.hstack([np.sum(q * p, axis=1, keepdims=True), knn[0][:, None], knn[1][:, None],
                      to_contexts.mean(axis=1, keepdims=True), to_replies.mean(axis=1, keepdims=True),
                      lexical.reshape(len(texts), 5)])


class RelevanceModel:
    """P(reply fits context); ``score`` returns probabilities in (0, 1)."""

    def __init__(self, head: Head, reference: Reference, config: RelevanceConfig, encoder: Encoder | None = None,
                 manifest: dict[str, Any] | None = None) -> None:
        self.head, self.reference, self.config = head, reference, config
        self.encoder, self.manifest = encoder, manifest or {}

    def features(self, contexts: Sequence[Context], texts: Sequence[str], queries: np.ndarray,
                 passages: np.ndarray) -> np.ndarray:
        return relevance_features(queries, passages, self.reference, self.config.hub_k, contexts, texts,
                                  self.config.context_turns)

    def score(self, contexts: Sequence[Context], texts: Sequence[str], queries: np.ndarray | None = None,
              passages: np.ndarray | None = None) -> np.ndarray:
        """One probability per (contexts[i], texts[i]); embeddings are computed unless given (retrieval has them)."""
        if len(contexts) != len(texts):
            raise ValueError(f"got {len(contexts)} contexts for {len(texts)} texts")
        if not texts:
            return np.zeros(0)
        if queries is None or passages is None:
            if self.encoder is None:
                raise ValueError("this relevance model has no encoder; load it with load_relevance_model(dir, "
                                 "encoder) or pass query and passage embeddings")
            if queries is None:
                query_texts = [c.as_query_text(self.config.context_turns) for c in contexts]
                unique = list(dict.fromkeys(query_texts))
                encoded = dict(zip(unique, self.encoder.encode_queries(unique), strict=True))
                queries = np.stack([encoded[q] for q in query_texts])
            if passages is None:
                passages = self.encoder.encode_passages(list(texts))
        logits = self.head(self.features(contexts, texts, queries, passages))
        return expit(logits)  # the logistic function without exp overflow on very negative logits


@dataclass
class RelevanceData:
    pairs: Sequence[ContextPair]
    queries: np.ndarray  # per gold pair
    passages: np.ndarray  # per gold pair
    anchors: np.ndarray  # per row: the pair whose context is scored
    sources: np.ndarray  # per row: the pair whose reply is scored
    labels: np.ndarray  # per row: 1 gold, 0 negative
    kinds: list[str]  # per row: gold / random / hard

    def subset(self, rows: np.ndarray) -> RelevanceData:
        return RelevanceData(self.pairs, self.queries, self.passages, self.anchors[rows], self.sources[rows],
                             self.labels[rows], [self.kinds[i] for i in rows])

    @property
    def languages(self) -> list[str]:
        return [self.pairs[a].language for a in self.anchors]

    def features(self, reference: Reference, config: RelevanceConfig) -> np.ndarray:
        return relevance_features(self.queries[self.anchors], self.passages[self.sources], reference, config.hub_k,
                                  [self.pairs[a].context for a in self.anchors],
                                  [self.pairs[b].response for b in self.sources], config.context_turns)


def build_relevance_data(pairs: Sequence[ContextPair], encoder: Encoder, config: RelevanceConfig,
                         seed: int = 0) -> RelevanceData:
    """Gold rows plus negatives drawn among replies of *other* conversations in the same language."""
    queries = encoder.encode_queries([p.context.as_query_text(config.context_turns) for p in pairs])
    golds = encoder.encode_passages([p.response for p in pairs])
    keys = [normalize_text(p.response).lower() for p in pairs]
    conversations = np.array([p.conversation_id for p in pairs])
    rng = np.random.default_rng(seed)
    rows: list[tuple[int, int, str]] = [(i, i, "gold") for i in range(len(pairs))]  # (anchor, source, kind)
    by_language = {lang: np.array([i for i, p in enumerate(pairs) if p.language == lang])
                   for lang in {p.language for p in pairs}}
    for i, pair in enumerate(pairs):
        pool = by_language[pair.language]
        pool = pool[(conversations[pool] != pair.conversation_id)
                    & np.array([keys[j] != keys[i] for j in pool], dtype=bool)]
        if not len(pool):
            continue
        for j in rng.choice(pool, size=min(config.random_negatives, len(pool)), replace=False):
            rows.append((i, int(j), "random"))
        if config.hard_negatives:
            top = pool[np.argsort(-(golds[pool] @ queries[i]))[: config.hard_pool]]
            for j in rng.choice(top, size=min(config.hard_negatives, len(top)), replace=False):
                rows.append((i, int(j), "hard"))
    return RelevanceData(pairs, queries, golds, np.array([a for a, _, _ in rows]), np.array([b for _, b, _ in rows]),
                         np.array([1.0 if k == "gold" else 0.0 for _, _, k in rows]), [k for _, _, k in rows])


def relevance_metrics(scores: np.ndarray, data: RelevanceData) -> dict[str, Any]:
    """Per language: AUC of gold vs random and gold vs hard negatives."""
    out: dict[str, Any] = {}
    kinds, langs = np.array(data.kinds), np.array(data.languages)
    for lang in sorted(set(data.languages)):
        row: dict[str, float] = {}
        for negative in ("random", "hard"):
            mask = (langs == lang) & ((kinds == "gold") | (kinds == negative))
            if (mask & (kinds == negative)).any():
                row[f"auc_gold_vs_{negative}"] = pairwise_accuracy(scores[mask], data.labels[mask])
        row["gold_rows"] = float(((langs == lang) & (kinds == "gold")).sum())
        out[lang] = row
    return out


def _held_out(pairs: Sequence[ContextPair], fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of held-out pairs, chosen by conversation so no dialogue sits on both sides."""
    def u(conversation: str) -> float:
        digest = hashlib.sha1(f"{seed}:{conversation}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    return np.array([u(p.conversation_id) < fraction for p in pairs])


def _fit(data: RelevanceData, pair_mask: np.ndarray, config: RelevanceConfig, seed: int) -> RelevanceModel:
    """Reference sets and head from the pairs in ``pair_mask`` only, so held-out rows stay unseen."""
    rng = np.random.default_rng(seed)
    members = np.flatnonzero(pair_mask)
    ref = np.sort(rng.choice(members, size=min(config.reference_size, len(members)), replace=False))
    reference = Reference(data.queries[ref].astype(np.float32), data.passages[ref].astype(np.float32))
    train = data.subset(np.flatnonzero(pair_mask[data.anchors]))
    weight = np.array([config.hard_weight if k == "hard" else 1.0 for k in train.kinds])
    x = train.features(reference, config)
    options: dict[str, Any] = {"l2": config.l2} if config.head == "logistic" else {
        "hidden": config.hidden, "epochs": config.epochs, "loss": "logistic"}
    head = fit_head(config.head, x, train.labels, seed=seed, sample_weight=weight, **options)
    return RelevanceModel(head, reference, config)


def train_relevance_model(settings: Settings | None, pairs: Sequence[ContextPair], out_dir: Path | None,
                          seed: int = 0, config: RelevanceConfig | None = None,
                          encoder: Encoder | None = None) -> tuple[RelevanceModel, dict[str, Any]]:
    """Held-out metrics on a conversation-level split, then a refit on everything and an atomic save."""
    config = config or RelevanceConfig()
    config.validate()
    if len(pairs) < 20:
        raise ValueError(f"need at least 20 context/reply pairs to train relevance, got {len(pairs)}")
    if encoder is None:
        if settings is None:
            raise ValueError("pass settings (to load the configured encoder) or an encoder")
        from retriever.encoder import Encoder as EncoderClass

        encoder = EncoderClass.from_config(settings)
    started = time.perf_counter()
    data = build_relevance_data(pairs, encoder, config, seed)
    metrics: dict[str, Any] = {"pairs": len(pairs), "rows": len(data.labels), "features": list(FEATURES),
                               "encode_s": time.perf_counter() - started}
    test = _held_out(pairs, config.held_out, seed)
    if test.any() and (~test).any():
        held = data.subset(np.flatnonzero(test[data.anchors]))
        model = _fit(data, ~test, config, seed)
        x = held.features(model.reference, config)
        metrics["held_out"] = relevance_metrics(model.head(x), held)
        metrics["held_out_cosine_only"] = relevance_metrics(x[:, FEATURES.index("cosine")], held)
    model = _fit(data, np.ones(len(pairs), dtype=bool), config, seed)
    model.encoder = encoder
    if out_dir is not None:
        fingerprint = data_hash([[[t.text for t in p.context.turns], p.response, p.conversation_id] for p in pairs])
        arrays = {**model.head.arrays(), "reference_queries": model.reference.queries,
                  "reference_passages": model.reference.passages}
        model.manifest = save_artifact(Path(out_dir), KIND, arrays, config=asdict(config), encoder=encoder.identity,
                                       data_sha256=fingerprint, metrics=metrics)
    return model, metrics


def load_relevance_model(directory: Path, encoder: Encoder | None) -> RelevanceModel:
    """Load a saved relevance model; refuses one trained on a different encoder than ``encoder``."""
    manifest, arrays = load_artifact(Path(directory), KIND, encoder.identity if encoder is not None else None)
    config = RelevanceConfig(**manifest["config"])
    reference = Reference(arrays["reference_queries"], arrays["reference_passages"])
    return RelevanceModel(Head.from_arrays(config.head, arrays), reference, config, encoder, manifest)


def workspace_relevance(settings: Settings) -> tuple[RelevanceModel, str]:
    """The workspace's relevance model, else the one shipped with repliq, and a reference naming which.

    Loaded on the workspace's encoder (its query adapter included), the encoder the model was trained on.
    """
    from core.artifacts import shipped_dir
    from retriever.encoder import Encoder

    directory = settings.artifacts_dir / RELEVANCE_DIR
    where = "workspace"
    if not directory.is_dir():
        directory, where = shipped_dir(RELEVANCE_DIR), "shipped"
    if not directory.is_dir():
        raise FileNotFoundError(f"no relevance model in {settings.artifacts_dir / RELEVANCE_DIR} and none shipped; "
                                "run `repliq train reward --kind relevance`")
    model = load_relevance_model(directory, Encoder.from_config(settings))
    digest = str(model.manifest.get("weights_sha256") or model.manifest.get("identity") or "?")
    return model, f"{where} relevance@{digest[:12]}"
