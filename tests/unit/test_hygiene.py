"""Response hygiene: echoes of the user's and the bot's last turns never reach the answer."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.hygiene import (
    HygieneConfig,
    HygieneFilter,
    char_shingles,
    containment,
    jaccard,
    similarity_key,
    turns_to_check,
)
from core.types import Candidate, Context, Turn
from dialog.serving.pipeline import Pipeline, PipelineRequest


def ctx(*texts: str, speakers: tuple[str, ...] | None = None) -> Context:
    names = speakers or tuple("user" if i % 2 == (len(texts) - 1) % 2 else "bot" for i in range(len(texts)))
    return Context(tuple(Turn(s, t) for s, t in zip(names, texts, strict=True)))


def cand(text: str, retrieval: float | None = None) -> Candidate:
    stages = {} if retrieval is None else {"retrieval": retrieval}
    return Candidate(text=text, source="bank", language="ru", stage_scores=stages)


def kept_texts(context: Context, texts: list[str], **config: object) -> list[str]:
    kept, _ = HygieneFilter(HygieneConfig(**config)).split(context, [cand(t) for t in texts])
    return [c.text for c in kept]


def test_similarity_key_ignores_case_punctuation_spacing_and_yo() -> None:
    assert similarity_key("  Как ДЕЛА?!  ") == similarity_key("как дела") == "как дела"
    assert similarity_key("Всё ещё тут.") == similarity_key("все еще тут")
    assert similarity_key("?!...") == ""


def test_set_measures() -> None:
    a, b = frozenset("abc"), frozenset("bcd")
    assert jaccard(a, b) == pytest.approx(0.5)
    assert jaccard(frozenset(), frozenset()) == 0.0
    assert containment(frozenset("bc"), a) == 1.0 and containment(frozenset(), a) == 0.0
    assert char_shingles("Да") == frozenset({" да", "да "})


@pytest.mark.parametrize(
    ("user", "echo"),
    [
        ("Привет! Как дела?", "Как дела?"),  # the case: a part of the user's turn
        ("Как дела?", "как дела"),  # same text after normalization
        ("Как дела?", "Как твои дела?"),  # one word added
        ("Что ты любишь читать?", "Что ты любишь почитать?"),  # a changed word
        ("How are you?", "How are you?"),
        ("I just got a puppy and have no idea how to train him.",
         "I just got a puppy and I have no idea how to train him!"),
        ("Hello! How are you doing today?", "How are you doing today?"),
    ],
)
def test_echoes_of_the_user_turn_are_removed(user: str, echo: str) -> None:
    assert kept_texts(ctx(user), [echo]) == []


@pytest.mark.parametrize(
    ("user", "answer"),
    [
        ("Привет! Как дела?", "Привет! У меня всё хорошо. А у тебя как дела?"),
        ("Как дела?", "Отлично, спасибо!"),
        ("Я люблю кошек.", "А я больше люблю собак."),
        ("How are you?", "Pretty good today, honestly. How is your day going?"),
        ("I just got a puppy and have no idea how to train him.",
         "Start with short sessions and lots of treats; puppies learn fast."),
    ],
)
def test_real_answers_are_kept(user: str, answer: str) -> None:
    assert kept_texts(ctx(user), [answer]) == [answer]


def test_bot_turn_is_checked_and_can_be_switched_off() -> None:
    context = ctx("Привет!", "Чем ты сегодня занимался?", "Да так, ничего особенного.")
    repeats = "Чем ты сегодня занимался?"
    assert kept_texts(context, [repeats, "Понятно. А вечером какие планы?"]) == ["Понятно. А вечером какие планы?"]
    assert kept_texts(context, [repeats], check_bot_turn=False) == [repeats]


def test_bot_turn_is_the_latest_turn_by_another_speaker() -> None:
    context = ctx("bot line", "user one", "user two", speakers=("bot", "user", "user"))
    assert [(role, t.text) for role, t in turns_to_check(context)] == [("user", "user two"), ("bot", "bot line")]
    unlabelled = ctx("a", "b", "c", speakers=("", "", ""))
    assert [t.text for _, t in turns_to_check(unlabelled)] == ["c", "b"]
    assert turns_to_check(Context(())) == []


def test_removals_name_turn_check_and_value_and_keep_order() -> None:
    pool = [cand("Ну и ладно."), cand("Как дела?"), cand("Хорошо, а у тебя?")]
    kept, removed = HygieneFilter().split(ctx("Привет! Давно не виделись. Как дела?"), pool)
    assert [c.text for c in kept] == ["Ну и ладно.", "Хорошо, а у тебя?"]
    assert len(removed) == 1
    assert (removed[0].candidate.text, removed[0].turn, removed[0].check) == ("Как дела?", "user", "contained")
    assert removed[0].value == pytest.approx(1.0)


def test_cosine_check_only_on_single_turn_contexts_and_only_when_set() -> None:
    near = cand("Совсем другие слова здесь.", retrieval=0.97)
    assert HygieneFilter().split(ctx("Как дела?"), [near])[0] == [near]  # off by default
    on = HygieneFilter(HygieneConfig(cosine=0.95))
    kept, removed = on.split(ctx("Как дела?"), [near, cand("Другое.", retrieval=0.9)])
    assert [c.text for c in kept] == ["Другое."] and removed[0].check == "cosine"
    # With earlier turns the retrieval query is not the last turn alone: its cosine says nothing here.
    assert on.split(ctx("Привет.", "Хай.", "Как дела?"), [near])[0] == [near]


def test_empty_and_punctuation_only_texts_never_collide() -> None:
    assert kept_texts(ctx("?!"), ["?!", "..."]) == ["?!", "..."]


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_bad_thresholds_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="char_jaccard"):
        HygieneFilter(HygieneConfig(char_jaccard=bad))


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="абвгдеёжзик ABCdef.,!?", min_size=1, max_size=40))
def test_a_verbatim_copy_of_the_user_turn_is_always_removed(text: str) -> None:
    if not similarity_key(text):
        return
    assert kept_texts(ctx(text), [text.upper() + "!"]) == []


class Scripted:
    name = "bank"

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts

    def candidates(self, context: Context, language: str, k: int, deadline: float) -> list[Candidate]:
        return [Candidate(text=t, source="bank", language=language, phrase_id=i + 1, score=1.0 - i / 100,
                          stage_scores={"retrieval": 1.0 - i / 100}) for i, t in enumerate(self.texts)]


def test_pipeline_filters_before_the_cut_and_explains_removals() -> None:
    source = Scripted(["Как дела?", "Привет! Как дела?", "Нормально. А у тебя как?", "Отлично!", "Так себе."])
    pipeline = Pipeline([source], pool_k=10)
    request = PipelineRequest(ctx("Привет! Как дела?"), top_k=2, deadline=time.monotonic() + 10)
    result = pipeline.respond(request)
    # The two echoes ranked first; the cut still returns two real answers.
    assert [c.text for c in result.candidates] == ["Нормально. А у тебя как?", "Отлично!"]
    assert result.removed == []  # only with explain
    request.explain = True
    explained = pipeline.respond(request)
    assert sorted((r.candidate.text, r.turn, r.check) for r in explained.removed) == [
        ("Как дела?", "user", "token_jaccard"), ("Привет! Как дела?", "user", "same_text")]
