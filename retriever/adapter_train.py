"""Training the query adapter on frozen, cached embeddings (nanoGPT-style: one straight loop).

Because the encoder is frozen, each (context, reply) pair is encoded once and training is a few seconds
of matrix work, so the adapter can afford every pair the training splits hold, where a full fine-tune
on this CPU sees a few thousand. The loss is the in-batch softmax of MultipleNegativesRankingLoss: each
context's own reply against the other replies of the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from core.job_configs import AdapterTrainConfig
from retriever.adapter import QueryAdapter


def recall_at_1(queries: np.ndarray, passages: np.ndarray, group: int, seed: int = 0) -> float:
    """R@1 of the gold passage among ``group - 1`` random other passages (the project's R@1/10 protocol)."""
    n = len(queries)
    if n < group:
        raise ValueError(f"need at least {group} dev pairs for R@1/{group}, got {n}")
    rng = np.random.default_rng(seed)
    hits = 0
    for i in range(n):
        others = rng.choice(np.delete(np.arange(n), i), size=group - 1, replace=False)
        scores = passages[np.concatenate([[i], others])] @ queries[i]
        hits += int(np.argmax(scores) == 0)
    return hits / n


def train_adapter(queries: np.ndarray, passages: np.ndarray, base_encoder: str, config: AdapterTrainConfig,
                  dev: tuple[np.ndarray, np.ndarray] | None = None,
                  log: Callable[[dict[str, float]], None] | None = None) -> tuple[QueryAdapter, list[dict[str, float]]]:
    """Fit the low-rank residual map; keeps the epoch with the best dev R@1 (the untrained map counts too)."""
    import torch

    config.validate()
    if queries.shape != passages.shape or queries.ndim != 2 or len(queries) < 2:
        raise ValueError(f"need matching (n >= 2, dim) query and passage rows, "
                         f"got {queries.shape} and {passages.shape}")
    torch.manual_seed(config.seed)
    dim = queries.shape[1]
    q_all = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    p_all = torch.from_numpy(np.ascontiguousarray(passages, dtype=np.float32))
    down = torch.nn.Parameter(torch.randn(dim, config.rank) / math.sqrt(dim))
    up = torch.nn.Parameter(torch.zeros(config.rank, dim))
    optimizer = torch.optim.AdamW([down, up], lr=config.learning_rate, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)

    def snapshot() -> QueryAdapter:
        return QueryAdapter(down=down.detach().numpy().copy(), up=up.detach().numpy().copy(), base_encoder=base_encoder)

    def dev_r1(adapter: QueryAdapter) -> float:
        if dev is None:
            return math.nan
        return recall_at_1(adapter.apply(dev[0]), dev[1], config.dev_group, config.seed)

    best, best_r1 = snapshot(), dev_r1(snapshot())
    history: list[dict[str, float]] = [{"epoch": 0, "loss": math.nan, "dev_r_at_1": best_r1}]
    if log:
        log(history[-1])
    for epoch in range(1, config.epochs + 1):
        order = torch.randperm(len(q_all), generator=generator)
        total, batches = 0.0, 0
        for start in range(0, len(order) - 1, config.batch_size):
            idx = order[start:start + config.batch_size]
            if len(idx) < 2:
                continue
            q = q_all[idx]
            mapped = torch.nn.functional.normalize(q + (q @ down) @ up, dim=1)
            logits = config.scale * mapped @ p_all[idx].T
            loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(idx)))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, batches = total + float(loss.detach()), batches + 1
        current = snapshot()
        r1 = dev_r1(current)
        history.append({"epoch": epoch, "loss": total / max(batches, 1), "dev_r_at_1": r1})
        if log:
            log(history[-1])
        if dev is None or r1 > best_r1:
            best, best_r1 = current, r1
    return best, history
