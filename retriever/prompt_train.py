"""Training the prompt retriever from frozen-LM scores (UPRISE), as a query adapter on frozen embeddings.

UPRISE fine-tunes a whole bi-encoder. Here the encoder stays frozen and only a low-rank query-side map
(:class:`retriever.adapter.QueryAdapter`) is learned, for three reasons on a shared 2-core CPU: the pool's
passage vectors are computed once and stay valid (no re-encoding of the pool per epoch, and the FAISS
index never goes stale while training), an epoch is milliseconds of matrix work instead of minutes of
transformer backprop, and with a few hundred scored examples a 33M-parameter fine-tune would overfit
where a rank-32 map cannot move far from the base encoder (it starts exactly at it).

Two losses. ``contrastive`` is UPRISE's: for each example the best-scored demonstration is the
positive; the worst-scored ones (hard negatives), random pool entries (random negatives) and the other
examples' positives in the batch are the negatives; softmax cross-entropy over cosine similarities.
``listwise`` distils the LM's whole preference over an example's L scored candidates instead of only
its argmax: KL(softmax(LM scores / lm_temperature) || softmax(scale * cosines)), as in LM-supervised
retrieval (REPLUG). With a few hundred examples and LM scores a few hundredths of a nat apart, the
argmax is often noise, and the listwise target uses every score the LM paid for.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from retriever.adapter import QueryAdapter

LOSSES = ("contrastive", "listwise")


@dataclass
class PromptTrainConfig:
    rank: int = 32
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    scale: float = 20.0  # inverse temperature of the softmax over cosines
    hard_negatives: int = 3  # the worst-scored candidates of each example
    random_negatives: int = 3  # pool entries of the example's language, not among its scored candidates
    dev_fraction: float = 0.2  # examples held out to pick the epoch
    # "contrastive", "listwise" (see the module docstring) or "auto": the job trains both and keeps the one
    # with the better held-out choice gain.
    loss: str = "auto"
    lm_temperature: float = 0.1  # listwise: nats per token that make one candidate e times likelier
    # A trained epoch replaces the plain encoder only if its held-out gain is this many standard errors above
    # it. 0 keeps the best held-out epoch (UPRISE's checkpoint choice). 2 guards against the winner's curse,
    # but on a few hundred single-demonstration examples it also rejected an adapter that the dev evaluation
    # (K = 3, 150 contexts per language) found better than the plain encoder in Russian (docs/benchmarks.md).
    min_gain_z: float = 0.0
    seed: int = 0

    def validate(self) -> None:
        for name in ("rank", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"prompt retriever {name} must be at least 1, got {getattr(self, name)}")
        if self.hard_negatives < 0 or self.random_negatives < 0:
            raise ValueError("hard_negatives and random_negatives must be 0 or more")
        if not 0 <= self.dev_fraction < 1 or self.learning_rate <= 0 or self.scale <= 0 or self.lm_temperature <= 0:
            raise ValueError("need 0 <= dev_fraction < 1 and positive learning_rate, scale and lm_temperature")
        if self.loss not in (*LOSSES, "auto"):
            raise ValueError(f"prompt retriever loss must be one of {', '.join(LOSSES)} or auto, got {self.loss!r}")


@dataclass(frozen=True)
class ScoredExample:
    """A training context's query text, its scored candidates (pool ids) and their LM scores."""

    query: str
    language: str
    candidates: tuple[int, ...]
    scores: tuple[float, ...]


@dataclass(frozen=True)
class Target:
    positive: int
    negatives: tuple[int, ...]  # hard first, then random


def make_targets(examples: Sequence[ScoredExample], ids_by_language: dict[str, list[int]],
                 config: PromptTrainConfig) -> list[Target]:
    """Best-scored candidate as positive; worst-scored as hard negatives; random same-language entries."""
    rng = random.Random(config.seed)
    targets = []
    for example in examples:
        if len(example.candidates) < 2:
            raise ValueError(f"example {example.query[:40]!r} has {len(example.candidates)} scored candidates; "
                             "need at least 2 to tell a positive from a negative")
        order = sorted(range(len(example.scores)), key=lambda i: example.scores[i], reverse=True)
        positive = example.candidates[order[0]]
        hard = [example.candidates[i] for i in reversed(order[1:])][:config.hard_negatives]
        scored = set(example.candidates)
        others = [i for i in ids_by_language.get(example.language, []) if i not in scored]
        randoms = rng.sample(others, min(config.random_negatives, len(others)))
        targets.append(Target(positive, tuple(hard + randoms)))
    return targets


