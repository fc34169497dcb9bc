"""Curates the shipped Russian phrases (``core/data/bank_ru.jsonl.xz``) from Koziev's CC0 joke dialogues.

Run from the project root (deterministic: the same corpus gives byte-identical files)::

    .venv/bin/python -m dialog.jobs.curate_ru ../shared/data/ru/koziev_anekdot_dialogues.tar.xz

The corpus is mined from joke sites: witty, often crude, full of names, accents and narration, and most
punchlines mean nothing without the joke. A bank phrase is shown verbatim to users, so the rules
(:func:`reject_reason`, listed with their counts in ``bank_ru.provenance.json`` and docs/bank.md)
would rather drop a good line than keep a bad one; 112k distinct train replies leave plenty.

Only replies (every turn but a dialogue's first) of ``train``-split conversations (:func:`core.corpora.
split_of`) are used, and a text that any dev/test conversation also contains is dropped, so the bank
never holds a held-out answer. Generic replies: the trained specificity proxy (``rl.proxy``) needs
artifacts a fresh checkout does not have, so the transparent stand-in is the ranker's generic-pattern
list plus "short or frequent" (fewer than 4 words, or a text that occurs 3+ times among train replies).
Near duplicates are found by character-trigram Jaccard against the starter set, chatterbot and the
phrases already kept; the e5 index is not used (it would cost an encoder pass over ~7k texts for
little over the trigrams).
"""

from __future__ import annotations

import argparse
import json
import lzma
import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path

import numpy as np

from core.atomic import atomic_write_bytes, atomic_write_json, sha256_file
from core.bank.default import chatterbot_rows, starter_rows
from core.blocklist import Blocklist, packaged_blocklists
from core.corpora import Dialogue, read_anekdot_dialogues, split_of
from core.hygiene import char_shingles, similarity_key
from core.text import detect_language, normalize_text
from ranker.features.generic import is_generic

DATA_NAME = "bank_ru.jsonl.xz"
PROVENANCE_NAME = "bank_ru.provenance.json"
SOURCE = {"source": "koziev-anekdot-dialogues", "license": "CC0-1.0", "author": "Ilya Koziev (Koziev/NLP_Datasets)"}
DEFAULT_SEED = 20240607

# Letters, spaces and plain sentence punctuation only: no digits, Latin, quotes, colons or brackets, which
# in this corpus mark numbers out of context, transliterated accents, quoted speech and stage directions.
_SHAPE = re.compile(r"^[А-ЯЁ][А-Яа-яЁё ,.!?\-]*[.!?]$")
# Ellipses and "?!" runs (trailing off, shouting), a dash between spaces (a second speaker or narration
# glued on: "Нет. Второй чукча: - А я?"), stray spacing ("спорта ?", "Да,нет"), stretched words ("Фу-у").
_BAD_SHAPE = re.compile(r"\.\.|[!?]{2,}|\s[-—]|[-—]\s|\s[,.!?]|[,.!?][^\s]|(\w)-\1|(\w)\2\2")
_NARRATION = re.compile(
    r"\b(?:говор|сказал|скаж|спрашива|спросил|отвеча|ответил|крич|крикнул|шепч|шепнул|подумал|вздыха"
    r"|восклица|улыба|усмех|продолжа|произн|заявля|заявил|ворч|бормоч|орет|орёт|заорал|рассказыва"
    r"|молчание|пауза|тишина)\w*",  # stage directions: "Дети, кто разбил окно? Молчание."
    re.IGNORECASE,
)
_WORDS = re.compile(r"\w+")


def _split(words: str) -> tuple[str, ...]:
    return tuple(words.split())


