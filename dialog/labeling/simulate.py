"""Simulated raters with scripted noise, answering against a planted truth.

Tests use them to check that the pipeline recovers what was planted (and catches a careless rater);
``demo`` runs the whole export -> answers -> import -> report loop without a labeling platform.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from core.text import detect_language
from core.types import Context, Turn
from dialog.labeling.formats import write_answers
from dialog.labeling.tasks import (
    BINARY,
    CHOICE_SCORES,
    FIVE_POINT,
    KEY_NAME,
    PAIRWISE,
    POINTWISE,
    Honeypot,
    load_export,
    load_key,
)

_EPOCH = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
_SUFFIX = {"jsonl": "jsonl", "toloka": "tsv", "labelstudio": "json"}


@dataclass(frozen=True)
class Truth:
    """What a perfect rater would say about one system's reply to one context."""

    sensible: bool
    specific: bool

    def __post_init__(self) -> None:
        if self.specific and not self.sensible:
            raise ValueError("a specific reply must be sensible (Meena): use Truth(True, True)")

    @property
    def score(self) -> int:
        return int(self.sensible) + int(self.specific)


@dataclass(frozen=True)
class SimulatedRater:
    """``accuracy``: chance each answer is the true one. ``careless``: answers at random.
    ``position_bias``: chance a pairwise answer just picks side A."""

    rater_id: str
    accuracy: float = 0.9
    careless: bool = False
    position_bias: float = 0.0

    def pointwise(self, truth: Truth, rng: random.Random) -> tuple[bool, bool | None]:
        if self.careless:
            sensible = rng.random() < 0.5
            return sensible, (rng.random() < 0.5) if sensible else None
        sensible = truth.sensible if rng.random() < self.accuracy else not truth.sensible
        if not sensible:
            return False, None
        return sensible, truth.specific if rng.random() < self.accuracy else not truth.specific

    def pairwise(self, true_choice: str, scale: str, rng: random.Random) -> str:
        options = list(CHOICE_SCORES[scale])
        if self.careless:
            return rng.choice(options)
        if rng.random() < self.position_bias:
            return "a_better" if scale == FIVE_POINT else "a"
        if rng.random() < self.accuracy:
            return true_choice
        return rng.choice([o for o in options if o != true_choice])


def true_choice(truth_a: Truth, truth_b: Truth, scale: str, rng: random.Random) -> str:
    diff = truth_a.score - truth_b.score
    if scale == BINARY:
        return "a" if diff > 0 else "b" if diff < 0 else rng.choice(["a", "b"])
    return {2: "a_much_better", 1: "a_better", 0: "same", -1: "b_better", -2: "b_much_better"}[diff]