def choice_gains(adapter: QueryAdapter | None, queries: np.ndarray, passages: np.ndarray,
                 examples: Sequence[ScoredExample]) -> np.ndarray:
    """Per example: LM score of the candidate the retriever ranks first - the mean candidate score."""
    mapped = adapter.apply(queries) if adapter is not None else queries
    gains = []
    for row, example in enumerate(examples):
        sims = passages[list(example.candidates)] @ mapped[row]
        gains.append(example.scores[int(np.argmax(sims))] - float(np.mean(example.scores)))
    return np.asarray(gains, dtype=np.float64)


def choice_gain(adapter: QueryAdapter | None, queries: np.ndarray, passages: np.ndarray,
                examples: Sequence[ScoredExample]) -> float:
    """Mean of :func:`choice_gains`: how many nats per token the retriever's pick among the L candidates
    beats a random pick."""
    if not len(examples):
        return math.nan
    return float(np.mean(choice_gains(adapter, queries, passages, examples)))


def beats_base(trained: np.ndarray, base: np.ndarray, z: float) -> bool:
    """Is the trained adapter's held-out gain over the plain encoder larger than ``z`` standard errors?

    The best of many noisy epochs always looks better than epoch 0 (the winner's curse), so a trained
    adapter is kept only when its paired margin over the plain encoder clears the noise."""
    diff = np.asarray(trained, dtype=np.float64) - np.asarray(base, dtype=np.float64)
    if len(diff) < 2:
        return bool(diff.mean() > 0) if len(diff) else False
    return bool(diff.mean() > z * diff.std(ddof=1) / math.sqrt(len(diff)))


def _batch_loss(q: Any, down: Any, up: Any, passages: Any, pos: Any, neg: Any, scale: float) -> Any:
    """Cross-entropy of the positive (column 0) against own negatives and the batch's other positives."""
    import torch

    mapped = torch.nn.functional.normalize(q + (q @ down) @ up, dim=1)
    own = torch.cat([pos.unsqueeze(1), neg], dim=1)
    own_logits = torch.einsum("bd,bkd->bk", mapped, passages[own.clamp(min=0)]).masked_fill(own < 0, -1e4)
    # Another example's positive that is this example's own positive is not a negative.
    in_batch = (mapped @ passages[pos].T).masked_fill(pos.unsqueeze(0) == pos.unsqueeze(1), -1e4)
    logits = scale * torch.cat([own_logits, in_batch], dim=1)
    return torch.nn.functional.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long))


def _listwise_loss(q: Any, down: Any, up: Any, passages: Any, cand: Any, target: Any, scale: float) -> Any:
    """KL from the LM's distribution over each example's scored candidates to the retriever's."""
    import torch

    mapped = torch.nn.functional.normalize(q + (q @ down) @ up, dim=1)
    logits = scale * torch.einsum("bd,bkd->bk", mapped, passages[cand.clamp(min=0)])
    log_p = torch.log_softmax(logits.masked_fill(cand < 0, -1e4), dim=1)
    return torch.nn.functional.kl_div(log_p, target, reduction="batchmean")