# Crude, sexual, drunk, violent or ethnic-joke words the safety blocklist does not hold (it is for abuse);
# fine in a joke, not in a bot's small talk. ``*`` marks a stem, as in the blocklist files.
CRUDE = _split(
    "секс* жоп* задниц* попк* сиськ* грудь груди трах* член члена члены членом хрен* хер херн* фиг* нафиг* "
    "нахрен* нахер* фигн* блин бля* билядь* говн* дерьм* срать сран* ссать ссы* пис* какать какашк* "
    "проститут* шлюх* бордел* сутен* любовник* любовниц* импотен* презерватив* минет* оргазм* эрекц* "
    "кончил* кончать* голая голый голые голой голым голую трус трусы трусах трусов трусики* лифчик* пьян* "
    "водк* самогон* бухать бух* нажр* опохмел* похмел* убью убей убить убил* труп* морг* гроб* задушу* "
    "застрелю* тёщ* тещ* негр* еврей* жид* чукч* хохл* москал* гей* педик* пидор* дура дурак* идиот* "
    "кретин* дебил* придурок* козёл козел урод* тупой тупая тупица* сволочь* скотина* баба бабы бабой бабу "
    "бабки бабок мент* бандит* нарко* травк* косяк* зек* зэк* тюрьм* мочить мочи охрен* похрен* офиг* пофиг* "
    "проеб* проёб* поеб* поёб* отъеб* съеб* въеб* доеб* доёб* разъеб* долбоеб* долбоёб* ебн* ёбн* еби* ёб "
    "сдох* подох* обосс* обдел* жрать жри жрёт жрет голого голому поржать ржать ржу мат матом блондинк* "
    "белые черные чёрные негритян*"
    # politics and war: a staple of the jokes, not of small talk
    " правительств* депутат* президент* министр* россиян* фюрер* группенфюрер* штандартенфюрер* партия партии "
    "партию коммунист* фашист* немц* генсек* кгб армян* грузин* цыган* кавказ* узбек* таджик* сосать соси сосёт сосет "
    "проваливай проваливайте башка воня* вонь* туалет* толстая толстый толстой мля* национальн* "
    "девствен* вали выборы выборах"
)
# Addressing someone by role ("Доктор, ...", "..., мама!") ties a line to the joke's cast.
VOCATIVES = frozenset(_split(
    "бабушка дедушка мама папа мамочка папочка мам пап доктор сынок сына сын дочка доченька доча дочь брат "
    "братец братан мужики ребята дорогой дорогая милый милая любимый любимая товарищ господин сэр батюшка "
    "сестра сестричка официант девушка сосед соседка дружище старик отец мать мужик внучек внучка бабуля дед "
    "дядя тётя тетя сударь сударыня командир начальник шеф милок голубчик солнышко зайка котик учитель "
    "гражданин гражданка жена муж мальчик девочка мужчина женщина дорогуша деточка детка внучок "
    "зайчик малыш красавица родной родная судья человек киска батенька рыбка офицер бабка пацан"
))
# Surzhik and mock accents ("шо", "тоби", "нэ") read as ridicule out of the joke.
DIALECT = frozenset(_split("шо як тоби такий мени нэ чо чё че щас ща ваще таки вэй кацо генацвале шоб ось вин"))
# A third-person pronoun points at someone or something only the joke has introduced.
PRONOUNS = frozenset(_split("он она оно они его её ее ему ей им ими их нём нем ней них него неё нее нему нею ним ними"))


@dataclass(frozen=True)
class CurationRules:
    min_words: int = 4
    max_words: int = 20
    min_chars: int = 20
    max_chars: int = 150
    max_sentences: int = 2
    min_word_count: int = 5  # every word occurs this often in the train split: no typos, names, coinages
    max_reply_count: int = 2  # a text repeated 3+ times among train replies is a stock (generic) line
    near_duplicate_jaccard: float = 0.6  # character trigrams, core.hygiene.char_shingles
    limit: int = 3000
    seed: int = DEFAULT_SEED


@dataclass
class CorpusStats:
    """What the rules need to know about the whole train split, and which texts are held out."""

    word_counts: Counter[str] = field(default_factory=Counter)
    lowercase_counts: Counter[str] = field(default_factory=Counter)  # written in lower case: not a name
    reply_counts: Counter[str] = field(default_factory=Counter)
    held_out: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, dialogues: Iterable[Dialogue]) -> CorpusStats:
        stats = cls()
        for dialogue in dialogues:
            if split_of(dialogue.id) != "train":
                stats.held_out.update(similarity_key(t.text) for t in dialogue.turns)
                continue
            for i, turn in enumerate(dialogue.turns):
                words = _WORDS.findall(turn.text)
                stats.word_counts.update(w.lower() for w in words)
                stats.lowercase_counts.update(w for w in words if w.islower())
                if i > 0:
                    stats.reply_counts[similarity_key(turn.text)] += 1
        return stats


