"""Fine-tuning the bi-encoder on context→response pairs (``repliq train retriever``).

A plain loop rather than a trainer class, because resuming must be exact: the checkpoint holds the
trainable weights, optimizer, scheduler, torch RNG (dropout) and step, and the batch order is a pure
function of (seed, epoch), so a run killed at any point continues where its last checkpoint left off
and ends where an uninterrupted run would. Prefixes come from the base manifest and are applied here
exactly as :class:`retriever.encoder.Encoder` applies them (contexts are queries, responses passages).

The word-embedding matrix (96M of e5-small's 118M parameters) stays frozen by default: updating it
costs most of the step time on a CPU and the few thousand pairs we train on touch only a sliver of it.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.artifacts import now, package_versions
from core.atomic import atomic_directory, atomic_write_bytes, atomic_write_json, sha256_json
from core.job_configs import RetrieverTrainConfig
from core.models.manifest import ModelManifest
from core.train_checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from retriever.pairs import TrainPair, duplicate_free_batches, pairs_hash

StepCallback = Callable[[int, float], None]


class TrainRunMismatch(RuntimeError):
    """The work directory holds a checkpoint of a different run; the message says how to proceed."""


@dataclass(frozen=True)
class TrainResult:
    model_dir: Path
    manifest: ModelManifest
    report_path: Path
    plot_path: Path
    steps: int
    resumed_from: int


def _check_name(name: str) -> None:
    from core.models.registry import all_specs

    if name in all_specs():
        raise ValueError(f"{name!r} is a packaged model of the cache; give the fine-tuned model another name "
                         "(e.g. e5-small-ft) so the base is never overwritten")


def _load_model(base_dir: Path, config: RetrieverTrainConfig) -> tuple[Any, int, list[Any]]:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(config.seed)
    model = SentenceTransformer(str(base_dir), device="cpu", local_files_only=True)
    base_max_len = int(model.max_seq_length or 512)
    model.max_seq_length = config.max_seq_length
    if config.freeze_embeddings:
        model[0].auto_model.get_input_embeddings().weight.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    return model, base_max_len, trainable


def _optimizer(model: Any, config: RetrieverTrainConfig, total: int) -> tuple[Any, Any]:
    import torch
    from transformers import get_linear_schedule_with_warmup

    groups: dict[bool, list[Any]] = {True: [], False: []}  # biases and norms take no weight decay
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups[not (name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name)].append(param)
    optimizer = torch.optim.AdamW([{"params": groups[True], "weight_decay": config.weight_decay},
                                   {"params": groups[False], "weight_decay": 0.0}], lr=config.learning_rate)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(total * config.warmup_fraction), total)
    return optimizer, scheduler


def _save_checkpoint(work_dir: Path, model: Any, optimizer: Any, scheduler: Any, state: dict[str, Any]) -> None:
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    save_checkpoint(work_dir, weights, optimizer, scheduler, state)


def _load_checkpoint(work_dir: Path, run: dict[str, Any], model: Any, optimizer: Any,
                     scheduler: Any) -> dict[str, Any] | None:
    import torch

    found = load_checkpoint(work_dir, run, optimizer, scheduler, TrainRunMismatch, "training")
    if found is None:
        return None
    state, weights = found
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    return state


def _features(model: Any, pairs: Sequence[TrainPair], batch: list[int], prefixes: tuple[str, str]) -> list[Any]:
    query_prefix, passage_prefix = prefixes
    columns = [[query_prefix + pairs[i].query for i in batch], [passage_prefix + pairs[i].response for i in batch]]
    if all(pairs[i].negative for i in batch):
        columns.append([passage_prefix + str(pairs[i].negative) for i in batch])
    return [model.preprocess(column) for column in columns]


def in_batch_recall(model: Any, pairs: Sequence[TrainPair], prefixes: tuple[str, str], group: int = 10) -> float:
    """R@1 of ``group``: each query against the responses of its group of same-language held-out pairs."""
    hits = total = 0
    for language in sorted({p.language for p in pairs}):
        rows = [p for p in pairs if p.language == language]
        rows = rows[: len(rows) // group * group]
        if not rows:
            continue
        q = model.encode([prefixes[0] + p.query for p in rows], prompt="", normalize_embeddings=True)
        d = model.encode([prefixes[1] + p.response for p in rows], prompt="", normalize_embeddings=True)
        for start in range(0, len(rows), group):
            sims = q[start:start + group] @ d[start:start + group].T
            hits += int(np.sum(np.argmax(sims, axis=1) == np.arange(group)))
            total += group
    return hits / total if total else float("nan")


def _base_model(config: RetrieverTrainConfig, pairs: Sequence[TrainPair], models_dir: Path) -> tuple[Path, Any]:
    from core.models.registry import resolve
    from retriever.encoder import read_manifest

    config.validate()
    _check_name(config.name)
    if len(pairs) < 2:
        raise ValueError(f"need at least 2 training pairs, got {len(pairs)}")
    base_dir = resolve(config.base, models_dir)
    base = read_manifest(base_dir)
    if base.kind != "encoder":
        raise ValueError(f"base model {config.base!r} is a {base.kind}, not an encoder")
    return base_dir, base


class _Loop:
    """The optimisation steps of one run: each step updates ``state`` so a checkpoint can resume it exactly."""

    def __init__(self, model: Any, pairs: Sequence[TrainPair], config: RetrieverTrainConfig,
                 prefixes: tuple[str, str], trainable: Any, optimizer: Any, scheduler: Any, work_dir: Path) -> None:
        self.model, self.pairs, self.config, self.prefixes = model, pairs, config, prefixes
        self.trainable, self.optimizer, self.scheduler, self.work_dir = trainable, optimizer, scheduler, work_dir

    def run(self, state: dict[str, Any], total: int, per_epoch: int, show_progress: bool,
            callback: StepCallback | None) -> None:
        import torch
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
        from tqdm.auto import tqdm

        model, pairs, config, prefixes = self.model, self.pairs, self.config, self.prefixes
        optimizer, scheduler, work_dir, trainable = self.optimizer, self.scheduler, self.work_dir, self.trainable
        step = int(state["step"])
        loss_fn = MultipleNegativesRankingLoss(model, scale=config.scale)
        batches: dict[int, list[list[int]]] = {}
        model.train()
        started, seconds_before = time.monotonic(), state["train_seconds"]
        bar = tqdm(total=total, initial=step, disable=not show_progress, desc="train retriever", unit="step")
        while step < total:
            epoch, index = divmod(step, per_epoch)
            if epoch not in batches:
                batches = {epoch: duplicate_free_batches(pairs, config.batch_size, config.seed + epoch)}
            loss = loss_fn(_features(model, pairs, batches[epoch][index], prefixes), None)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            value = float(loss.detach())
            state.update(step=step, train_seconds=seconds_before + time.monotonic() - started,
                         pairs_seen=state["pairs_seen"] + len(batches[epoch][index]))
            state["window"].append(value)
            if step % config.log_every == 0 or step == total:
                state["history"].append({"step": step, "loss": float(np.mean(state["window"])),
                                         "lr": float(scheduler.get_last_lr()[0]), "seconds": state["train_seconds"]})
                state["window"] = []
            bar.update(1)
            bar.set_postfix(loss=f"{value:.3f}")
            if step % config.checkpoint_every == 0 and step < total:
                _save_checkpoint(work_dir, model, optimizer, scheduler, state)
            if callback:
                callback(step, value)
        bar.close()


def train_retriever(config: RetrieverTrainConfig, pairs: Sequence[TrainPair], models_dir: Path, work_dir: Path, *,
                    dev_pairs: Sequence[TrainPair] = (), resume: bool = True, show_progress: bool = True,
                    callback: StepCallback | None = None,
                    say: Callable[[str], None] | None = None) -> TrainResult:
    """Fine-tune ``config.base`` on ``pairs`` and publish the result as ``<models_dir>/<config.name>``.

    ``work_dir`` keeps the checkpoint (every ``checkpoint_every`` steps), the report and the loss plot;
    rerunning with the same config and pairs resumes from the checkpoint. ``dev_pairs`` (held-out dialogues)
    give a before/after R@1-of-10 recorded in the manifest. ``callback(step, loss)`` runs after each step.
    """
    import torch

    say = say or (lambda _message: None)
    base_dir, base = _base_model(config, pairs, models_dir)
    prefixes = (base.query_prefix, base.passage_prefix)
    per_epoch = len(duplicate_free_batches(pairs, config.batch_size, config.seed))
    if per_epoch == 0:
        raise ValueError("the pairs give no batch of two different responses; add more varied pairs")
    total = per_epoch * config.epochs if not config.max_steps else min(config.max_steps, per_epoch * config.epochs)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        shutil.rmtree(work_dir / CHECKPOINT, ignore_errors=True)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)

    run = {"config": config.identity(), "data_hash": pairs_hash(pairs), "base": base.short_id}
    model, base_max_len, trainable = _load_model(base_dir, config)
    optimizer, scheduler = _optimizer(model, config, total)
    state = _load_checkpoint(work_dir, run, model, optimizer, scheduler) or {
        "run": run, "step": 0, "history": [], "window": [], "train_seconds": 0.0, "pairs_seen": 0, "metrics": {}}
    resumed_from = int(state["step"])
    if resumed_from:
        say(f"resuming from step {resumed_from} of {total} ({work_dir / CHECKPOINT})")
    elif dev_pairs:
        model.eval()
        state["metrics"]["dev_r1_of_10_base"] = in_batch_recall(model, dev_pairs, prefixes)

    seconds_before = state["train_seconds"]
    loop = _Loop(model, pairs, config, prefixes, trainable, optimizer, scheduler, work_dir)
    loop.run(state, total, per_epoch, show_progress, callback)

    model.eval()
    metrics = dict(state["metrics"])
    if dev_pairs:
        metrics.update(dev_r1_of_10=in_batch_recall(model, dev_pairs, prefixes), dev_pairs=len(dev_pairs))
    losses = [entry["loss"] for entry in state["history"]]
    metrics.update(first_logged_loss=losses[0], final_loss=losses[-1])
    model.max_seq_length = base_max_len
    manifest = _publish(model, Path(models_dir) / config.name, config, base, pairs, metrics)
    report = {"run": run, "config": asdict(config), "model_dir": str(Path(models_dir) / config.name),
              "pairs": manifest.extra["pairs"], "hard_negatives": sum(bool(p.negative) for p in pairs),
              "steps": total, "steps_per_epoch": per_epoch, "resumed_from": resumed_from,
              "history": state["history"], "metrics": metrics, "versions": manifest.extra["versions"],
              "timings": {"train_seconds": state["train_seconds"],
                          "this_session_seconds": state["train_seconds"] - seconds_before,
                          "seconds_per_step": state["train_seconds"] / total,
                          "pairs_per_second": state["pairs_seen"] / max(state["train_seconds"], 1e-9)}}
    report_path, plot_path = work_dir / "training_report.json", work_dir / "loss_curve.png"
    atomic_write_json(report_path, report)
    atomic_write_bytes(plot_path, loss_curve_png(state["history"], f"{config.name} from {base.short_id}"))
    shutil.rmtree(work_dir / CHECKPOINT, ignore_errors=True)
    say(f"saved {config.name} to {models_dir}/{config.name} after {total} steps "
        f"({state['train_seconds']:.0f}s of training)")
    return TrainResult(Path(models_dir) / config.name, manifest, report_path, plot_path, total, resumed_from)


def _publish(model: Any, target: Path, config: RetrieverTrainConfig, base: ModelManifest,
             pairs: Sequence[TrainPair], metrics: dict[str, Any]) -> ModelManifest:
    """Write the model and its manifest into a scratch directory that replaces ``target`` only when complete."""
    from core.models.cache import weights_digest

    languages = {lang: sum(p.language == lang for p in pairs) for lang in sorted({p.language for p in pairs})}
    with atomic_directory(target) as scratch:
        model.save(str(scratch), create_model_card=False)
        manifest = ModelManifest(
            model_id=config.name, kind="encoder", source_package="repliq-finetune", source_version=base.short_id,
            weights_sha256=weights_digest(scratch), dim=base.dim or int(model.get_embedding_dimension()),
            query_prefix=base.query_prefix, passage_prefix=base.passage_prefix, languages=list(base.languages),
            license=base.license,
            extra={"base": base.short_id, "base_model_id": base.model_id, "training": asdict(config),
                   "config_hash": sha256_json(config.identity()), "data_hash": pairs_hash(pairs),
                   "pairs": languages, "metrics": metrics, "created_at": now(),
                   "versions": package_versions("torch", "sentence-transformers", "transformers", "repliq")})
        manifest.save(scratch)
        for path in (scratch, *scratch.rglob("*")):  # a shared cache must be readable by a service account
            path.chmod(0o755 if path.is_dir() else 0o644)
    return manifest


def loss_curve_png(history: Sequence[dict[str, float]], title: str) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], marker="o", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("MNRL loss (mean over log window)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