def _lm_targets(examples: Sequence[ScoredExample], temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """Candidate ids (padded with -1) and softmax(LM score / temperature) over each example's candidates."""
    width = max(len(e.candidates) for e in examples)
    ids = np.full((len(examples), width), -1, dtype=np.int64)
    probs = np.zeros((len(examples), width), dtype=np.float32)
    for row, example in enumerate(examples):
        scores = np.asarray(example.scores, dtype=np.float64) / temperature
        weights = np.exp(scores - scores.max())
        ids[row, :len(scores)] = example.candidates
        probs[row, :len(scores)] = weights / weights.sum()
    return ids, probs


def train_prompt_adapter(queries: np.ndarray, passages: np.ndarray, targets: Sequence[Target],
                         examples: Sequence[ScoredExample], base_encoder: str, config: PromptTrainConfig,
                         log: Callable[[dict[str, float]], None] | None = None,
                         ) -> tuple[QueryAdapter, list[dict[str, float]]]:
    """Fit on all but a held-out ``dev_fraction`` of examples; keep the epoch with the best held-out
    :func:`choice_gain` (epoch 0, the plain encoder, counts too, so training never makes it worse there)."""
    import torch

    config.validate()
    if config.loss == "auto":
        raise ValueError('train_prompt_adapter trains one loss; the job resolves "auto" by training both')
    n = len(targets)
    if queries.shape[0] != n or len(examples) != n or n < 2:
        raise ValueError(f"need matching queries, targets and examples (n >= 2), got {queries.shape[0]}, {n}, "
                         f"{len(examples)}")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(n)
    n_dev = round(n * config.dev_fraction)
    dev_rows, train_rows = np.sort(order[:n_dev]), np.sort(order[n_dev:])
    width = max(len(t.negatives) for t in targets) if targets else 0
    neg = np.full((n, max(width, 1)), -1, dtype=np.int64)
    for i, t in enumerate(targets):
        neg[i, :len(t.negatives)] = t.negatives
    q_all = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    p_all = torch.from_numpy(np.ascontiguousarray(passages, dtype=np.float32))
    pos_all = torch.tensor([t.positive for t in targets], dtype=torch.long)
    neg_all = torch.from_numpy(neg)
    cand_ids, lm_probs = _lm_targets(examples, config.lm_temperature)
    cand_all, target_all = torch.from_numpy(cand_ids), torch.from_numpy(lm_probs)
    dim = queries.shape[1]
    down = torch.nn.Parameter(torch.randn(dim, config.rank) / math.sqrt(dim))
    up = torch.nn.Parameter(torch.zeros(config.rank, dim))
    optimizer = torch.optim.AdamW([down, up], lr=config.learning_rate, weight_decay=config.weight_decay)
    dev_examples = [examples[i] for i in dev_rows]

    def snapshot() -> QueryAdapter:
        return QueryAdapter(down.detach().numpy().copy(), up.detach().numpy().copy(), base_encoder)

    def dev_gain(adapter: QueryAdapter) -> float:
        return choice_gain(adapter, queries[dev_rows], passages, dev_examples)

    base = best = snapshot()
    best_gain, best_epoch = dev_gain(base), 0
    history: list[dict[str, float]] = [{"epoch": 0, "loss": math.nan, "dev_choice_gain": best_gain}]
    for epoch in range(1, config.epochs + 1):
        shuffled = train_rows[rng.permutation(len(train_rows))]
        total, batches = 0.0, 0
        for start in range(0, len(shuffled), config.batch_size):
            idx = torch.from_numpy(shuffled[start:start + config.batch_size])
            if config.loss == "listwise":
                loss = _listwise_loss(q_all[idx], down, up, p_all, cand_all[idx], target_all[idx], config.scale)
            else:
                loss = _batch_loss(q_all[idx], down, up, p_all, pos_all[idx], neg_all[idx], config.scale)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, batches = total + float(loss.detach()), batches + 1
        current = snapshot()
        gain = dev_gain(current) if n_dev else math.nan
        history.append({"epoch": epoch, "loss": total / max(batches, 1), "dev_choice_gain": gain})
        if log:
            log(history[-1])
        if not n_dev or gain > best_gain:
            best, best_gain, best_epoch = current, gain, epoch
    if n_dev and best_epoch and not beats_base(choice_gains(best, queries[dev_rows], passages, dev_examples),
                                                choice_gains(base, queries[dev_rows], passages, dev_examples),
                                                config.min_gain_z):
        best, best_epoch = base, 0
    history[best_epoch]["kept"] = 1.0
    return best, history