def _has_name(words: Sequence[str], stats: CorpusStats, min_count: int) -> bool:
    """A name (Вовочка, Рабинович, Марь Иванна): a capital letter not starting a sentence, or a sentence's
    first word that the corpus hardly ever writes in lower case ("Абраша, успокойся")."""
    if any(word[0].isupper() for prev, word in pairwise(words) if not prev.endswith((".", "!", "?"))):
        return True
    starts = [words[0]] + [word for prev, word in pairwise(words) if prev.endswith((".", "!", "?"))]
    return any(stats.lowercase_counts[token] < min_count
               for word in starts for token in _WORDS.findall(word.lower())[:1])


_BETWEEN_PUNCTUATION = re.compile(r"(?:^|[,.!?]\s*)((?:\w+ )?\w+)(?=\s*[,.!?])")


def _is_vocative(text: str) -> bool:
    """A role word standing alone between punctuation ("Да, девочка, мы...", "Молодой человек, я...")."""
    return any(word in VOCATIVES for match in _BETWEEN_PUNCTUATION.findall(text) for word in match.lower().split())


def reject_reason(text: str, stats: CorpusStats, rules: CurationRules, crude: Blocklist, blocklist: Blocklist
                  ) -> str | None:
    """The first rule ``text`` breaks (rule names are the provenance file's count keys), or None."""
    words = text.split()
    if not (rules.min_words <= len(words) <= rules.max_words and rules.min_chars <= len(text) <= rules.max_chars):
        return "length"
    if not _SHAPE.match(text) or _BAD_SHAPE.search(text):
        return "shape"
    if detect_language(text) != "ru":
        return "language"
    if _has_name(words, stats, rules.min_word_count):
        return "name"
    if _NARRATION.search(text):
        return "narration"
    tokens = _WORDS.findall(text.lower())
    if blocklist.hits(tokens):
        return "blocklist"
    if crude.hits(tokens):
        return "crude"
    if _is_vocative(text):
        return "vocative"
    if any(t in DIALECT for t in tokens):
        return "dialect"
    if any(t in PRONOUNS for t in tokens):
        return "pronoun"
    if len(re.findall(r"[.!?]+", text)) > rules.max_sentences:
        return "sentences"
    if min(stats.word_counts[t] for t in tokens) < rules.min_word_count:
        return "rare_word"
    key = similarity_key(text)
    if is_generic(text, "ru") or stats.reply_counts[key] > rules.max_reply_count:
        return "generic"
    if key in stats.held_out:
        return "held_out"
    return None


class NearDuplicates:
    """Character-trigram sets of the phrases kept so far, as a dense 0/1 matrix: one candidate is checked
    against all of them with a column gather, fast enough for a greedy pass in Python."""

    def __init__(self, threshold: float, capacity: int) -> None:
        self.threshold = threshold
        self.vocab: dict[str, int] = {}
        self.rows = np.zeros((capacity, 256), dtype=np.uint8)
        self.sizes = np.zeros(capacity, dtype=np.int32)
        self.count = 0

    def _ids(self, text: str) -> np.ndarray:
        ids = [self.vocab.setdefault(s, len(self.vocab)) for s in char_shingles(text)]
        if len(self.vocab) > self.rows.shape[1]:
            grown = np.zeros((self.rows.shape[0], 2 * len(self.vocab)), dtype=np.uint8)
            grown[:, : self.rows.shape[1]] = self.rows
            self.rows = grown
        return np.array(ids, dtype=np.int64)

    def is_near_duplicate(self, text: str) -> bool:
        ids = self._ids(text)
        if self.count == 0 or not len(ids):
            return False
        inter = self.rows[: self.count, ids].sum(axis=1, dtype=np.int32)
        union = self.sizes[: self.count] + len(ids) - inter
        return bool(np.any(inter >= self.threshold * union))

    def add(self, text: str) -> None:
        ids = self._ids(text)
        if self.count == len(self.sizes):
            raise ValueError(f"NearDuplicates holds at most {len(self.sizes)} phrases")
        self.rows[self.count, ids] = 1
        self.sizes[self.count] = len(ids)
        self.count += 1


@dataclass
class Curated:
    phrases: list[str]
    counts: dict[str, int]


