"""Bank-wide lint: the rules that need the index and models, over every phrase at once.

- near-duplicate: cosine of the index vectors above a threshold against another approved phrase;
- generic: the specificity proxy ranks the phrase in the bottom decile of its language;
- dead / hub: how often each approved phrase lands in the top k over a probe set of contexts (dev
  dialogues). Hubs (in the top k for an outsized share of contexts) are the classic failure of nearest-
  neighbour retrieval; dead phrases are never retrieved, so they only cost index space.
A rule that cannot run (no index, no proxy, no probe set) is listed in ``skipped`` with what to do.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core.bank.store import PhraseBank
from dialog.editor.lint import LintOptions, LintReport, LintWarning, text_warnings

if TYPE_CHECKING:
    from core.config import Settings
    from retriever.bank_index import BankIndex
    from retriever.encoder import Encoder

PROBE_LIMIT = 5000
DEFAULT_OPTIONS = LintOptions()


def load_probe(path: Path, context_turns: int = 3, limit: int = PROBE_LIMIT) -> list[tuple[str, str]]:
    """(language, query text) for the contexts of a dialogue JSONL file (``core.corpora`` format)."""
    from core.corpora import context_response_pairs, read_jsonl_dialogues

    pairs = context_response_pairs(read_jsonl_dialogues(path), context_turns)
    probe = []
    for pair in pairs:
        probe.append((pair.language, pair.context.as_query_text(context_turns)))
        if len(probe) >= limit:
            break
    return probe


def logged_probe(log_dir: Path, context_turns: int = 3, limit: int = PROBE_LIMIT) -> list[tuple[str, str]]:
    """(language, query text) of served contexts in the decision log: the traffic users actually send.

    Empty when there is no log, or when its decisions carry no text (served without ``log_user_text``)."""
    from dialog.editor.gaps import logged_contexts

    if not Path(log_dir).is_dir():
        return []
    try:
        found = logged_contexts(Path(log_dir), limit)
    except (ValueError, FileNotFoundError):  # no log files, or decisions without their text
        return []
    return [(probe.language, probe.context.as_query_text(context_turns)) for probe in found]


def near_duplicates(index: BankIndex, options: LintOptions) -> list[LintWarning]:
    found = []
    for language in index.languages:
        shard = index.shard(language)
        ids = [int(i) for i in shard.ids] if shard is not None else []
        if len(ids) < 2:
            continue
        for pid, hits in zip(ids, index.search(shard.vectors(ids), language, 2), strict=True):
            for other, cosine in hits:
                if other != pid and cosine >= options.duplicate_cosine:
                    found.append(LintWarning("near-duplicate", pid, f"cosine {cosine:.3f} with approved phrase "
                                             f"#{other}: the two compete for the same contexts",
                                             f"merge them: retire one or make #{pid} say something different",
                                             related=other))
    return found


def drafts_near_approved(index: BankIndex, encoder: Encoder, drafts: Sequence, options: LintOptions
                         ) -> list[LintWarning]:
    """Drafts and phrases in review against the approved ones they would compete with once approved."""
    found = []
    if not drafts:
        return found
    vectors = encoder.encode_passages([p.text for p in drafts])
    for phrase, vector in zip(drafts, vectors, strict=True):
        for other, cosine in index.search(vector, phrase.language, 1)[0]:
            if cosine >= options.duplicate_cosine:
                found.append(LintWarning("near-duplicate", phrase.id, f"cosine {cosine:.3f} with approved phrase "
                                         f"#{other}", f"edit #{other} instead, or reword this one", related=other))
    return found


def generic_phrases(index: BankIndex, proxy: object, options: LintOptions) -> tuple[list[LintWarning], dict]:
    found, cutoffs = [], {}
    for language in index.languages:
        shard = index.shard(language)
        ids = [int(i) for i in shard.ids] if shard is not None else []
        if len(ids) < 10:
            continue
        texts = [index.phrase(pid).text for pid in ids]  # type: ignore[union-attr]
        scores = np.asarray(proxy.score(texts, passages=shard.vectors(ids)))  # type: ignore[attr-defined]
        cutoff = float(np.quantile(scores, options.generic_quantile))
        cutoffs[language] = round(cutoff, 4)
        for pid, score in zip(ids, scores, strict=True):
            if score <= cutoff:
                found.append(LintWarning("generic", pid, f"specificity {score:.3f}, in the bottom "
                                         f"{options.generic_quantile:.0%} of {language} phrases: it fits any context "
                                         "and so says little", "make it specific to a topic, or retire it"))
    return found, cutoffs


def dead_and_hubs(index: BankIndex, encoder: Encoder, probe: Sequence[tuple[str, str]], options: LintOptions
                  ) -> tuple[list[LintWarning], dict]:
    found: list[LintWarning] = []
    stats: dict[str, dict] = {}
    for language in index.languages:
        queries = [text for lang, text in probe if lang == language]
        shard = index.shard(language)
        if not queries or shard is None:
            continue
        hits = index.search(encoder.encode_queries(queries), language, options.top_k)
        counts = Counter(pid for row in hits for pid, _ in row)
        ids = [int(i) for i in shard.ids]
        limit = max(options.hub_share, options.hub_factor * options.top_k / max(1, len(ids)))
        stats[language] = {"contexts": len(queries), "phrases": len(ids), "hub_share_limit": round(limit, 4),
                           "never_retrieved": sum(1 for pid in ids if counts[pid] == 0)}
        for pid in ids:
            share = counts[pid] / len(queries)
            if counts[pid] == 0:
                found.append(LintWarning("dead", pid, f"never in the top {options.top_k} for any of {len(queries)} "
                                         f"{language} probe contexts", "retire it, or reword it toward what users "
                                         "actually say"))
            elif share > limit:
                found.append(LintWarning("hub", pid, f"in the top {options.top_k} for {share:.0%} of {len(queries)} "
                                         f"{language} probe contexts (limit {limit:.0%}): it crowds out better "
                                         "replies", "make it more specific, or retire it"))
    return found, stats


def lint_bank(bank: PhraseBank, settings: Settings | None, probe: Sequence[tuple[str, str]] | None = None,
              options: LintOptions = DEFAULT_OPTIONS, encoder: Encoder | None = None) -> LintReport:
    """Every rule that can run; the report says which could not and why."""
    live = [p for p in bank.phrases() if p.status != "retired"]
    report = LintReport(texts={p.id: p.text for p in live})
    report.stats["phrases"] = len(live)
    for phrase in live:
        report.warnings.extend(text_warnings(phrase, options))
    if settings is None:
        reason = "no workspace settings: run `repliq bank lint` inside a workspace with models"
        report.skipped.update({rule: reason for rule in ("near-duplicate", "generic", "dead", "hub")})
        return report
    from retriever.bank_index import BankIndexError, load_index, update_index
    from retriever.encoder import Encoder

    encoder = encoder or Encoder.from_config(settings)
    try:
        update_index(bank, encoder, settings)
        index = load_index(settings, encoder, bank)
    except BankIndexError as exc:
        report.skipped.update({rule: str(exc) for rule in ("near-duplicate", "generic", "dead", "hub")})
        return report
    report.warnings.extend(near_duplicates(index, options))
    report.warnings.extend(drafts_near_approved(index, encoder, [p for p in live if p.status != "approved"], options))
    _generic(report, index, encoder, settings, options)
    if probe:
        found, stats = dead_and_hubs(index, encoder, probe, options)
        report.warnings.extend(found)
        report.stats["probe"] = stats
    else:
        reason = "no probe set: pass --probe FILE (dev dialogues as JSONL) to find dead and hub phrases"
        report.skipped.update({"dead": reason, "hub": reason})
    return report


def _generic(report: LintReport, index: BankIndex, encoder: Encoder, settings: Settings,
             options: LintOptions) -> None:
    from rl.blender_setup import SPECIFICITY_DIR
    from rl.proxy import load_specificity_proxy

    path = settings.artifact_path(settings.ranker.specificity, SPECIFICITY_DIR)
    if path is None:
        report.skipped["generic"] = ("no reward-specificity artifact: run `repliq train reward --kind specificity` "
                                     "to rank phrases by specificity")
        return
    proxy = load_specificity_proxy(path, encoder)
    if proxy.config.inputs == "pair":
        report.skipped["generic"] = "the specificity proxy scores (context, phrase) pairs; lint needs a phrase-only one"
        return
    found, cutoffs = generic_phrases(index, proxy, options)
    report.warnings.extend(found)
    report.stats["generic_cutoff"] = cutoffs