def simulate_answers(export_dir: Path, raters: Sequence[SimulatedRater], truth: Mapping[tuple[str, str], Truth],
                     key_path: Path | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """Answers from ``overlap`` raters per task; ``truth[(context_id, system_name)]`` for every item."""
    export = load_export(export_dir)
    key = load_key(key_path or Path(export_dir) / KEY_NAME, export)
    rng = random.Random(f"{seed}:simulate")
    scale = export.scale or FIVE_POINT
    answers: list[dict[str, Any]] = []
    for task_id, task in export.tasks.items():
        golden = task.golden or {}
        if export.mode == POINTWISE:
            first = key.names(task_id)[0] if not task.honeypot else ""
            item = Truth(golden["sensible"], golden["specific"]) if task.honeypot else truth[(task.context_id, first)]
        elif task.honeypot:
            good = "a_better" if scale == FIVE_POINT else "a"
            choice = good if golden["better"] == "a" else good.replace("a", "b", 1)
        else:
            a, b = key.names(task_id)
            choice = true_choice(truth[(task.context_id, a)], truth[(task.context_id, b)], scale, rng)
        for rater in rng.sample(list(raters), min(export.overlap, len(raters))):
            stamp = (_EPOCH + timedelta(seconds=len(answers))).isoformat().replace("+00:00", "Z")
            answer: dict[str, Any] = {"task_id": task_id, "rater": rater.rater_id, "submitted_at": stamp}
            if export.mode == POINTWISE:
                answer["sensible"], answer["specific"] = rater.pointwise(item, rng)
            else:
                answer["choice"] = rater.pairwise(choice, scale, rng)
            answers.append(answer)
    return answers


def write_simulated(answers: Sequence[Mapping[str, Any]], export_dir: Path, path: Path, fmt: str) -> Path:
    export = load_export(export_dir)
    return write_answers(answers, path, fmt, export.tasks, export.contexts, export.mode)


_TOPICS = [("I just adopted a puppy!", "Congratulations! What breed is it, and have you picked a name yet?"),
           ("My train was late again today.", "Again? That is the third time this week on your line, isn't it?"),
           ("I'm learning to bake sourdough.", "Nice! How old is your starter, and does it rise well?"),
           ("Я начал бегать по утрам.", "Здорово! Сколько километров пробегаешь и где обычно бегаешь?"),
           ("Вчера был на концерте.", "О, на чьём? Музыканты играли вживую или под фонограмму?"),
           ("Не могу выбрать книгу на выходные.", "Попробуй «Пикник на обочине» — коротко и затягивает.")]


def demo_setup(n_contexts: int = 30) -> tuple[dict[str, Context], dict[str, Any], dict[tuple[str, str], Truth],
                                             list[Honeypot], list[Honeypot]]:
    """Toy contexts, three toy systems with known quality, their planted truth, and honeypots."""
    contexts, replies = {}, {}
    for n in range(n_contexts):
        user, good = _TOPICS[n % len(_TOPICS)]
        cid = f"ctx-{n + 1:03d}"
        contexts[cid] = Context((Turn("user", f"{user} ({n + 1})"),))
        replies[cid] = good
    by_text = {contexts[cid].last_text: reply for cid, reply in replies.items()}
    systems = {
        "bank": lambda c: by_text[c.last_text],
        "generic": lambda c: "Понятно." if detect_language(c.last_text) == "ru" else "I see.",
        "echo": lambda c: c.last_text,
    }
    truth = {}
    for i, cid in enumerate(contexts):
        truth[(cid, "bank")] = Truth(True, i % 5 != 0)
        truth[(cid, "generic")] = Truth(True, False)
        truth[(cid, "echo")] = Truth(False, False)
    question = Context((Turn("user", "What is the capital of France?"),))
    pointwise = [Honeypot(question, "Paris, of course.", True, True),
                 Honeypot(question, "Okay.", True, False),
                 Honeypot(question, "My cat prefers blue spoons on Tuesdays.", False, False)]
    pairwise = [Honeypot(question, better="Paris, of course.", worse="My cat prefers blue spoons."),
                Honeypot(Context((Turn("user", "Как дела?"),)), better="Отлично, спасибо! А у тебя?",
                         worse="Сорок два трактора.")]
    return contexts, systems, truth, pointwise, pairwise


def demo(work_dir: Path, store: Any, fmt: str = "jsonl", mode: str = POINTWISE, seed: int = 0) -> dict[str, Any]:
    """The whole loop on toy data: five careful raters and one careless one (caught by honeypots)."""
    from dialog.labeling.report import build_report
    from dialog.labeling.workflow import export_pairwise, export_pointwise, import_labels

    work_dir = Path(work_dir)
    contexts, systems, truth, point_pots, pair_pots = demo_setup()
    export_dir = work_dir / "export"
    if mode == PAIRWISE:
        summary = export_pairwise(contexts, systems, export_dir, fmt, honeypots=pair_pots, honeypot_rate=0.15,
                                  seed=seed)
    else:
        summary = export_pointwise(contexts, systems, export_dir, fmt, honeypots=point_pots, honeypot_rate=0.15,
                                   seed=seed)
    raters = [SimulatedRater(f"rater-{n}", 0.9) for n in range(1, 6)] + [SimulatedRater("rater-6", careless=True)]
    answers = simulate_answers(export_dir, raters, truth, seed=seed)
    answers_path = write_simulated(answers, export_dir, work_dir / f"answers.{_SUFFIX[fmt]}", fmt)
    imported = import_labels(export_dir, answers_path, fmt, store)
    report = build_report(store, export_dir, out_dir=work_dir / "report", seed=seed)
    return {"export": summary, "import": imported, "report": report, "answers": str(answers_path)}


def scripted_truth(export_dir: Path, key_path: Path | None = None) -> dict[tuple[str, str], Truth]:
    """A planted truth for any export, from a transparent rule, so the CLI loop can run without people.

    Sensible: the reply is in the context's language and does not just repeat it. Specific: also at
    least six words and no generic pattern. It is a stand-in for raters, not a quality judgement.
    """
    from ranker.features.generic import is_generic

    export = load_export(export_dir)
    key = load_key(key_path or Path(export_dir) / KEY_NAME, export)
    truth: dict[tuple[str, str], Truth] = {}
    for task_id, task in export.tasks.items():
        if task.honeypot:
            continue
        context = export.contexts[task.context_id]
        language = detect_language(context.last_text)
        names = key.names(task_id)
        # Pointwise tasks carry one reply that several systems may share; pairwise ones one per side.
        replies = task.responses * len(names) if len(task.responses) == 1 else task.responses
        for name, reply in zip(names, replies, strict=True):
            sensible = detect_language(reply, language) == language and reply.strip() != context.last_text.strip()
            specific = sensible and len(reply.split()) >= 6 and not is_generic(reply, language)
            truth[(task.context_id, name)] = Truth(sensible, specific)
    return truth