def curate(dialogues: Sequence[Dialogue], existing: Sequence[str], rules: CurationRules | None = None,
           blocklist: Blocklist | None = None) -> Curated:
    """Train-split replies that pass every rule, no near duplicate of ``existing`` or of each other; a seeded
    random ``rules.limit`` of them in a seeded random order (which also decides which near duplicate wins)."""
    rules = rules or CurationRules()
    blocklist = blocklist or Blocklist.merge(packaged_blocklists().values())
    crude = Blocklist.from_lines(CRUDE)
    stats = CorpusStats.of(dialogues)
    counts: Counter[str] = Counter()
    seen: set[str] = set()
    passed: list[str] = []
    for dialogue in dialogues:
        if split_of(dialogue.id) != "train":
            continue
        for number, turn in enumerate(dialogue.turns[1:], start=2):
            counts["train_replies"] += 1
            if number == len(dialogue.turns):
                counts["punchline"] += 1  # a joke's last line needs the joke
                continue
            text = normalize_text(turn.text)
            key = similarity_key(text)
            if key in seen:
                counts["repeat"] += 1
                continue
            seen.add(key)
            reason = reject_reason(text, stats, rules, crude, blocklist)
            counts[reason or "passed_rules"] += 1
            if reason is None:
                passed.append(text)
    random.Random(rules.seed).shuffle(passed)
    near = NearDuplicates(rules.near_duplicate_jaccard, len(existing) + rules.limit)
    for text in existing:
        near.add(text)
    kept: list[str] = []
    for text in passed:
        if len(kept) == rules.limit:
            break
        if near.is_near_duplicate(text):
            counts["near_duplicate"] += 1
            continue
        near.add(text)
        kept.append(text)
    counts["not_sampled"] = len(passed) - len(kept) - counts["near_duplicate"]
    counts["kept"] = len(kept)
    return Curated(kept, dict(counts))


def existing_russian() -> list[str]:
    """The Russian phrases the default bank already gets from the starter set and chatterbot-corpus."""
    rows = [row for row in starter_rows() if row.language == "ru"] + chatterbot_rows(languages=["ru"])[0]
    return [normalize_text(row.text) for row in rows]


def encode_phrases(phrases: Sequence[str]) -> bytes:
    """JSON Lines in the bank's import format, xz-compressed; same input, same bytes."""
    lines = "".join(json.dumps({"text": t, "language": "ru", **SOURCE}, ensure_ascii=False) + "\n" for t in phrases)
    return lzma.compress(lines.encode("utf-8"), format=lzma.FORMAT_XZ, preset=9)


def write_outputs(curated: Curated, rules: CurationRules, corpus: Path, out_dir: Path) -> dict[str, object]:
    data = encode_phrases(curated.phrases)
    provenance: dict[str, object] = {
        "file": DATA_NAME,
        **SOURCE,
        "corpus": {"name": "Koziev anekdot dialogues (extract_dialogues_from_anekdots.txt)",
                   "url": "https://github.com/Koziev/NLP_Datasets", "file": corpus.name,
                   "sha256": sha256_file(corpus)},
        "split": "train only: core.corpora.split_of(conversation id), dev 0.1 / test 0.1; texts that occur in "
                 "any dev or test conversation are dropped (held_out)",
        "rules": asdict(rules),
        "counts": curated.counts,
        "phrases": len(curated.phrases),
        "rebuild": f"python -m dialog.jobs.curate_ru <path to {corpus.name}>",
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / DATA_NAME, data)
    atomic_write_json(out_dir / PROVENANCE_NAME, provenance)
    return provenance


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dialog.jobs.curate_ru", description=__doc__.split("\n")[0])
    parser.add_argument("corpus", type=Path, help="koziev_anekdot_dialogues.tar.xz (or the bare .txt)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "core" / "data",
                        help="output folder (default: the package's core/data)")
    parser.add_argument("--limit", type=int, default=CurationRules.limit)
    args = parser.parse_args(argv)
    if not args.corpus.is_file():
        parser.error(f"{args.corpus} not found; it is ../shared/data/ru/koziev_anekdot_dialogues.tar.xz "
                     "in the development checkout (CC0, github.com/Koziev/NLP_Datasets)")
    if args.limit <= 0:
        parser.error(f"--limit must be positive, got {args.limit}")
    rules = CurationRules(limit=args.limit)
    curated = curate(list(read_anekdot_dialogues(args.corpus)), existing_russian(), rules)
    provenance = write_outputs(curated, rules, args.corpus, args.out)
    print(json.dumps(provenance["counts"], ensure_ascii=False))
    print(f"wrote {len(curated.phrases)} phrases to {args.out / DATA_NAME} ({(args.out / DATA_NAME).stat().st_size} "
          f"bytes) and {PROVENANCE_NAME}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
