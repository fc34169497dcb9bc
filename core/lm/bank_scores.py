"""Unconditional LM scores for every approved bank phrase, stored in the bank's ``lm_scores`` table.

Scoring a large bank takes a while on a CPU, so the job is resumable: each batch is committed on its
own, and a rerun skips every phrase whose (id, version) already has a score from the same ``lm_id``.
After an interruption (even ``kill -9``) a rerun therefore finishes the rest, and after edits it
rescores only the phrases that changed. At request time the stored scores give the unconditional
side of PMI without running the LM over bank candidates twice.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from sqlite3 import Connection
from typing import Protocol

from core.executor import BatchFn, Executor, LocalExecutor
from core.lm.scoring import LMScore, score_texts
from core.lm.wrapper import AnyLM, LMSpec, NullLM


class ScoredPhrase(Protocol):
    id: int
    text: str
    version: int


class ScoringBank(Protocol):
    """The part of ``core.bank.store.PhraseBank`` this job uses."""

    def phrases(self, *, status: str | None = None, language: str | None = None) -> Sequence[ScoredPhrase]: ...

    def connect(self, *, write: bool = False) -> AbstractContextManager[Connection]: ...


@dataclass(frozen=True)
class BankScoreReport:
    lm_id: str
    approved: int
    already_scored: int
    scored: int
    seconds: float

    def summary(self) -> str:
        rate = self.scored / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.lm_id}: scored {self.scored} phrases in {self.seconds:.1f} s ({rate:.1f}/s); "
                f"{self.already_scored} of {self.approved} approved phrases were already up to date")


_UPSERT = (
    "INSERT INTO lm_scores (phrase_id, phrase_version, lm_id, sum_logprob, mean_logprob, n_tokens, scored_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (phrase_id, lm_id) DO UPDATE SET "
    "phrase_version = excluded.phrase_version, sum_logprob = excluded.sum_logprob, "
    "mean_logprob = excluded.mean_logprob, n_tokens = excluded.n_tokens, scored_at = excluded.scored_at"
)


def _stored_versions(bank: ScoringBank, lm_id: str) -> set[tuple[int, int]]:
    with bank.connect() as conn:
        rows = conn.execute("SELECT phrase_id, phrase_version FROM lm_scores WHERE lm_id = ?", (lm_id,))
        return {(int(pid), int(version)) for pid, version in rows}


@dataclass(frozen=True)
class TextScorer:
    """Worker factory for ``core.executor``: each worker loads the LM once, then scores batches of texts."""

    spec: LMSpec
    batch_size: int

    def __call__(self) -> BatchFn:
        lm = self.spec.load()
        return lambda texts: score_texts(lm, texts, batch_size=self.batch_size)


def score_bank(bank: ScoringBank, lm: AnyLM | LMSpec, batch_size: int = 32, progress: bool = True,
               executor: Executor | None = None) -> BankScoreReport:
    """Score approved phrases that have no score for this LM at their current version.

    ``lm`` is a loaded LM (scored in this process) or, for an executor whose workers load their own copy
    (Ray), its ``LMSpec``. Each batch is committed as its scores arrive, whichever worker computed them.
    """
    from tqdm import tqdm

    if isinstance(lm, NullLM):
        lm.require("bank scoring")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if isinstance(lm, LMSpec) or (executor is not None and executor.name != "local"):
        # Workers elsewhere load their own copy; a loaded model is never shipped to them.
        factory = TextScorer(lm if isinstance(lm, LMSpec) else lm.spec(), batch_size)
    else:
        loaded = lm
        factory = lambda: lambda texts: score_texts(loaded, texts, batch_size=batch_size)  # noqa: E731
    started = time.monotonic()
    approved = list(bank.phrases(status="approved"))
    stored = _stored_versions(bank, lm.lm_id)
    todo = [p for p in approved if (p.id, p.version) not in stored]
    # Similar lengths in one batch waste less compute on padding.
    todo.sort(key=lambda p: len(p.text))
    batches = [todo[start : start + batch_size] for start in range(0, len(todo), batch_size)]
    texts = [[p.text for p in batch] for batch in batches]
    with tqdm(total=len(todo), unit="phrase", disable=not progress, desc=f"LM scores ({lm.lm_id})") as bar:
        for index, scores in (executor or LocalExecutor()).map(factory, texts):
            batch = batches[index]
            now = datetime.now(UTC).isoformat(timespec="seconds")
            with bank.connect(write=True) as conn:
                conn.executemany(_UPSERT, [
                    (p.id, p.version, lm.lm_id, s.sum_logprob, s.mean_logprob, s.n_tokens, now)
                    for p, s in zip(batch, scores, strict=True)
                ])
            bar.update(len(batch))
    return BankScoreReport(lm_id=lm.lm_id, approved=len(approved), already_scored=len(approved) - len(todo),
                           scored=len(todo), seconds=time.monotonic() - started)


def load_bank_scores(bank: ScoringBank, lm_id: str) -> dict[int, LMScore]:
    """Scores of ``lm_id`` for phrases whose stored version is their current one.

    A score of an older text is left out rather than returned: it describes words the phrase no
    longer has. Run ``score_bank`` to fill the gaps.
    """
    with bank.connect() as conn:
        rows = conn.execute(
            "SELECT s.phrase_id, s.sum_logprob, s.mean_logprob, s.n_tokens FROM lm_scores s "
            "JOIN phrases p ON p.id = s.phrase_id AND p.version = s.phrase_version WHERE s.lm_id = ?",
            (lm_id,),
        ).fetchall()
    return {int(pid): LMScore(float(total), float(mean), int(n)) for pid, total, mean, n in rows}
