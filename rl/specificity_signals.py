"""Human signals a specificity teacher is judged on, read from the dev hash splits only.

The teacher is chosen by these signals, so reading a train or test conversation here would tune the
choice on data other jobs train on or report on. Every reader keeps only ``split_of(id) == "dev"``
conversations and samples at most ``limit`` replies with a fixed seed (LM scoring is the cost).

* ``convai2_thumbs``        thumbs up/down on ConvAI2 bot turns; grouped by dialogue (cluster bootstrap).
* ``convai2_engagingness``  the dialogue's 1–5 ``eval_score``; the candidate is averaged over its bot turns.
* ``chitchat_interesting`` / ``chitchat_witty``  per-conversation ratings; the candidate is averaged over
  sampled replies of the conversation.
* ``topicalchat_turn``      Topical-Chat's per-turn quality rating (Poor … Excellent as 1 … 5).
* ``hand_specific_<lang>`` / ``hand_ssa_<lang>``  ``tests/data/specificity_hand_labels.jsonl``: a small
  labelled set no model trains on (specific 0/1, and specific ∧ sensible as Meena's SSA).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.corpora import (
    Dialogue,
    read_anekdot_dialogues,
    read_chitchat,
    read_convai2,
    read_topicalchat_folder,
    split_of,
)
from core.types import Context, Turn
from rl.teacher import HumanSignal

CONVAI2_FILES = ("data_volunteers.json", "data_intermediate.json")
TOPICALCHAT_RATINGS = {"Poor": 1.0, "Not Good": 2.0, "Passable": 3.0, "Good": 4.0, "Excellent": 5.0}


@dataclass(frozen=True)
class SignalSources:
    """Where the human signals live; a ``None`` source is skipped (and said so in the report)."""

    convai2: Path | None = None  # folder with data_volunteers.json / data_intermediate.json
    topicalchat: Path | None = None  # folder with valid_freq.json / valid_rare.json
    russian: Path | None = None  # Koziev anekdot dialogues: Russian train replies for the length model
    hand_labels: Path | None = None
    chitchat: bool = True
    limit: int = 1500  # replies per signal at most
    context_turns: int = 3
    seed: int = 0


def _dev(dialogues: list[Dialogue]) -> list[Dialogue]:
    return [d for d in dialogues if split_of(d.id) == "dev"]


def _signal(name: str, picked: list[tuple[Dialogue, int]], labels: list[float], turns: int,
            aggregate: bool = False, grouped: bool = True) -> HumanSignal:
    return HumanSignal(name, [d.context(i, turns) for d, i in picked], [d.turns[i].text for d, i in picked],
                       [d.language for d, _ in picked], np.array(labels, dtype=np.float64),
                       [d.id for d, _ in picked] if grouped else None, aggregate)


def _convai2_dialogues(folder: Path) -> list[Dialogue]:
    return _dev([d for name in CONVAI2_FILES for d in read_convai2(Path(folder) / name)])


def convai2_signals(folder: Path, limit: int, turns: int, seed: int) -> list[HumanSignal]:
    dialogues = _convai2_dialogues(folder)
    bot = [(d, i) for d in dialogues for i, t in enumerate(d.turns) if i > 0 and t.meta.get("sender_class") == "Bot"]
    thumbs = [(d, i) for d, i in bot if d.turns[i].meta.get("evaluation_score") in (0, 1)]
    thumbs = random.Random(seed).sample(thumbs, min(limit, len(thumbs)))
    rated = [(d, i) for d, i in bot if isinstance(d.meta.get("eval_score"), int | float)]
    per_dialogue = max(1, limit // max(1, len({d.id for d, _ in rated})))
    rng, engaging = random.Random(seed + 1), []
    by_dialogue: dict[str, list[tuple[Dialogue, int]]] = {}
    for d, i in rated:
        by_dialogue.setdefault(d.id, []).append((d, i))
    for items in by_dialogue.values():
        engaging += rng.sample(items, min(per_dialogue, len(items)))
    return [_signal("convai2_thumbs", thumbs, [d.turns[i].meta["evaluation_score"] for d, i in thumbs], turns),
            _signal("convai2_engagingness", engaging, [d.meta["eval_score"] for d, _ in engaging], turns, True)]


def chitchat_signals(limit: int, turns: int, seed: int, per_conversation: int = 2) -> list[HumanSignal]:
    rated = [d for d in _dev(list(read_chitchat())) if d.meta.get("ratings") and len(d.turns) > per_conversation]
    rng = random.Random(seed)
    rng.shuffle(rated)
    picked = [(d, i) for d in rated[:max(1, limit // per_conversation)]
              for i in sorted(rng.sample(range(1, len(d.turns)), per_conversation))]
    return [_signal(f"chitchat_{key}", picked, [float(d.meta["ratings"][key]) for d, _ in picked], turns, True)
            for key in ("interesting", "witty")]


def topicalchat_signal(folder: Path, limit: int, turns: int, seed: int) -> HumanSignal:
    dialogues = _dev(read_topicalchat_folder(folder))
    rated = [(d, i) for d in dialogues for i, t in enumerate(d.turns)
             if i > 0 and t.meta.get("turn_rating") in TOPICALCHAT_RATINGS]
    picked = random.Random(seed).sample(rated, min(limit, len(rated)))
    return _signal("topicalchat_turn", picked, [TOPICALCHAT_RATINGS[d.turns[i].meta["turn_rating"]] for d, i in picked],
                   turns)


def hand_label_signals(path: Path) -> list[HumanSignal]:
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.append((row["context"], row["response"], row["language"], float(row["specific"]),
                         float(row["specific"]) * float(row["sensible"])))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}:{number}: not a hand-label row ({exc}); need context, response, language, "
                             "specific and sensible") from exc
    out = []
    for language in sorted({r[2] for r in rows}):
        part = [r for r in rows if r[2] == language]
        contexts = [Context((Turn("user", r[0]),)) for r in part]
        replies, languages = [r[1] for r in part], [language] * len(part)
        for column, name in ((3, "specific"), (4, "ssa")):
            labels = np.array([r[column] for r in part])
            out.append(HumanSignal(f"hand_{name}_{language}", contexts, replies, languages, labels))
    return out


def human_signals(sources: SignalSources, say: Callable[[str], None] = print) -> list[HumanSignal]:
    """Every signal whose source is given, dev splits only."""
    signals: list[HumanSignal] = []
    n, turns, seed = sources.limit, sources.context_turns, sources.seed
    if sources.convai2 is not None:
        signals += convai2_signals(sources.convai2, n, turns, seed)
    if sources.chitchat:
        signals += chitchat_signals(n, turns, seed)
    if sources.topicalchat is not None:
        signals.append(topicalchat_signal(sources.topicalchat, n, turns, seed))
    if sources.hand_labels is not None:
        signals += hand_label_signals(sources.hand_labels)
    for signal in signals:
        say(f"signal {signal.name}: {len(signal.replies)} replies")
    return [s for s in signals if len(s.replies) >= 10 and np.ptp(s.labels) > 0]


def train_replies(sources: SignalSources, per_language: int = 400) -> tuple[list[str], list[str]]:
    """``(replies, languages)`` from the *train* splits: what the length model of the residualized teacher
    is fitted on, so dev signals never shape it."""
    rng = random.Random(sources.seed)
    by_language: dict[str, list[str]] = {}
    dialogues: list[Dialogue] = []
    if sources.chitchat:
        dialogues += list(read_chitchat(limit=3000))
    if sources.convai2 is not None:
        dialogues += [d for name in CONVAI2_FILES for d in read_convai2(Path(sources.convai2) / name)]
    if sources.topicalchat is not None:
        dialogues += read_topicalchat_folder(sources.topicalchat)
    if sources.russian is not None:
        dialogues += list(read_anekdot_dialogues(sources.russian, limit=5000))
    for d in dialogues:
        if split_of(d.id) == "train":
            by_language.setdefault(d.language, []).extend(t.text for t in d.turns[1:] if t.text.strip())
    texts, languages = [], []
    for language, replies in sorted(by_language.items()):
        chosen = rng.sample(replies, min(per_language, len(replies)))
        texts += chosen
        languages += [language] * len(chosen)
    return texts, languages
