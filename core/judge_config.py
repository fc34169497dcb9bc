"""The sensibleness judge's training config (`repliq train judge`), declared once on the ground floor.

Kept beside ``core/job_configs.py`` rather than inside it (that module is at its size limit); the CLI
builds its flags' defaults from these fields, as it does for every other job.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

JUDGE_POOLINGS = ("mean", "cls")


@dataclass(frozen=True)
class JudgeTrainConfig:
    """The cross-encoder and its optimisation. Every field but the bookkeeping ones changes the weights."""

    # Model-cache name (or directory) of the encoder whose weights the judge starts from; e5-small is
    # multilingual (MiniLM's tokenizer is English-only, so Russian would be split into characters).
    base: str = "e5-small"
    max_length: int = 128
    # The word embeddings and the lowest ``frozen_layers`` transformer layers stay frozen: on a shared CPU
    # a step through all 12 layers costs ~2.5x one through the top 4, and a few thousand pairs barely move them.
    frozen_layers: int = 8
    pooling: str = "mean"
    # Dialogue turns the judge reads before the reply (joined with the tokenizer's separator token).
    context_turns: int = 3
    epochs: int = 1
    # Contexts per optimiser step; each brings its gold reply and its negatives (4 rows by default).
    contexts_per_step: int = 4
    learning_rate: float = 5e-5
    head_learning_rate: float = 1e-3
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    # Soft target of a retrieved bank phrase: often an acceptable reply, so not a hard 0 (hard zeros on
    # retrieved phrases made the blender distrust relevance, docs/benchmarks.md "pool mix").
    retrieved_label: float = 0.3
    # Weight of the pairwise term: gold above each hard negative (same-corpus reply, random phrase).
    pairwise_weight: float = 1.0
    seed: int = 0
    threads: int = 1  # torch threads; on a busy 2-core machine one thread ran ~4x faster than two
    # Training minutes per invocation (0 = no limit); past it the run checkpoints and stops, the job judges
    # what it has, and the same command resumes. The shared CPU's heavy-job slot is 30 minutes.
    max_minutes: float = 0.0
    checkpoint_every: int = 50
    log_every: int = 10

    def identity(self) -> dict[str, Any]:
        """The fields that change the trained weights; a checkpoint resumes only under the same ones."""
        return {k: v for k, v in asdict(self).items()
                if k not in ("threads", "checkpoint_every", "log_every", "max_minutes")}

    def validate(self) -> None:
        problems = [f"{name} must be >= 1" for name in ("max_length", "context_turns", "epochs", "contexts_per_step",
                                                          "checkpoint_every", "log_every", "threads")
                    if getattr(self, name) < 1]
        if self.frozen_layers < 0 or self.max_minutes < 0:
            problems.append("frozen_layers and max_minutes must be >= 0")
        if self.pooling not in JUDGE_POOLINGS:
            problems.append(f"pooling must be one of {', '.join(JUDGE_POOLINGS)}, got {self.pooling!r}")
        if self.learning_rate <= 0 or self.head_learning_rate <= 0:
            problems.append("learning rates must be positive")
        if not 0.0 <= self.warmup_fraction < 1.0:
            problems.append("warmup_fraction must be in [0, 1)")
        if not 0.0 <= self.retrieved_label < 1.0:
            problems.append("retrieved_label must be in [0, 1): a retrieved phrase is never surer than the gold")
        if self.pairwise_weight < 0:
            problems.append("pairwise_weight must be >= 0")
        if problems:
            raise ValueError("invalid judge training config: " + "; ".join(problems))


@dataclass
class JudgeJobConfig:
    """`repliq train judge`: which dialogues (train splits to learn, dev splits to judge), pools and output."""

    russian: Path | None = None  # Koziev anekdot dialogues (.tar.xz); without them the judge is English-only
    topicalchat: Path | None = None  # folder with Topical-Chat valid_freq/valid_rare.json
    convai2: Path | None = None  # folder with ConvAI2 data_*.json (human replies only are gold)
    chitchat_conversations: int = 3000  # chitchat-dataset conversations read (0 = none)
    russian_conversations: int = 20000
    # Train contexts per language (English mixes its corpora evenly); dev contexts per language for the AUCs.
    train_contexts: int = 500
    dev_contexts: int = 200
    # Negatives per context: same-corpus replies of other dialogues, top retrieved bank phrases (one of the
    # top ``retrieved_pool`` drawn), random bank phrases of the language.
    corpus_negatives: int = 1
    retrieved_negatives: int = 1
    random_negatives: int = 1
    retrieved_pool: int = 5
    # None: <home>/artifacts/judge (report in judge-report/, checkpoint in judge-work/).
    out: Path | None = None
    # A relevance model to compare with on the same dev pools; None: the workspace's, else one fitted here
    # on the judge's own train contexts.
    relevance: Path | None = None
    train: JudgeTrainConfig = field(default_factory=JudgeTrainConfig)

    def validate(self) -> None:
        self.train.validate()
        counts = ("chitchat_conversations", "russian_conversations", "corpus_negatives", "retrieved_negatives",
                  "random_negatives")
        problems = [f"{name} must be >= 0" for name in counts if getattr(self, name) < 0]
        problems += [f"{name} must be >= 1" for name in ("train_contexts", "dev_contexts", "retrieved_pool")
                     if getattr(self, name) < 1]
        if self.corpus_negatives + self.retrieved_negatives + self.random_negatives < 1:
            problems.append("need at least one negative per context")
        if problems:
            raise ValueError("invalid `repliq train judge` config: " + "; ".join(problems))
