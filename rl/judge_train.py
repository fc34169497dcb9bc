"""Fine-tuning the sensibleness judge: one plain loop that a kill cannot lose more than a checkpoint of.

Loss per group (one context, its gold and its negatives): binary cross-entropy against the labels (1 for
the gold, the soft ``retrieved_label`` for retrieved bank phrases, 0 for the rest) plus a pairwise term,
softplus(s_neg − s_gold) for each hard negative, which is what an AUC rewards. Retrieved phrases get no
pairwise term: many are fine replies, and forcing them below the gold is what hard zeros did to the
blender.

Resuming is exact: the checkpoint holds the trainable weights, optimiser, schedule, torch RNG (dropout)
and step, and the batch order is a pure function of (seed, epoch); a checkpoint of another run (other
config, data or base) is refused rather than mixed in.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import sha256_json
from core.train_checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from rl.judge import SensiblenessJudge
from rl.judge_data import JudgeGroup, groups_fingerprint

HARD_NEGATIVES = ("corpus", "random")


class JudgeRunMismatch(RuntimeError):
    """The work directory holds a checkpoint of another run; the message says what to do."""


def run_identity(judge: SensiblenessJudge, groups: Sequence[JudgeGroup]) -> dict[str, Any]:
    return {"config": judge.config.identity(), "data": sha256_json(groups_fingerprint(groups)), "base": judge.base}


def group_loss(logits: Any, groups: Sequence[JudgeGroup], pairwise_weight: float) -> Any:
    """Mean over groups of BCE(labels) + pairwise_weight · mean softplus(s_hard_negative − s_gold)."""
    import torch
    import torch.nn.functional as F

    losses, start = [], 0
    for group in groups:
        s = logits[start:start + len(group.texts)]
        start += len(group.texts)
        labels = torch.tensor(group.labels, dtype=s.dtype)
        loss = F.binary_cross_entropy_with_logits(s, labels)
        hard = [i for i, k in enumerate(group.kinds) if k in HARD_NEGATIVES]
        gold = [i for i, k in enumerate(group.kinds) if k == "gold"]
        if hard and gold and pairwise_weight > 0:
            loss = loss + pairwise_weight * F.softplus(s[hard] - s[gold[0]]).mean()
        losses.append(loss)
    return torch.stack(losses).mean()


def _optimizer(judge: SensiblenessJudge, total: int) -> tuple[Any, Any]:
    import torch

    config = judge.config
    head = list(judge.head.parameters())
    body = [p for p in judge.trainable() if all(p is not h for h in head)]
    groups = [{"params": head, "lr": config.head_learning_rate, "weight_decay": 0.0}]
    if body:
        groups.append({"params": body, "lr": config.learning_rate, "weight_decay": config.weight_decay})
    optimizer = torch.optim.AdamW(groups)
    warmup = max(1, int(total * config.warmup_fraction))

    def factor(step: int) -> float:
        return (step + 1) / warmup if step < warmup else max(0.0, (total - step) / max(1, total - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _save(work_dir: Path, judge: SensiblenessJudge, optimizer: Any, scheduler: Any, state: dict[str, Any]) -> None:
    weights = {n: p.detach().clone() for n, p in judge.named_trainable().items()}
    save_checkpoint(work_dir, weights, optimizer, scheduler, state)


def _load(work_dir: Path, run: dict[str, Any], judge: SensiblenessJudge, optimizer: Any,
          scheduler: Any) -> dict[str, Any] | None:
    found = load_checkpoint(work_dir, run, optimizer, scheduler, JudgeRunMismatch, "judge")
    if found is None:
        return None
    state, weights = found
    judge.load_arrays({n: t.numpy() for n, t in weights.items()}, Path(work_dir) / CHECKPOINT)
    return state


def train_judge(judge: SensiblenessJudge, groups: Sequence[JudgeGroup], work_dir: Path, *, resume: bool = True,
                max_steps: int | None = None, progress: Callable[[int, int, float], None] | None = None,
                say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train in place; returns the run state (history of mean losses, steps, seconds, resumed_from).

    ``max_steps`` stops early (tests use it to simulate a kill); ``progress(step, total, loss)`` after each step.
    ``config.max_minutes`` (> 0) stops this invocation after that much training time, with a checkpoint, so a
    job fits a shared machine's time slot; ``state["stopped_early"]`` says so and a rerun resumes.
    """
    import torch

    config = judge.config
    if not groups:
        raise ValueError("no training groups: the train split gave no usable (context, reply) pairs")
    torch.set_num_threads(config.threads)
    per_epoch = math.ceil(len(groups) / config.contexts_per_step)
    total = per_epoch * config.epochs
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        shutil.rmtree(work_dir / CHECKPOINT, ignore_errors=True)
    run = run_identity(judge, groups)
    optimizer, scheduler = _optimizer(judge, total)
    state = _load(work_dir, run, judge, optimizer, scheduler) or {
        "run": run, "step": 0, "total": total, "history": [], "window": [], "train_seconds": 0.0}
    state["resumed_from"] = int(state["step"])
    if state["resumed_from"] and say:
        say(f"resuming the judge from step {state['resumed_from']} of {total} ({work_dir / CHECKPOINT})")
    judge.encoder.train()
    started, before = time.monotonic(), float(state["train_seconds"])
    stop = total if max_steps is None else min(total, max_steps)
    order: dict[int, np.ndarray] = {}
    budget = config.max_minutes * 60.0 if config.max_minutes > 0 else float("inf")
    state["stopped_early"] = False
    while state["step"] < stop:
        if time.monotonic() - started > budget:
            state["stopped_early"] = True
            _save(work_dir, judge, optimizer, scheduler, state)
            if say:
                say(f"judge training stopped at step {state['step']} of {total}: the {config.max_minutes} min budget "
                    "is spent; rerun the same command to resume")
            break
        epoch, index = divmod(int(state["step"]), per_epoch)
        if epoch not in order:
            order = {epoch: np.random.default_rng(config.seed + epoch).permutation(len(groups))}
        size = config.contexts_per_step
        rows = [groups[i] for i in order[epoch][index * size:(index + 1) * size]]
        batch = judge.batch([g.context for g in rows for _ in g.texts], [t for g in rows for t in g.texts])
        loss = group_loss(judge.logits(batch), rows, config.pairwise_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(judge.trainable(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        value = float(loss.detach())
        state["step"] += 1
        state["window"].append(value)
        state["train_seconds"] = before + time.monotonic() - started
        if state["step"] % config.log_every == 0 or state["step"] == total:
            state["history"].append({"step": state["step"], "loss": float(np.mean(state["window"])),
                                     "seconds": state["train_seconds"]})
            state["window"] = []
        if state["step"] % config.checkpoint_every == 0 or state["step"] == stop:
            _save(work_dir, judge, optimizer, scheduler, state)
        if progress:
            progress(int(state["step"]), total, value)
    judge.encoder.eval()
    return state
