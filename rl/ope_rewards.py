"""Reward-model scores of logged candidates: the ``model`` reward of off-policy evaluation and the input of its
direct-method term.

The reward model is the RL reward of :mod:`rl.rewards` (relevance gates specificity) over the workspace's
trained heads (``reward-relevance`` and ``reward-specificity``). It reads each decision's dialogue, so it
needs logs written with ``[logging] log_user_text = true``; a log without the turns is refused, never
scored on a guess. Standardization is fitted on the logged candidates themselves (every candidate of every
decision), so a ``total`` of 0 means "as good as the average candidate serving considered".

Two uses in ``dialog/jobs/eval_offpolicy.py``:

- ``--reward model``: the reward of decision i is the model's ``total`` for the candidate served there;
- doubly robust: the direct-method regression r̂ gets the model's columns (relevance, specificity,
  total) beside the logged blender features, so a reward model that tracks the users' reward lowers
  DR's variance and covers candidates the logging policy never tried.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from core.types import Context, Turn

if TYPE_CHECKING:
    from core.config import Settings
    from rl.rewards import RewardModel

COLUMNS = ("relevance", "specificity_z", "total")
TRAIN_HINT = ("train them with `repliq train reward --kind relevance --russian FILE` and "
              "`repliq train reward --kind specificity`")


class CandidateScorer(Protocol):
    """Scores (context, candidate) rows; ``columns`` name the output's columns, ``total`` among them."""

    columns: tuple[str, ...]
    identity: str

    def score(self, contexts: Sequence[Context], texts: Sequence[str], languages: Sequence[str]) -> np.ndarray: ...


class RewardModelScorer:
    """:class:`rl.rewards.RewardModel` as a :class:`CandidateScorer` (relevance, specificity z, total)."""

    columns = COLUMNS

    def __init__(self, model: RewardModel, identity: str) -> None:
        self.model, self.identity = model, identity

    def score(self, contexts: Sequence[Context], texts: Sequence[str], languages: Sequence[str]) -> np.ndarray:
        if not self.model.standardizers:
            self.model.fit_reference(contexts, texts, languages)
        parts = self.model.rewards(contexts, texts, languages)
        return np.column_stack([parts.relevance, parts.specificity, parts.total])


def record_context(record: Mapping[str, Any]) -> Context:
    turns = record.get("context")
    if not turns:
        raise ValueError(f"decision {record.get('request_id')!r} has no context turns: the log was written with "
                         "[logging] log_user_text = false, so no reward model can score it; use --reward feedback "
                         "or ssa with --reward-model none, or log user text")
    return Context(tuple(Turn(t["speaker"], t["text"]) for t in turns))


def candidate_scores(records: Sequence[Mapping[str, Any]], scorer: CandidateScorer) -> list[np.ndarray]:
    """Per decision, a (candidates, columns) matrix of the scorer's output, in the logged candidate order."""
    contexts, texts, languages, sizes = [], [], [], []
    for record in records:
        context = record_context(record)
        for cand in record["candidates"]:
            contexts.append(context)
            texts.append(cand["text"])
            languages.append(record["language"])
        sizes.append(len(record["candidates"]))
    if "total" not in scorer.columns:
        raise ValueError(f"reward scorer columns {scorer.columns} lack 'total'")
    flat = np.asarray(scorer.score(contexts, texts, languages), dtype=np.float64).reshape(len(texts), -1)
    if flat.shape[1] != len(scorer.columns) or not np.isfinite(flat).all():
        raise ValueError(f"reward scorer {scorer.identity} returned shape {flat.shape} or non-finite values for "
                         f"{len(texts)} candidates x {len(scorer.columns)} columns")
    return np.split(flat, np.cumsum(sizes)[:-1])


def model_rewards(records: Sequence[Mapping[str, Any]], scores: Sequence[np.ndarray],
                  columns: Sequence[str] = COLUMNS) -> dict[str, float]:
    """Request id -> the reward model's ``total`` for the candidate that was served."""
    col = list(columns).index("total")
    return {r["request_id"]: float(s[r["chosen"], col]) for r, s in zip(records, scores, strict=True)}


def workspace_reward_scorer(settings: Settings) -> RewardModelScorer:
    """The workspace's relevance and specificity heads as one reward (the one `repliq rl tune` tunes against)."""
    from core.bank.store import PhraseBank
    from core.job_configs import RewardConfig
    from retriever.encoder import Encoder
    from retriever.encoder_cache import index_backed_encoder
    from rl.blender_setup import SPECIFICITY_DIR
    from rl.proxy import load_specificity_proxy
    from rl.relevance import load_relevance_model
    from rl.rewards import RewardModel, proxy_specificity

    relevance_dir = settings.artifacts_dir / "reward-relevance"
    specificity_dir = settings.artifacts_dir / SPECIFICITY_DIR
    missing = [str(d) for d in (relevance_dir, specificity_dir) if not d.is_dir()]
    if missing:
        raise FileNotFoundError(f"no reward model in {', '.join(missing)}; {TRAIN_HINT}")
    with PhraseBank(settings.bank_path) as bank:
        encoder = index_backed_encoder(settings, Encoder.from_config(settings), bank)
    proxy = load_specificity_proxy(specificity_dir, encoder)
    relevance = load_relevance_model(relevance_dir, encoder)
    digest = str(relevance.manifest.get("weights_sha256") or relevance.manifest.get("identity") or "?")
    identity = f"relevance@{digest[:12]}+{proxy.identity}"
    return RewardModelScorer(RewardModel(relevance, proxy_specificity(proxy), RewardConfig()), identity)
