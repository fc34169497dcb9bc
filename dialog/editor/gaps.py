"""Gap suggestions: contexts the bank answers poorly get LM-drafted replies, queued as drafts for editors.

A gap is a probe context (dev dialogues, or served traffic from the decision log when it carries text)
whose best approved phrase has a low retrieval cosine under the serving encoder: nothing in the bank is
close to an answer. For each of the worst ones the decoder LM (``[lm] name``, gemma-3-270m by default)
samples a few replies; those that pass the generation filters (not empty, no echo of the context, right
language, no blocklisted words) enter the bank as drafts with source ``generated`` and tag ``gap``, the
context in their history's "why". Nothing generated is ever served before an editor fixes it and a
reviewer approves it. ``repliq bank gaps`` runs it and writes ``<home>/gaps/report.json``; the editor's
Gaps page shows that report and the generated drafts still waiting for an editor.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.atomic import atomic_write_json
from core.bank.schema import BankError
from core.config import GenerationConfig
from core.types import Context, Turn

if TYPE_CHECKING:
    from core.bank.store import PhraseBank
    from core.config import Settings
    from dialog.generation.generator import LMGenerator
    from retriever.bank_index import BankIndex

REPORT_FILE = Path("gaps") / "report.json"
SOURCE = "generated"
TAG = "gap"
MAX_CONTEXTS = 5000


@dataclass(frozen=True)
class ProbeContext:
    language: str
    context: Context
    origin: str  # "<file>:<context id>" or "log:<request id>"


@dataclass
class GapOptions:
    limit: int = 20  # the worst-answered contexts that get drafts
    replies: int = 3  # drafts asked of the LM per context (fewer when the filters drop some)
    max_score: float | None = None  # only contexts whose best cosine is below this (None: just the worst)
    check_language: bool = True
    keep_truncated: bool = False  # keep a reply cut by the token limit as it is (else: up to its last sentence)
    max_new_tokens: int = 40
    budget_s: float = 300.0  # LM wall time per context (a batch job: generous, a shared CPU is slow)

    def validate(self) -> None:
        if self.limit < 1 or self.replies < 1:
            raise ValueError(f"gaps: limit and replies must be at least 1, got {self.limit} and {self.replies}")


@dataclass
class Gap:
    language: str
    context: list[list[str]]  # [speaker, text] turns
    origin: str
    best_score: float
    best_id: int | None
    best_text: str
    drafts: list[dict[str, Any]] = field(default_factory=list)  # {"id", "text"}
    skipped: list[str] = field(default_factory=list)  # why an LM reply did not become a draft


def probe_contexts(path: Path, context_turns: int, limit: int = MAX_CONTEXTS) -> list[ProbeContext]:
    """The contexts of a dialogue JSONL file (``core.corpora`` format; use dev dialogues, never test)."""
    from core.corpora import context_response_pairs, read_jsonl_dialogues

    found = []
    for pair in context_response_pairs(read_jsonl_dialogues(path), context_turns):
        found.append(ProbeContext(pair.language, pair.context, f"{Path(path).name}:{pair.context_id}"))
        if len(found) >= limit:
            break
    return found


def logged_contexts(log_dir: Path, limit: int = MAX_CONTEXTS) -> list[ProbeContext]:
    """Served contexts from the decision log; only decisions logged with ``log_user_text`` carry turns."""
    from rl.decision_records import read_decisions

    records, _bad = read_decisions(log_dir)
    found = []
    for record in records:
        turns = record.get("context")
        if not isinstance(turns, list) or not turns:
            continue
        try:
            context = Context(tuple(Turn(str(t["speaker"]), str(t["text"])) for t in turns))
        except (KeyError, TypeError):
            continue
        found.append(ProbeContext(str(record["language"]), context, f"log:{record['request_id']}"))
        if len(found) >= limit:
            break
    if records and not found:
        raise ValueError(f"none of the {len(records)} decisions in {log_dir} carries its context text; serve with "
                         "[logging] log_user_text = true, or pass --probe with dev dialogues")
    return found


def find_gaps(contexts: list[ProbeContext], index: BankIndex, encoder: Any, context_turns: int,
              options: GapOptions) -> list[Gap]:
    """The ``options.limit`` contexts whose best approved phrase scores lowest, worst first."""
    unique: dict[tuple[str, str], ProbeContext] = {}
    for probe in contexts:
        query = probe.context.as_query_text(context_turns)
        if query.strip():
            unique.setdefault((probe.language, query), probe)
    if not unique:
        return []
    keys = list(unique)
    vectors = encoder.encode_queries([query for _, query in keys])
    gaps = []
    for row, (language, query) in enumerate(keys):
        hits = index.search(vectors[row], language, 1)[0]
        best_id, best = (hits[0][0], hits[0][1]) if hits else (None, -1.0)
        info = index.phrase(best_id) if best_id is not None else None
        probe = unique[(language, query)]
        gaps.append(Gap(language, [[t.speaker, t.text] for t in probe.context.turns], probe.origin, round(best, 4),
                        best_id, info.text if info else ""))
    gaps.sort(key=lambda gap: gap.best_score)
    if options.max_score is not None:
        gaps = [gap for gap in gaps if gap.best_score < options.max_score]
    return gaps[:options.limit]


def draft_replies(gaps: list[Gap], generator: LMGenerator, bank: PhraseBank, options: GapOptions, who: str,
                  progress: Callable[[str], None] | None = None) -> int:
    """LM drafts for each gap into the bank (draft, source ``generated``); returns how many were added."""
    added = 0
    for number, gap in enumerate(gaps, 1):
        if progress is not None:
            progress(f"drafting replies for gap {number}/{len(gaps)} (best cosine {gap.best_score:.3f})")
        last = gap.context[-1][1] if gap.context else ""
        why = f"gap (best bank cosine {gap.best_score:.3f}) for: {last}"[:200]
        for text in _replies(gap, generator, options):
            try:
                phrase = bank.add(text, gap.language, tags=[TAG], status="draft", source=SOURCE, who=who, why=why)
            except BankError as exc:  # a duplicate of an existing phrase, or text the bank's rules refuse
                gap.skipped.append(f"{text[:60]!r}: {str(exc)[:200]}")
                continue
            gap.drafts.append({"id": phrase.id, "text": phrase.text})
            added += 1
    return added


def _complete_sentences(text: str) -> str:
    """A reply cut off by the token limit, up to its last sentence end ("" when it has none)."""
    cut = max(text.rfind(mark) for mark in ".!?…")
    return text[:cut + 1].strip() if cut >= 0 else ""


def _replies(gap: Gap, generator: LMGenerator, options: GapOptions) -> list[str]:
    """Up to ``options.replies`` sampled replies that pass the generation filters, most likely first; every
    sample that does not make it is noted in ``gap.skipped`` with the reason."""
    context = Context(tuple(Turn(speaker, text) for speaker, text in gap.context))
    samples = generator.sample(context, gap.language, time.monotonic() + options.budget_s)
    if not samples:
        gap.skipped.append(f"the LM finished no reply within {options.budget_s:.0f} s")
    texts, scores = [], []
    for sample in samples:
        text = sample.text if sample.finished or options.keep_truncated else _complete_sentences(sample.text)
        if not text:
            gap.skipped.append(f"{sample.text[:60]!r}: cut off by the token limit before a sentence ended")
            continue
        texts.append(text)
        scores.append(sample.mean_logprob)
    verdict = generator.filter.apply(texts, context, gap.language)
    for index, reason in verdict.dropped.items():
        gap.skipped.append(f"{texts[index][:60]!r}: {reason}")
    kept = sorted(verdict.kept, key=lambda i: -scores[i])
    return [texts[i] for i in kept[:options.replies]]


def _generator(settings: Settings, options: GapOptions) -> LMGenerator:
    from core.lm.wrapper import DecoderLM, LMOptions
    from dialog.generation.filters import FilterConfig, ReplyFilter
    from dialog.generation.generator import LMGenerator

    if settings.lm.name == "none":
        raise ValueError("gap suggestions need a decoder LM; set [lm] name (e.g. \"gemma-3-270m\")")
    lm = DecoderLM.from_cache(settings.lm.name, settings.models_dir, LMOptions(dtype=settings.lm.dtype))
    # Twice the replies wanted (the filters drop some), in batches of ``replies`` so that something is ready
    # early; unfinished samples come back too (``_replies`` trims them to whole sentences).
    config = replace(GenerationConfig(), n_candidates=options.replies * 2, samples_per_call=options.replies,
                     demonstrations=0, max_new_tokens=options.max_new_tokens, keep_truncated=True)
    return LMGenerator(lm, config, reply_filter=ReplyFilter(FilterConfig(check_language=options.check_language)))


def run_gaps(bank: PhraseBank, settings: Settings, contexts: list[ProbeContext], options: GapOptions,
             who: str, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Find the gaps of ``contexts`` against the current approved bank, draft replies, return the report."""
    from retriever.bank_index import load_index, update_index
    from retriever.encoder import Encoder

    options.validate()
    if not contexts:
        raise ValueError("no probe contexts: pass --probe with dev dialogues or --from-logs with a decision log")
    say = progress or (lambda _message: None)
    say(f"encoding {len(contexts)} probe contexts")
    encoder = Encoder.from_config(settings)
    update_index(bank, encoder, settings)  # gaps against what is approved now
    index = load_index(settings, encoder, bank)
    gaps = find_gaps(contexts, index, encoder, settings.retrieval.context_turns, options)
    if gaps:
        say(f"{len(gaps)} gaps; loading the LM {settings.lm.name}")
    generator = _generator(settings, options) if gaps else None
    added = draft_replies(gaps, generator, bank, options, who, progress) if generator is not None else 0
    return {"created": datetime.now(UTC).isoformat(timespec="seconds"), "encoder": encoder.identity,
            "lm": generator.version if generator is not None else "", "contexts": len(contexts),
            "options": asdict(options), "drafts": added, "gaps": [asdict(gap) for gap in gaps]}


def write_report(report: dict[str, Any], path: Path) -> None:
    atomic_write_json(path, report)


def read_report(path: Path) -> dict[str, Any] | None:
    """The last report, or None when there is none or it cannot be read (the page says to run the command)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("gaps"), list) else None
