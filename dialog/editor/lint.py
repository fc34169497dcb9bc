"""Lint rules for bank phrases: each warning says why the phrase is suspect and what to do about it.

Text rules look at one phrase (length, language mismatch, blocklisted terms, narration leaking into a
reply) and run inline on every phrase page. Bank rules need the index and models (near-duplicates by
cosine, generic by the specificity proxy, dead and hub phrases over a probe set of contexts) and run in
``repliq bank lint`` (see ``dialog/editor/lint_bank.py``); their last report is shown inline too.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.bank.schema import Phrase
from core.blocklist import Blocklist, packaged_blocklists
from core.text import detect_language, word_tokens

REPORT_FILE = "lint/report.json"
BLOCKLIST_FILE = "blocklist.txt"
PLACEHOLDERS = ("todo", "fixme", "lorem ipsum", "xxx", "tbd")
_STAGE_WORDS = (r"laughs?|smiles?|sighs?|grins?|nods?|pauses?|winks?|shrugs?|смеётся|смеется|улыбается|вздыхает|"
                r"пауза|кивает|подмигивает|пожимает плечами")
NARRATION = (
    (re.compile(r"\*[^*\n]{2,60}\*"), "an action between asterisks (*...*)"),
    (re.compile(rf"[(\[]\s*(?:{_STAGE_WORDS})\b[^)\]]*[)\]]", re.IGNORECASE), "a stage direction in brackets"),
    (re.compile(r"^\s*(?:[AB]|user|bot|speaker \d|person \d|человек|собеседник|пользователь|бот)\s*:", re.IGNORECASE),
     "a speaker label at the start"),
    (re.compile(r"[,—–-]\s*(?:сказал|сказала|ответил|ответила|спросил|спросила|воскликнул|воскликнула)\b",
                re.IGNORECASE), "a narrator's 'сказал/ответил'"),
    (re.compile(r"[,\"]\s*(?:he|she|they|i) (?:said|replied|asked|answered|shouted)\b", re.IGNORECASE),
     "a narrator's 'he said / she replied'"),
)


@dataclass(frozen=True)
class LintOptions:
    min_chars: int = 2
    max_chars: int = 280
    blocklist: tuple[str, ...] = PLACEHOLDERS
    duplicate_cosine: float = 0.95
    generic_quantile: float = 0.10
    top_k: int = 5
    hub_share: float = 0.05
    hub_factor: float = 3.0


@dataclass(frozen=True)
class LintWarning:
    rule: str
    phrase_id: int
    why: str
    fix: str
    related: int | None = None


@dataclass
class LintReport:
    warnings: list[LintWarning] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    texts: dict[int, str] = field(default_factory=dict)

    def for_phrase(self, phrase_id: int) -> list[LintWarning]:
        return [w for w in self.warnings if w.phrase_id == phrase_id]

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for warning in self.warnings:
            counts[warning.rule] = counts.get(warning.rule, 0) + 1
        return dict(sorted(counts.items()))

    def to_json(self) -> dict[str, Any]:
        return {"counts": self.counts(), "skipped": self.skipped, "stats": self.stats,
                "warnings": [{**asdict(w), "text": self.texts.get(w.phrase_id, "")} for w in self.warnings]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LintReport:
        warnings = [LintWarning(w["rule"], int(w["phrase_id"]), w["why"], w["fix"], w.get("related"))
                    for w in data.get("warnings", [])]
        texts = {int(w["phrase_id"]): w.get("text", "") for w in data.get("warnings", [])}
        return cls(warnings, dict(data.get("skipped", {})), dict(data.get("stats", {})), texts)


def read_blocklist(path: Path | None) -> tuple[str, ...]:
    """The built-in placeholders plus one term per line of ``path`` (``#`` starts a comment)."""
    terms = list(PLACEHOLDERS)
    if path is not None and path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            term = line.split("#", 1)[0].strip().lower()
            if term and term not in terms:
                terms.append(term)
    return tuple(terms)


def _blocklisted(text: str, terms: tuple[str, ...]) -> list[str]:
    lowered = text.lower()
    return [t for t in terms if re.search(rf"(?<!\w){re.escape(t)}(?!\w)", lowered)]


@functools.cache
def _shared_lists() -> dict[str, Blocklist]:
    return packaged_blocklists()


def _shared_hits(text: str, language: str) -> list[str]:
    """Words on the shared abuse lists (core/data/blocklist_<lang>.txt) that ranking and generation use."""
    shared = _shared_lists().get(language)
    if shared is None:
        return []
    return [w for w in dict.fromkeys(word_tokens(text)) if w in shared.words or w.startswith(shared.stems)]


def text_warnings(phrase: Phrase, options: LintOptions = LintOptions()) -> list[LintWarning]:
    """The rules that need nothing but the phrase itself."""
    found: list[LintWarning] = []
    text, pid = phrase.text, phrase.id
    if len(text) < options.min_chars:
        found.append(LintWarning("too-short", pid, f"{len(text)} character(s): too short to be a reply",
                                 "write a full reply or retire the phrase"))
    if len(text) > options.max_chars:
        found.append(LintWarning("too-long", pid, f"{len(text)} characters, over {options.max_chars}: long replies "
                                 "read as monologues in chat", "shorten it or split it into two phrases"))
    detected = detect_language(text, default=phrase.language)
    ambiguous = phrase.language == "uk" and detected == "ru"  # Ukrainian without its own letters looks Russian
    if phrase.language in ("ru", "uk", "en") and detected != phrase.language and not ambiguous:
        found.append(LintWarning("language-mismatch", pid, f"the text looks {detected}, the phrase is marked "
                                 f"{phrase.language}: it is served to the wrong users",
                                 f"set the language to {detected} or translate the text"))
    for term in _blocklisted(text, options.blocklist) + _shared_hits(text, phrase.language):
        found.append(LintWarning("blocklisted", pid, f"contains the blocklisted term {term!r}",
                                 "rewrite the reply without it (or remove the term from the blocklist)"))
    for pattern, what in NARRATION:
        if pattern.search(text):
            found.append(LintWarning("narration", pid, f"{what}: narration from a story, not something a "
                                     "speaker says", "keep only the spoken words"))
            break
    return found


def phrase_warnings(state: Any, phrase: Phrase) -> list[LintWarning]:
    """Everything known about one phrase now: its text rules plus the last bank-wide report's findings."""
    options = getattr(state, "lint_options", LintOptions())
    report: LintReport | None = getattr(state, "lint_report", None)
    bank_wide = [w for w in report.for_phrase(phrase.id) if w.rule not in TEXT_RULES] if report else []
    return text_warnings(phrase, options) + bank_wide


def write_report(report: LintReport, json_path: Path, html_path: Path | None, render_html: Any = None) -> None:
    """JSON (and HTML when a renderer is given) written atomically, so a reader never sees half a report."""
    from core.atomic import atomic_write_text

    atomic_write_text(json_path, json.dumps(report.to_json(), ensure_ascii=False, indent=1))
    if html_path is not None and render_html is not None:
        atomic_write_text(html_path, render_html(report))


def read_report(path: Path) -> LintReport | None:
    if not path.is_file():
        return None
    return LintReport.from_json(json.loads(path.read_text(encoding="utf-8")))


TEXT_RULES = frozenset({"too-short", "too-long", "language-mismatch", "blocklisted", "narration"})
