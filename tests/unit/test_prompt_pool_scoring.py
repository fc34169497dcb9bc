"""Demonstration pool (train split only), prompt fitting by whole turns, and cached frozen-LM scoring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prompt_helpers import dialogues, make_pool

from core.corpora import context_response_pairs, split_of
from core.lm.prompts import fit_prompt, prompt_format
from core.types import Context, Turn
from retriever.prompt_pool import PoolError, load_pool, save_pool

from tiny_models import build_tiny_decoder


@pytest.fixture(autouse=True)
def _single_thread(one_torch_thread: None) -> None:
    """Tiny models and matrix work run several times faster on one torch thread on a shared machine."""


def test_pool_holds_no_dev_or_test_conversation() -> None:
    items = dialogues(200)
    splits = {split_of(d.id) for d in items}
    assert {"dev", "test"} <= splits  # the input really offers held-out conversations
    pool = make_pool(200)
    assert len(pool) == sum(split_of(d.id) == "train" for d in items)
    assert all(split_of(d.conversation_id) == "train" and d.split == "train" for d in pool.demonstrations)
    assert {d.language for d in pool.demonstrations} == {"en", "ru"}


def test_pool_leaves_out_excerpts_with_abuse() -> None:
    from core.blocklist import packaged_blocklists
    from core.corpora import Dialogue, DialogueTurn
    from retriever.prompt_pool import pool_entries

    word = next(w for w in sorted(packaged_blocklists()["ru"].words) if not w.endswith("*"))
    clean, dirty = [], []
    for i in range(400):
        if split_of(f"b:{i}") != "train":
            continue
        reply = f"ну ты {word} {i}" if i % 2 else f"ну ты даёшь {i}"
        (dirty if i % 2 else clean).append(f"b:{i}")
        turns = (DialogueTurn("A", f"Привет {i}"), DialogueTurn("B", reply))
        entries = pool_entries("b", [Dialogue(f"b:{i}", "ru", turns)], 10)
        assert len(entries) == (0 if i % 2 else 1)
    assert clean and dirty


def test_load_refuses_a_pool_with_a_dev_conversation(tmp_path: Path) -> None:
    pool = make_pool()
    save_pool(tmp_path / "pool", pool, {})
    loaded, manifest = load_pool(tmp_path / "pool")
    assert loaded == pool and manifest.identity == pool.identity
    dev_id = next(f"toy:{i}" for i in range(1000) if split_of(f"toy:{i}") == "dev")
    rows = [json.loads(line) for line in (tmp_path / "pool" / "pool.jsonl").read_text().splitlines()]
    rows[0]["conversation_id"] = dev_id  # the split field still says "train": it must not be trusted
    (tmp_path / "pool" / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(PoolError, match="hash"):
        load_pool(tmp_path / "pool")
    from dataclasses import replace

    from retriever.prompt_pool import PromptPool, check_train_only
    leaked = PromptPool((replace(pool.demonstrations[0], conversation_id=dev_id), *pool.demonstrations[1:]))
    with pytest.raises(PoolError, match="dev/test"):
        check_train_only(leaked, "x")


def test_fit_prompt_drops_demonstrations_then_old_turns_never_part_of_a_turn() -> None:
    fmt = prompt_format("en")
    context = Context(tuple(Turn("A", t) for t in ["first turn here", "second turn", "the last question?"]))
    demos = [(Context((Turn("A", "demo one q"),)), "demo one a"), (Context((Turn("A", "demo two q"),)), "demo two a")]
    words = lambda text: len(text.split())  # noqa: E731
    full = fit_prompt(fmt, demos, context, 3, 1000, words)
    assert full.demonstrations == 2 and full.turns == 3 and not full.over_budget
    assert full.text.index("demo one") < full.text.index("demo two") < full.text.index("first turn")
    assert full.text.endswith("User: the last question?\nBot:")
    budget = words(fmt.prompt_with_demonstrations(demos[1:], context))
    one = fit_prompt(fmt, demos, context, 3, budget, words)
    assert one.demonstrations == 1 and "demo one" not in one.text and "demo two" in one.text
    no_demo = fit_prompt(fmt, demos, context, 3, words(fmt.dialogue_prompt(context)) - 1, words)
    assert no_demo.demonstrations == 0 and no_demo.turns == 2 and "first turn" not in no_demo.text
    for line in no_demo.text.splitlines()[:-1]:  # every kept turn is whole
        assert line.split(": ", 1)[1] in {t.text for t in context.turns}
    tiny = fit_prompt(fmt, demos, context, 3, 1, words)
    assert tiny.over_budget and tiny.turns == 1


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory):
    from core.lm.wrapper import DecoderLM

    return DecoderLM.from_dir(build_tiny_decoder(tmp_path_factory.mktemp("lm") / "lm"))


def test_zero_shot_prompt_scores_like_score_pairs(tiny_lm) -> None:
    from core.lm.scoring import score_pairs
    from retriever.prompt_scores import ScoringConfig, build_prompt, score_prompts

    pair = next(iter(context_response_pairs(dialogues(2)[:1], context_turns=3)))
    config = ScoringConfig(max_prompt_tokens=256)
    prompt = build_prompt(tiny_lm, [], pair.context, "en", config)
    [mean] = score_prompts(tiny_lm, [prompt], [pair.response], ["en"], None, config, progress=False)
    [expected] = score_pairs(tiny_lm, [pair.context], [pair.response], ["en"], context_turns=3)
    assert mean == pytest.approx(expected.conditional.mean_logprob, abs=1e-4)


def test_scoring_samples_l_candidates_outside_the_own_conversation_and_caches(tiny_lm, tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import retriever.prompt_scores as scoring

    pool = make_pool()
    examples = [p for d in dialogues(40) if split_of(d.id) == "train"
                for p in context_response_pairs([d], context_turns=3)][:6]
    config = scoring.ScoringConfig(candidates=4, batch_size=4, chunk=5)
    cache = scoring.ScoreCache(tmp_path / "scores.json")
    first = scoring.score_examples(tiny_lm, pool, examples, config, cache, progress=False)
    assert len(first) == len(examples)
    for example, scored in zip(examples, first, strict=True):
        assert len(scored.candidates) == 4 and len(set(scored.candidates)) == 4
        for i in scored.candidates:
            demo = pool.by_id(i)
            assert demo.language == example.language and demo.conversation_id != example.conversation_id
        assert scored.best == scored.candidates[max(range(4), key=lambda i: scored.scores[i])]
    assert len(first[0].scores) == 4 and len(set(first[0].scores)) > 1  # the demonstration matters
    monkeypatch.setattr(scoring, "score_continuations", lambda *a, **k: pytest.fail("cache was not used"))
    again = scoring.score_examples(tiny_lm, pool, examples, config, scoring.ScoreCache(tmp_path / "scores.json"),
                                   progress=False)
    assert again == first
