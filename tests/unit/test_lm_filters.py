"""Reply filters and dialogue prompt formats: no model needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.blocklist import Blocklist
from core.lm.prompts import prompt_format
from core.types import Context, Turn
from dialog.generation import filters
from dialog.generation.filters import FilterConfig, ReplyFilter, load_blocklists

CONTEXT = Context((Turn("user", "Hi! What are you doing this weekend?"),))
RU_CONTEXT = Context((Turn("user", "Привет! Как прошли выходные?"),))


@pytest.fixture
def reply_filter() -> ReplyFilter:
    return ReplyFilter(FilterConfig(min_chars=3, max_chars=60), [Blocklist.from_lines(["darn", "frick*"])])


@pytest.mark.parametrize(("reply", "reason"), [
    ("", filters.EMPTY),
    ("  ...  ", filters.EMPTY),
    ("ok", filters.TOO_SHORT),
    ("I will " + "walk and talk " * 10, filters.TOO_LONG),
    ("hi! what are you doing this weekend", filters.REPEATS_CONTEXT),
    ("What are you doing this weekend?", filters.REPEATS_CONTEXT),
    ("no no no no no", filters.DEGENERATE),
    ("Я иду в поход с друзьями.", filters.WRONG_LANGUAGE),
    ("Darn, I have to work.", filters.BLOCKLISTED),
    ("Fricking work again.", filters.BLOCKLISTED),
])
def test_bad_replies_are_dropped_with_a_reason(reply_filter: ReplyFilter, reply: str, reason: str) -> None:
    assert reply_filter.reason(reply, CONTEXT, "en") == reason


@pytest.mark.parametrize("reply", ["Going hiking with friends!", "Nothing much, you?", "I darned my socks."])
def test_good_replies_pass(reply_filter: ReplyFilter, reply: str) -> None:
    assert reply_filter.reason(reply, CONTEXT, "en") is None


def test_apply_keeps_first_of_duplicates_and_reports_drops(reply_filter: ReplyFilter) -> None:
    replies = ["Going hiking!", "going  HIKING", "ok", "Reading a book.", "Going hiking!"]
    result = reply_filter.apply(replies, CONTEXT, "en")
    assert result.kept == [0, 3]
    assert result.dropped == {1: filters.DUPLICATE, 2: filters.TOO_SHORT, 4: filters.DUPLICATE}


def test_russian_replies_to_russian_context() -> None:
    reply_filter = ReplyFilter(FilterConfig(), [])
    assert reply_filter.reason("Отлично, ездили на дачу.", RU_CONTEXT, "ru") is None
    assert reply_filter.reason("Great, we went to the lake.", RU_CONTEXT, "ru") == filters.WRONG_LANGUAGE
    assert reply_filter.reason("привет как прошли выходные", RU_CONTEXT, "ru") == filters.REPEATS_CONTEXT


def test_packaged_and_editor_blocklists(tmp_path: Path) -> None:
    extra = tmp_path / "extra.txt"
    extra.write_text("# editor additions\nbroccoli\nzucchin*\n", encoding="utf-8")
    reply_filter = ReplyFilter(FilterConfig(extra_blocklist=extra))
    assert reply_filter.reason("I hate broccoli.", CONTEXT, "en") == filters.BLOCKLISTED
    assert reply_filter.reason("Zucchinis again!", CONTEXT, "en") == filters.BLOCKLISTED
    assert len(reply_filter.blocklists) == len(load_blocklists()) + 1
    packaged = load_blocklists()
    assert packaged, "the packaged blocklists (core/data/blocklist_*.txt) did not load"
    assert ReplyFilter(FilterConfig(), packaged).reason("Ну ты и сука.", RU_CONTEXT, "ru") == filters.BLOCKLISTED


def test_bad_filter_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="extra blocklist"):
        ReplyFilter(FilterConfig(extra_blocklist=tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="min_chars"):
        ReplyFilter(FilterConfig(min_chars=10, max_chars=5), [])


def test_prompt_formats_label_turns_backwards_from_the_last() -> None:
    context = Context((Turn("a", "Привет!"), Turn("b", "Здравствуй.\nЧто нового?"), Turn("a", "Всё хорошо.")))
    assert prompt_format("ru").dialogue_prompt(context) == (
        "Собеседник: Привет!\nТы: Здравствуй. Что нового?\nСобеседник: Всё хорошо.\nТы:"
    )
    assert prompt_format("en").dialogue_prompt(context, max_turns=1) == "User: Всё хорошо.\nBot:"
    assert prompt_format("xx") == prompt_format("en")
    assert prompt_format("en").reply_continuation("Fine,\n thanks ") == " Fine, thanks"
