"""Scoring, bank scoring and generation on a tiny random-weight Llama: mechanics, not language quality."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from core.bank.store import PhraseBank
from core.lm import bank_scores
from core.lm.bank_scores import load_bank_scores, score_bank
from core.lm.scoring import ContextScorer, score_replies, score_texts
from core.lm.wrapper import DecoderLM, LMOptions, LMUnavailable, NullLM, native_bf16, resolve_dtype
from core.models.registry import all_specs
from core.types import Context, Turn
from dialog.generation.filters import FilterConfig, ReplyFilter
from dialog.generation.generator import GenerationConfig, LMGenerator

from tiny_models import build_tiny_decoder

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def _single_thread(one_torch_thread: None) -> None:
    """Every LM test here runs on one torch thread (see tests/conftest.py)."""


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_decoder(tmp_path_factory.mktemp("tiny-lm") / "tiny")


@pytest.fixture(scope="module")
def tiny_lm(tiny_dir: Path) -> DecoderLM:
    return DecoderLM.from_dir(tiny_dir)


TEXTS = ["Hi", "Hello there, how are you today?", "Привет! Как дела?", "I like green tea.",
         "Сегодня отличная погода, пойдём гулять вечером в парк, если не будет дождя.", "ok"]


def test_batched_scores_equal_one_at_a_time(tiny_lm: DecoderLM) -> None:
    batched = score_texts(tiny_lm, TEXTS, batch_size=4)
    for text, together in zip(TEXTS, batched, strict=True):
        alone = score_texts(tiny_lm, [text], batch_size=1)[0]
        assert together.n_tokens == alone.n_tokens == len(tiny_lm.encode(text))
        assert together.sum_logprob == pytest.approx(alone.sum_logprob, abs=1e-4)
        assert together.mean_logprob == pytest.approx(alone.sum_logprob / alone.n_tokens, abs=1e-4)


def test_scores_match_a_plain_forward_pass(tiny_lm: DecoderLM) -> None:
    import torch

    text = "Hello there, how are you today?"
    ids = torch.tensor([[tiny_lm.bos_id, *tiny_lm.encode(text)]])
    with torch.no_grad():
        logprobs = tiny_lm.model(input_ids=ids).logits.log_softmax(-1)[0, :-1]
    expected = float(logprobs.gather(-1, ids[0, 1:, None]).sum())
    assert score_texts(tiny_lm, [text])[0].sum_logprob == pytest.approx(expected, abs=1e-4)


def test_conditional_scores_are_batch_independent(tiny_lm: DecoderLM) -> None:
    context = Context((Turn("user", "Hello there!"), Turn("bot", "Hi."), Turn("user", "How are you today?")))
    replies = ["I like green tea.", "ok", "Сегодня отличная погода."]
    together = score_replies(tiny_lm, context, replies, "en", batch_size=8)
    for reply, score in zip(replies, together, strict=True):
        alone = score_replies(tiny_lm, context, [reply], "en", batch_size=1)[0]
        assert score.conditional.sum_logprob == pytest.approx(alone.conditional.sum_logprob, abs=1e-4)
        assert score.pmi_sum == pytest.approx(score.conditional.sum_logprob - score.unconditional.sum_logprob)
    given = score_replies(tiny_lm, context, replies, "en", unconditional=[t.unconditional for t in together])
    assert [g.pmi_mean for g in given] == pytest.approx([t.pmi_mean for t in together], abs=1e-4)


def test_empty_text_is_refused_and_null_lm_gives_nan(tiny_lm: DecoderLM) -> None:
    with pytest.raises(ValueError, match="empty"):
        score_texts(tiny_lm, ["fine", "  "])
    score = score_texts(NullLM(), ["fine"])[0]
    assert math.isnan(score.sum_logprob) and score.n_tokens == 0
    with pytest.raises(LMUnavailable, match="models prepare"):
        LMGenerator(NullLM())


def test_context_scorer_gives_the_blender_per_token_means(tiny_lm: DecoderLM) -> None:
    context = Context((Turn("user", "Привет! Как дела?"),))
    rows = ContextScorer(tiny_lm).score(context, ["Отлично, спасибо.", "ok"])
    expected = score_replies(tiny_lm, context, ["Отлично, спасибо.", "ok"], "ru")
    for row, score in zip(rows, expected, strict=True):
        assert row["cond_logprob"] == pytest.approx(score.conditional.mean_logprob)
        assert row["pmi"] == pytest.approx(row["cond_logprob"] - row["uncond_logprob"])
    assert all(math.isnan(v) for v in ContextScorer(NullLM()).score(context, ["ok"])[0].values())


def test_decoder_specs_and_directory_errors(tmp_path: Path) -> None:
    specs = {name: spec for name, spec in all_specs().items() if spec.kind == "decoder"}
    assert set(specs) == {"gemma-3-270m", "smollm2-135m"}
    assert specs["gemma-3-270m"].default and not specs["smollm2-135m"].default
    assert "ru" in specs["gemma-3-270m"].languages and specs["smollm2-135m"].languages == ("en",)
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        DecoderLM.from_dir(tmp_path)


def test_options_are_validated_and_int8_scores_close(tiny_dir: Path, tiny_lm: DecoderLM) -> None:
    with pytest.raises(ValueError, match="dtype"):
        DecoderLM.from_dir(tiny_dir, LMOptions(dtype="fp8"))
    int8 = DecoderLM.from_dir(tiny_dir, LMOptions(dtype="int8"))
    assert int8.lm_id.endswith(":int8") and tiny_lm.lm_id.endswith(":fp32")
    assert int8.lm_id.split(":")[0] == tiny_lm.lm_id.split(":")[0]
    fp32, quantized = score_texts(tiny_lm, TEXTS[:3]), score_texts(int8, TEXTS[:3])
    assert [q.mean_logprob for q in quantized] == pytest.approx([f.mean_logprob for f in fp32], rel=0.05)


@pytest.mark.parametrize("native", [True, False])
def test_auto_dtype_follows_native_bf16_and_names_the_real_precision(
        tiny_dir: Path, monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    import torch

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert native_bf16("cpu") is native
    assert resolve_dtype("auto", "cpu") == ("bf16" if native else "fp32")
    assert resolve_dtype("int8", "cpu") == "int8"
    lm = DecoderLM.from_dir(tiny_dir, LMOptions(dtype="auto", device="cpu"))
    expected = "bf16" if native else "fp32"
    assert lm.lm_id.endswith(f":{expected}") and lm.options.dtype == expected
    assert next(lm.model.parameters()).dtype == (torch.bfloat16 if native else torch.float32)


def test_generation_returns_by_the_deadline_with_what_finished(tiny_lm: DecoderLM) -> None:
    config = GenerationConfig(n_candidates=10_000, samples_per_call=1, max_new_tokens=24, keep_truncated=True)
    generator = LMGenerator(tiny_lm, config, ReplyFilter(FilterConfig(check_language=False), blocklists=[]))
    context = Context((Turn("user", "Hello there, how are you today?"),))
    started = time.monotonic()
    samples = generator.sample(context, "en", started + 1.0)
    elapsed = time.monotonic() - started
    assert elapsed < 1.0 + 0.1
    assert 0 < len(samples) < 10_000
    assert all(s.mean_logprob <= 0 for s in samples)
    found = generator.candidates(context, "en", 3, time.monotonic() + 0.5)
    assert len(found) <= 3 and all(c.source == "generated" and c.phrase_id is None for c in found)
    assert [c.score for c in found] == sorted((c.score for c in found), reverse=True)
    assert all(c.stage_scores["gen_logprob"] == c.score for c in found)
    assert generator.candidates(context, "en", 3, time.monotonic() - 1) == []


def _bank(path: Path, n: int) -> PhraseBank:
    bank = PhraseBank(path)
    for i in range(n):
        bank.add(f"Phrase number {i}: " + "tea " * (i % 5), "en")
    return bank


def _rows(path: Path) -> dict[int, tuple]:
    with sqlite3.connect(path) as conn:
        return {row[0]: row[1:] for row in conn.execute(
            "SELECT phrase_id, phrase_version, lm_id, sum_logprob, scored_at FROM lm_scores")}


def test_bank_scoring_resumes_after_kill_9(tmp_path: Path, tiny_dir: Path, tiny_lm: DecoderLM,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "bank.sqlite"
    _bank(db, 40).close()
    log = tmp_path / "scored.log"
    script = textwrap.dedent(f"""
        import time
        from core.bank.store import PhraseBank
        from core.lm import bank_scores
        from core.lm.wrapper import DecoderLM
        original = bank_scores.score_texts
        def slow(lm, texts, batch_size):
            out = original(lm, texts, batch_size)
            with open({str(log)!r}, "a") as handle:
                handle.write("".join(t + "\\n" for t in texts))
            time.sleep(0.4)
            return out
        bank_scores.score_texts = slow
        bank_scores.score_bank(PhraseBank({str(db)!r}), DecoderLM.from_dir({str(tiny_dir)!r}), batch_size=4,
                               progress=False)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    job = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and job.poll() is None and len(_rows(db)) < 8:
            time.sleep(0.05)
        assert job.poll() is None, "the scoring job ended before it could be killed"
        os.kill(job.pid, signal.SIGKILL)
    finally:
        job.wait()
    before = _rows(db)
    assert 8 <= len(before) < 40

    rescored: list[str] = []
    original = bank_scores.score_texts
    monkeypatch.setattr(bank_scores, "score_texts",
                        lambda lm, texts, batch_size: rescored.extend(texts) or original(lm, texts, batch_size))
    bank = PhraseBank(db)
    report = score_bank(bank, tiny_lm, batch_size=4, progress=False)
    texts = {p.id: p.text for p in bank.phrases()}
    assert sorted(rescored) == sorted(texts[i] for i in texts if i not in before)
    assert report.scored == 40 - len(before) and report.already_scored == len(before)
    after = _rows(db)
    assert set(after) == set(texts)
    assert all(after[i] == row for i, row in before.items())
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    rescored.clear()
    edited = bank.update(3, who="editor", text="A brand new text for phrase three")
    assert len(load_bank_scores(bank, tiny_lm.lm_id)) == 39
    assert score_bank(bank, tiny_lm, batch_size=4, progress=False).scored == 1
    assert rescored == [edited.text]
    scores = load_bank_scores(bank, tiny_lm.lm_id)
    assert len(scores) == 40
    assert scores[3].sum_logprob == pytest.approx(score_texts(tiny_lm, [edited.text])[0].sum_logprob, abs=1e-6)
    with pytest.raises(LMUnavailable):
        score_bank(bank, NullLM())
    bank.close()
