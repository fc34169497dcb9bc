"""The sensibleness judge: a cross-encoder that reads context and reply together and says whether the reply fits.

The relevance reward (``rl.relevance``) compares two separately computed embeddings, so it sees topic
overlap but not whether a reply *answers*: it cannot tell the gold reply from a plausible reply of another
dialogue of the same corpus (AUC ≈ 0.5, docs/benchmarks.md). A cross-encoder attends across the pair,
which is what that distinction needs. It is a reward and an offline judge, not a serving feature: a pair
costs a full transformer pass (latency measured by `repliq train judge`).

The network is the base encoder (BertModel from the model cache, e5-small by default) run on
``"<turn> [SEP] <turn> [SEP] <last turn>" [SEP] "<reply>"``, pooled (mean or [CLS]), and one linear head
giving a logit. Only what training changed is saved (the top layers and the head, as ``weights.npz``
through ``rl.artifacts``); the frozen rest is read back from the base model, whose identity the
manifest records as lineage, so a judge is refused on any other base weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from core.artifacts import read_json
from core.judge_config import JudgeTrainConfig
from core.types import Context
from rl.artifacts import RewardModelError, load_artifact, save_artifact

KIND = "sensibleness-judge"
HEAD = "head."
ENCODER = "encoder."


def base_identity(model_dir: Path) -> str:
    """The base encoder's ``model_id@weights-hash`` (what the judge's lineage records)."""
    from retriever.encoder import read_manifest

    return read_manifest(Path(model_dir)).short_id


class SensiblenessJudge:
    """P(reply is a sensible answer to context); :meth:`score` is the batched, cache-free API."""

    def __init__(self, encoder: Any, tokenizer: Any, head: Any, config: JudgeTrainConfig, base: str,
                 manifest: dict[str, Any] | None = None) -> None:
        self.encoder, self.tokenizer, self.head = encoder, tokenizer, head
        self.config, self.base, self.manifest = config, base, manifest or {}

    # ---- construction ------------------------------------------------------------------------------

    @classmethod
    def from_base(cls, config: JudgeTrainConfig, models_dir: Path) -> SensiblenessJudge:
        """A fresh judge: the base encoder's weights, a small random head, lower layers frozen."""
        import torch
        from transformers import AutoModel, AutoTokenizer

        from core.models.registry import resolve

        config.validate()
        base_dir = resolve(config.base, Path(models_dir))
        torch.manual_seed(config.seed)
        encoder = AutoModel.from_pretrained(str(base_dir), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(base_dir), local_files_only=True)
        tokenizer.truncation_side = "left"  # keep the last turns and the reply, drop the oldest words
        head = torch.nn.Linear(encoder.config.hidden_size, 1)
        torch.nn.init.normal_(head.weight, std=0.02)
        torch.nn.init.zeros_(head.bias)
        judge = cls(encoder, tokenizer, head, config, base_identity(base_dir))
        judge._freeze()
        return judge

    def _freeze(self) -> None:
        for param in self.encoder.parameters():
            param.requires_grad_(False)
        layers = self.encoder.encoder.layer
        for layer in layers[min(self.config.frozen_layers, len(layers)):]:
            layer.requires_grad_(True)

    def trainable(self) -> list[Any]:
        return [p for p in self.encoder.parameters() if p.requires_grad] + list(self.head.parameters())

    def named_trainable(self) -> dict[str, Any]:
        named = {ENCODER + n: p for n, p in self.encoder.named_parameters() if p.requires_grad}
        return {**named, **{HEAD + n: p for n, p in self.head.named_parameters()}}

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: p.detach().cpu().numpy().copy() for name, p in self.named_trainable().items()}

    def load_arrays(self, arrays: dict[str, np.ndarray], where: Path | str) -> None:
        import torch

        own = self.named_trainable()
        if set(own) != set(arrays):
            raise RewardModelError(f"{where} holds weights for other layers than this config trains "
                                   f"({len(arrays)} arrays, expected {len(own)}); rebuild it with "
                                   "`repliq train judge`")
        with torch.no_grad():
            for name, param in own.items():
                param.copy_(torch.from_numpy(np.asarray(arrays[name], dtype=np.float32)))

    # ---- scoring -----------------------------------------------------------------------------------

    def context_text(self, context: Context | str) -> str:
        if isinstance(context, str):
            return context
        separator = f" {self.tokenizer.sep_token or '|'} "
        return separator.join(t.text for t in context.window(self.config.context_turns).turns)

    def batch(self, contexts: Sequence[Context | str], replies: Sequence[str]) -> dict[str, Any]:
        return dict(self.tokenizer([self.context_text(c) for c in contexts], list(replies), truncation=True,
                                   max_length=self.config.max_length, padding=True, return_tensors="pt"))

    def logits(self, batch: dict[str, Any]) -> Any:
        """One logit per row of a tokenized batch (grad flows when the model is in training)."""
        hidden = self.encoder(**batch).last_hidden_state
        if self.config.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return self.head(pooled)[:, 0]

    def score_logits(self, contexts: Sequence[Context | str], replies: Sequence[str],
                     batch_size: int = 32) -> np.ndarray:
        """Logits for (contexts[i], replies[i]); rows are batched by length so padding stays small."""
        import torch

        if len(contexts) != len(replies):
            raise ValueError(f"got {len(contexts)} contexts for {len(replies)} replies")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not replies:
            return np.zeros(0)
        texts = [self.context_text(c) for c in contexts]
        order = np.argsort([len(t) + len(r) for t, r in zip(texts, replies, strict=True)], kind="stable")
        out = np.zeros(len(replies))
        was_training = self.encoder.training
        self.encoder.eval()
        try:
            with torch.inference_mode():
                for start in range(0, len(order), batch_size):
                    rows = order[start:start + batch_size]
                    batch = self.batch([texts[i] for i in rows], [replies[i] for i in rows])
                    out[rows] = self.logits(batch).double().numpy()
        finally:
            self.encoder.train(was_training)
        return out

    def score(self, contexts: Sequence[Context | str], replies: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """P(sensible) in (0, 1) for each (contexts[i], replies[i]); no encoder cache, no embeddings needed."""
        return 1.0 / (1.0 + np.exp(-self.score_logits(contexts, replies, batch_size)))

    __call__ = score

    # ---- artifact ----------------------------------------------------------------------------------

    def save(self, out_dir: Path, *, data_sha256: str, metrics: dict[str, Any]) -> dict[str, Any]:
        """Trained arrays + manifest (lineage: the base encoder) in one atomic directory swap."""
        self.manifest = save_artifact(Path(out_dir), KIND, self.arrays(), config=asdict(self.config),
                                      encoder=self.base, data_sha256=data_sha256, metrics=metrics)
        return self.manifest

    @classmethod
    def load(cls, directory: Path, models_dir: Path) -> SensiblenessJudge:
        """A saved judge on its base encoder; refused (with the rebuild command) when the base changed."""
        from core.models.registry import resolve

        directory = Path(directory)
        manifest = read_json(directory / "manifest.json", KIND)
        try:
            config = JudgeTrainConfig(**manifest.get("config", {}))
        except TypeError as exc:
            raise RewardModelError(f"{directory} has a judge config this repliq does not know ({exc}); "
                                   "rebuild it with `repliq train judge`") from exc
        base_dir = resolve(config.base, Path(models_dir))
        manifest, arrays = load_artifact(directory, KIND, base_identity(base_dir))
        judge = cls.from_base(config, models_dir)
        judge.load_arrays(arrays, directory)
        judge.manifest = manifest
        judge.encoder.eval()
        return judge


def load_judge(directory: Path, models_dir: Path) -> SensiblenessJudge:
    """``SensiblenessJudge.load``: the entry point for rl/ callers (RL judging, reports)."""
    return SensiblenessJudge.load(directory, models_dir)
