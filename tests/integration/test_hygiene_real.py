"""The issue's echo ("Как дела?" answered with "Как дела?") on the real encoder, index and pipeline.

The starter bank holds no bare "Как дела?", so a copy of the session workspace gets the echoes added
(an incremental index update encodes just those). Each echo must be retrieved (it shows up among the
removals) and must not be answered: that proves the filter, not the bank, kept it out.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.bank.store import PhraseBank
from core.hygiene import similarity_key
from core.types import Context, Turn
from dialog.serving.assembly import Assembled, build_pipeline
from dialog.serving.pipeline import PipelineRequest
from retriever.bank_index import update_index
from retriever.encoder import Encoder

from workspace import make_settings

pytestmark = pytest.mark.real

ECHOES = {"ru": ["Как дела?", "Привет! Как дела?", "Что ты любишь читать?"],
          "en": ["How are you?", "Hello! How are you doing today?", "What do you like to read?"]}


@pytest.fixture(scope="module")
def assembled(real_home: Path, models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Assembled]:
    home = tmp_path_factory.mktemp("hygiene-home")
    shutil.copytree(real_home, home, dirs_exist_ok=True)
    settings = make_settings(home, models_dir)
    with PhraseBank(settings.bank_path) as bank:
        for language, texts in ECHOES.items():
            for text in texts:
                if bank.find_text(text) is None:
                    bank.add(text, language, who="tests")
        report = update_index(bank, Encoder.from_config(settings), settings)
        assert not report.full_rebuild, report.reason  # the copied index was reused: only the echoes encoded
    built = build_pipeline(settings)
    yield built
    built.close()


@pytest.mark.parametrize(("turns", "echo"), [
    (["Как дела?"], "Как дела?"),
    (["Привет! Как дела?"], "Как дела?"),
    (["Что ты любишь читать?"], "Что ты любишь читать?"),
    (["How are you?"], "How are you?"),
    (["Hello! How are you doing today?"], "How are you?"),
    # The bot's own last turn is not repeated either.
    (["Привет!", "Что ты любишь читать?", "Не знаю даже, а ты?"], "Что ты любишь читать?"),
    (["Hi!", "What do you like to read?", "Hard to say. And you?"], "What do you like to read?"),
])
def test_real_pipeline_never_answers_with_an_echo(assembled: Assembled, turns: list[str], echo: str) -> None:
    speakers = ["user" if i % 2 == (len(turns) - 1) % 2 else "bot" for i in range(len(turns))]
    context = Context(tuple(Turn(s, t) for s, t in zip(speakers, turns, strict=True)))
    result = assembled.pipeline.respond(
        PipelineRequest(context, top_k=5, deadline=time.monotonic() + 60, explain=True))
    assert result.candidates, "the pipeline must still answer"
    answered = {similarity_key(c.text) for c in result.candidates}
    assert similarity_key(echo) not in answered
    for turn in turns[-2:]:
        assert similarity_key(turn) not in answered
    removed = {similarity_key(r.candidate.text) for r in result.removed}
    assert similarity_key(echo) in removed, "the echo was not even retrieved: the test would prove nothing"
