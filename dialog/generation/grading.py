"""Graded labels for generated candidates: the teacher LM's PMI decides whether one beat what the bank offered.

With gold-only labels every generated reply is a negative, so a blender retrained on pools holding them
learns "generated never wins" (docs/benchmarks.md, bench_generated_pools). To learn *when* one should win
it needs generated replies labelled above the ordinary negatives when they deserve it. People are not
available for thousands of them, so the grade is automatic, from the teacher LM (the same LM that
generates, ``[lm] name``):

* the gold reply is the human's answer and stays on top: label ``gold_label`` (2);
* a generated reply gets ``generated_label`` (1) when its PMI (conditional minus unconditional mean
  log-prob per token, ``core.lm.scoring``) beats, by ``margin``, the PMI of *every* one of the bank's top
  ``against`` retrieved phrases for that context, the stand-in for what serving would offer without
  generation; otherwise 0, like every other negative.

Why PMI and why against the retrieved phrases: PMI is how much the dialogue raises the reply's
probability, so generic replies ("ok", "I don't know") score near zero and replies that answer *this*
dialogue score high; it separated gold from plausible replies far better than the sensibleness judge
(bench_judge_signals, AUC 0.68-0.83). Beating the bank's best retrieved phrase is the decision serving
faces: a generated reply is worth serving only where it is better than the bank's best offer.
Comparing with the gold instead would almost never grade a generated reply up, and an absolute PMI
threshold would not adapt to how well the bank covers the context.

Cost: only contexts whose pools hold generated replies are scored (the retrieved phrases, the generated
replies; conditional and unconditional), and unconditional scores the bank already stores for this LM
(``repliq bank score``) are reused. Groups with human labels keep them untouched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from core.lm.scoring import LMScore, score_pairs, score_texts
from core.lm.wrapper import AnyLM
from core.types import Candidate, Context

log = logging.getLogger(__name__)

GRADE_RULES = ("pmi", "none")
RetrieveFn = Callable[[list[Context], str, int], list[list[Candidate]]]


@dataclass(frozen=True)
class GradeConfig:
    rule: str = "pmi"  # "pmi" (the rule in the module docstring) or "none" (gold-only labels)
    against: int = 10  # the bank's top retrieved phrases a generated reply must beat
    margin: float = 0.0  # nats per token of PMI above the best retrieved phrase's
    gold_label: float = 2.0
    generated_label: float = 1.0
    batch_size: int = 16

    def validate(self) -> None:
        if self.rule not in GRADE_RULES:
            raise ValueError(f"generated labels rule {self.rule!r} is not one of {', '.join(GRADE_RULES)}")
        if self.against < 1 or self.batch_size < 1:
            raise ValueError(f"generated labels need against >= 1 and batch_size >= 1; got {self}")
        if not 0 < self.generated_label < self.gold_label:
            raise ValueError(f"generated_label must be above 0 and below gold_label (the human's reply stays on "
                             f"top); got {self.generated_label} and {self.gold_label}")


@dataclass
class GradeReport:
    contexts: int = 0  # groups with generated replies that were graded
    generated: int = 0
    graded_up: int = 0  # generated replies labelled generated_label
    no_retrieval: int = 0  # groups where the bank returned nothing to compare with (left at 0)
    human_labelled: int = 0  # groups left untouched because people labelled them
    seconds: float = 0.0
    examples: list[dict[str, Any]] = field(default_factory=list)


def graded_up(generated_pmi: float, retrieved_pmi: list[float], margin: float) -> bool:
    """The rule: a finite PMI above every finite retrieved PMI by ``margin``; nothing to beat = not graded up."""
    best = [p for p in retrieved_pmi if math.isfinite(p)]
    return math.isfinite(generated_pmi) and bool(best) and generated_pmi > max(best) + margin


class PMIGrader:
    """Relabels a ``ranker.dataset.RankingDataset`` by the rule above; ``record()`` goes into the blender's manifest."""

    def __init__(self, lm: AnyLM, config: GradeConfig, bank_unconditional: Mapping[int, LMScore] | None = None,
                 context_turns: int = 3, cache: dict[str, float] | None = None) -> None:
        config.validate()
        self.lm, self.config, self.context_turns = lm, config, context_turns
        self.bank_unconditional = dict(bank_unconditional or {})
        self.report = GradeReport()
        # PMI by (teacher, language, dialogue, text): graders sharing it (other margins, a rerun) score nothing twice.
        self.cache: dict[str, float] = cache if cache is not None else {}

    def _key(self, context: Context, text: str, language: str) -> str:
        payload = [getattr(self.lm, "lm_id", "none"), self.context_turns, language,
                   [[t.speaker, t.text] for t in context.turns], text]
        return hashlib.sha1(json.dumps(payload, ensure_ascii=False).encode("utf-8")).hexdigest()

    def _cached_pmi(self, contexts: list[Context], texts: list[str], phrase_ids: list[int | None], language: str
                    ) -> list[float]:
        keys = [self._key(c, t, language) for c, t in zip(contexts, texts, strict=True)]
        first: dict[str, int] = {}
        for i, key in enumerate(keys):
            first.setdefault(key, i)
        missing = [i for key, i in first.items() if key not in self.cache]
        if missing:
            values = self._pmi([contexts[i] for i in missing], [texts[i] for i in missing],
                               [phrase_ids[i] for i in missing], language)
            self.cache.update(zip([keys[i] for i in missing], values, strict=True))
        return [self.cache[k] for k in keys]

    def record(self) -> dict[str, Any]:
        """How the labels were made and what came of it (manifest ``training.labels`` and the job's report)."""
        report = asdict(self.report)
        report["seconds"] = round(report["seconds"], 1)
        report["examples"] = report["examples"][:10]
        return {"generated_labels": "graded" if self.config.rule != "none" else "gold-only", **asdict(self.config),
                "teacher_lm": getattr(self.lm, "lm_id", "none"), **report}

    def __call__(self, dataset: Any, contexts: Mapping[str, tuple[Context, str]], retrieve: RetrieveFn | None) -> Any:
        """The dataset with graded labels; every gold-only group's gold becomes ``gold_label``."""
        if self.config.rule == "none":
            return dataset
        started = time.monotonic()
        y = dataset.y.copy()
        todo: list[tuple[str, list[int]]] = []  # context id, generated row indices
        for g, (a, b) in enumerate(zip(dataset.offsets[:-1], dataset.offsets[1:], strict=True)):
            labels = y[a:b]
            if labels.max() > 1 or (labels > 0).sum() != 1:
                self.report.human_labelled += 1
                continue
            y[a:b] = np.where(labels > 0, self.config.gold_label, 0.0)
            generated = [i for i in range(a, b) if dataset.origins[i] == "generated"]
            if generated:
                todo.append((dataset.context_ids[g], generated))
        if todo and retrieve is None:
            raise ValueError("PMI labels for generated replies need the bank retriever (the stand-in for what "
                             "serving offers); build the pools with a bank index")
        for language in sorted({contexts[cid][1] for cid, _ in todo}):
            batch = [(cid, rows) for cid, rows in todo if contexts[cid][1] == language]
            self._grade(dataset, y, batch, language, contexts, retrieve)  # type: ignore[arg-type]
        self.report.seconds += time.monotonic() - started
        log.info("graded generated replies: %d of %d labelled %g (%d contexts)", self.report.graded_up,
                 self.report.generated, self.config.generated_label, self.report.contexts)
        return replace(dataset, y=y.astype(np.float32))

    def _grade(self, dataset: Any, y: np.ndarray, batch: list[tuple[str, list[int]]], language: str,
               contexts: Mapping[str, tuple[Context, str]], retrieve: RetrieveFn) -> None:
        ctx = [contexts[cid][0] for cid, _ in batch]
        offers = retrieve(ctx, language, self.config.against)
        pairs: list[tuple[int, str, int | None]] = []  # (batch index, text, phrase id)
        for b, ((_, rows), offered) in enumerate(zip(batch, offers, strict=True)):
            pairs += [(b, c.text, c.phrase_id) for c in offered if c.text.strip()]
            pairs += [(b, dataset.texts[i], None) for i in rows]
        pmi = self._cached_pmi([ctx[b] for b, _, _ in pairs], [t for _, t, _ in pairs], [p for _, _, p in pairs],
                               language)
        at = 0
        for (cid, rows), offered in zip(batch, offers, strict=True):
            n_offered = sum(1 for c in offered if c.text.strip())
            retrieved, generated = pmi[at:at + n_offered], pmi[at + n_offered:at + n_offered + len(rows)]
            at += n_offered + len(rows)
            self.report.contexts += 1
            self.report.no_retrieval += not n_offered
            for row, value in zip(rows, generated, strict=True):
                self.report.generated += 1
                if graded_up(value, retrieved, self.config.margin):
                    y[row] = self.config.generated_label
                    self.report.graded_up += 1
                if len(self.report.examples) < 20:
                    best = max((p for p in retrieved if math.isfinite(p)), default=math.nan)
                    self.report.examples.append({"context_id": cid, "generated": dataset.texts[row],
                                                 "pmi": round(value, 3), "best_retrieved_pmi": round(best, 3),
                                                 "label": float(y[row])})

    def _pmi(self, contexts: list[Context], texts: list[str], phrase_ids: list[int | None], language: str
             ) -> list[float]:
        """Mean-per-token PMI of each text after its context; stored bank unconditional scores are reused."""
        uncond: list[LMScore | None] = [self.bank_unconditional.get(p) if p is not None else None
                                        for p in phrase_ids]
        missing = [i for i, u in enumerate(uncond) if u is None]
        for i, score in zip(missing, score_texts(self.lm, [texts[i] for i in missing], self.config.batch_size),
                            strict=True):
            uncond[i] = score
        scores = score_pairs(self.lm, contexts, texts, [language] * len(texts), [u for u in uncond if u is not None],
                             batch_size=self.config.batch_size, context_turns=self.context_turns)
        return [s.pmi_mean if math.isfinite(s.pmi_mean) else math.nan for s in scores]


def pmi_grader(settings: Any, lm: AnyLM, config: GradeConfig) -> PMIGrader:
    """The grader for a workspace: its LM (the generator's, already loaded) and the bank's stored LM scores."""
    from core.bank.store import PhraseBank
    from core.lm.bank_scores import load_bank_scores

    with PhraseBank(settings.bank_path) as bank:
        stored = load_bank_scores(bank, lm.lm_id) if hasattr(lm, "lm_id") else {}
    log.info("generated labels: %s rule, teacher %s, %d stored bank scores reused", config.rule,
             getattr(lm, "lm_id", "none"), len(stored))
    return PMIGrader(lm, config, stored, settings.retrieval.context_turns)
