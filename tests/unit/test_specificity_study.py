"""The specificity-teacher study: length model, partial Spearman intervals, the choice rule, dev-only signals,
and `repliq eval teachers` end to end on a tiny LM."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from core.config import Settings
from core.corpora import split_of
from core.lm.scoring import LMScore, ReplyScore
from core.types import Context, Turn
from ranker.idf import IdfTable
from rl.specificity_signals import SignalSources, convai2_signals, hand_label_signals, train_replies
from rl.specificity_study import (
    LengthModel,
    choose_teacher,
    markdown_table,
    nidf_rarity,
    partial_with_interval,
    study_candidates,
)
from rl.teacher import HumanSignal

HAND_LABELS = Path(__file__).resolve().parents[1] / "data" / "specificity_hand_labels.jsonl"


def _score(surprisal: float, tokens: int) -> ReplyScore:
    nan = LMScore(float("nan"), float("nan"), 0)
    return ReplyScore(nan, LMScore(-surprisal, -surprisal / tokens, tokens))


def test_the_length_model_removes_what_length_predicts_per_language() -> None:
    rng = np.random.default_rng(0)
    n = rng.integers(1, 40, size=400).astype(float)
    languages = ["en"] * 200 + ["ru"] * 200
    surprisal = np.where(np.arange(400) < 200, 3.0 * n, 5.0 * n + 2.0) + rng.normal(0, 0.1, 400)
    model = LengthModel.fit(surprisal, n, languages)
    scores = [_score(s, int(k)) for s, k in zip(surprisal, n, strict=True)]
    residual = model.residual(scores, languages)
    assert np.abs(residual).max() < 0.5  # each language on its own slope
    assert abs(np.corrcoef(residual, n)[0, 1]) < 0.1
    assert LengthModel.from_json(model.to_json()) == model
    assert model.predict(np.array([10.0]), ["uk"]).shape == (1,)  # an unseen language takes the pooled fit
    with pytest.raises(ValueError, match="pooled"):
        LengthModel.from_json({"en": [0, 1, 0]})
    with pytest.raises(ValueError, match="at least 30"):
        LengthModel.fit(surprisal[:5], n[:5], languages[:5])


def _signal(labels: np.ndarray, groups: list[str] | None = None, aggregate: bool = False) -> HumanSignal:
    n = len(labels)
    return HumanSignal("s", [Context((Turn("user", "hi"),))] * n, ["r"] * n, ["en"] * n, labels, groups, aggregate)


def test_partial_spearman_interval_separates_information_beyond_length_from_length_itself() -> None:
    rng = np.random.default_rng(1)
    length = rng.normal(size=600)
    extra = rng.normal(size=600)
    labels = length + extra + rng.normal(0, 0.5, 600)
    signal = _signal(labels)
    beyond = partial_with_interval(signal, extra + 0.3 * length, length, resamples=200)
    only_length = partial_with_interval(signal, length + rng.normal(0, 0.01, 600), length, resamples=200)
    assert beyond["partial_ci95"][0] > 0.5 and beyond["spearman"] > 0.3
    low, high = only_length["partial_ci95"]
    assert low < 0.1 and high < 0.2 and only_length["spearman"] > 0.5  # tracks the label, but only through length


def test_clusters_are_resampled_whole_and_aggregate_signals_collapse_to_groups() -> None:
    rng = np.random.default_rng(2)
    groups = [f"g{i // 5}" for i in range(200)]
    group_label = np.repeat(rng.normal(size=40), 5)
    values, length = group_label + rng.normal(0, 0.3, 200), rng.normal(size=200)
    aggregated = partial_with_interval(_signal(group_label, groups, aggregate=True), values, length, resamples=100)
    assert aggregated["units"] == 40
    per_reply = partial_with_interval(_signal(group_label, groups), values, length, resamples=100)
    naive = partial_with_interval(_signal(group_label), values, length, resamples=100)
    assert per_reply["units"] == naive["units"] == 200
    # Same point estimate; resampling whole conversations widens the interval (replies within one are not independent).
    assert per_reply["partial"] == pytest.approx(naive["partial"])
    width = lambda m: m["partial_ci95"][1] - m["partial_ci95"][0]  # noqa: E731
    assert width(per_reply) > width(naive)


def _cell(partial: float, low: float) -> dict:
    return {"partial": partial, "partial_ci95": [low, partial + 0.1], "spearman": partial}


def test_the_chosen_teacher_beats_length_wherever_any_candidate_does() -> None:
    signals = ["a", "b", "c"]
    table = {
        "length_tokens": {s: _cell(0.0, -0.05) for s in signals},
        "big_on_a": {"a": _cell(0.6, 0.5), "b": _cell(0.0, -0.1), "c": _cell(0.0, -0.1)},
        "steady": {"a": _cell(0.2, 0.1), "b": _cell(0.15, 0.05), "c": _cell(0.0, -0.1)},
        "nothing": {s: _cell(-0.1, -0.2) for s in signals},
    }
    choice = choose_teacher(table, signals, {})
    assert choice["informative"] == ["a", "b"] and choice["chosen"] == "steady" and choice["met"]
    assert "**steady**" in markdown_table(table, signals, choice)
    table["steady"]["b"] = _cell(0.15, -0.01)
    table["big_on_b"] = {"a": _cell(0.0, -0.1), "b": _cell(0.3, 0.2), "c": _cell(0.0, -0.1)}
    choice = choose_teacher(table, signals, {})
    # Nobody covers both informative signals: best coverage (one each), then the best mean partial ρ.
    assert not choice["met"] and choice["chosen"] == "big_on_a"


def test_nidf_rarity_and_the_extra_candidates() -> None:
    idf = IdfTable.build(["the cat", "the dog", "the cat sat", "a quasar"])
    rarity = nidf_rarity(["the", "quasar", ""], idf)
    assert rarity["nidf_mean"][0] < rarity["nidf_mean"][1] and rarity["nidf_max"][2] == 0.0
    scores = [_score(10.0, 5), _score(4.0, 2)]
    model = LengthModel({"*": (0.0, 2.0, 0.0)})
    out = study_candidates(scores, ["a b c", "quasar"], ["en", "en"], model, idf)
    assert np.allclose(out["uncond_surprisal_resid"], [0.0, 0.0])
    assert np.allclose(out["one_minus_ppl"], [1 - np.exp(2.0), 1 - np.exp(2.0)])
    assert {"nidf_mean", "nidf_max", "pmi", "length_tokens"} <= set(out)


def _convai2_folder(root: Path, dialogues: int = 80) -> Path:
    """ConvAI2-shaped files: bot turns with thumbs, dialogues with an engagingness score."""
    rng = np.random.default_rng(3)
    words = ["pizza", "quantum", "hello", "yes", "ok", "Lisbon", "guitar", "fine", "glacier", "sure"]
    convs = []
    for i in range(dialogues):
        dialog = []
        for t in range(6):
            bot = t % 2 == 1
            text = " ".join(rng.choice(words, size=int(rng.integers(1, 6))))
            turn = {"sender": "bot" if bot else "user", "text": f"{text} {i}",
                    "sender_class": "Bot" if bot else "Human"}
            if bot:
                turn["evaluation_score"] = int(rng.integers(0, 2))
            dialog.append(turn)
        convs.append({"dialog": dialog, "eval_score": int(rng.integers(1, 6))})
    folder = root / "convai2"
    folder.mkdir(parents=True)
    (folder / "data_volunteers.json").write_text(json.dumps(convs[: dialogues // 2]), encoding="utf-8")
    (folder / "data_intermediate.json").write_text(json.dumps(convs[dialogues // 2:]), encoding="utf-8")
    return root


def test_signals_come_from_the_dev_split_and_train_replies_from_train(tmp_path: Path) -> None:
    folder = _convai2_folder(tmp_path, dialogues=300) / "convai2"
    thumbs, engaging = convai2_signals(folder, limit=1000, turns=2, seed=0)
    assert thumbs.groups and all(split_of(g) == "dev" for g in thumbs.groups + (engaging.groups or []))
    assert engaging.aggregate and set(np.unique(thumbs.labels)) <= {0.0, 1.0}
    texts, languages = train_replies(SignalSources(convai2=folder, chitchat=False), per_language=50)
    assert len(texts) == 50 and set(languages) == {"en"}
    dev_texts = set(thumbs.replies) | set(engaging.replies)
    assert not dev_texts & set(texts)


def test_hand_labels_read_and_a_bad_row_is_named(tmp_path: Path) -> None:
    signals = {s.name: s for s in hand_label_signals(HAND_LABELS)}
    assert set(signals) == {"hand_specific_en", "hand_ssa_en", "hand_specific_ru", "hand_ssa_ru"}
    assert len(signals["hand_specific_en"].replies) == 60
    bad = tmp_path / "bad.jsonl"
    first = HAND_LABELS.read_text(encoding="utf-8").splitlines()[0]
    bad.write_text(first + "\n{\"context\": \"x\"}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not a hand-label row"):
        hand_label_signals(bad)


def test_eval_teachers_writes_the_report_and_reruns_from_the_cache(tmp_path: Path) -> None:
    from core.lm.wrapper import DecoderLM, LMOptions
    from dialog.jobs.eval_teachers import TeacherEvalConfig, eval_teachers

    from tiny_models import build_tiny_decoder

    lm = DecoderLM.from_dir(build_tiny_decoder(tmp_path / "lm"), LMOptions(dtype="fp32", threads=1))
    settings = replace(Settings(), home=tmp_path / "home", models_dir=tmp_path / "models")
    rows = [json.loads(line) for line in HAND_LABELS.read_text(encoding="utf-8").splitlines()]
    kept: dict[tuple, list[dict]] = {}
    for row in rows:  # 4 of each (language, specific, sensible) kind: the LM scoring is the test's cost
        kept.setdefault((row["language"], row["specific"], row["sensible"]), []).append(row)
    hand = tmp_path / "hand.jsonl"
    hand.write_text("".join(json.dumps(r) + "\n" for group in kept.values() for r in group[:4]), encoding="utf-8")
    config = TeacherEvalConfig(data=_convai2_folder(tmp_path / "data", 200), hand_labels=hand, chitchat=False,
                               limit=24, train_per_language=40, resamples=20, idf=tmp_path / "missing.json")
    report = eval_teachers(settings, config, lm=lm, say=lambda _m: None)
    assert set(report["signals"]) >= {"convai2_thumbs", "hand_specific_en", "hand_ssa_ru"}
    assert report["choice"]["chosen"] in report["table"] and report["choice"]["chosen"] != "length_tokens"
    assert {"uncond_surprisal_resid", "one_minus_ppl", "pmi", "uncond_surprisal"} <= set(report["table"])
    assert "nidf_mean" not in report["table"] and "no IDF table" in report["idf"]
    saved = json.loads((tmp_path / "home" / "artifacts" / "eval-teachers" / "report.json").read_text())
    assert json.dumps(saved["choice"], sort_keys=True) == json.dumps(report["choice"], sort_keys=True)
    assert "| candidate |" in (tmp_path / "home" / "artifacts" / "eval-teachers" / "table.md").read_text()
    assert (tmp_path / "home" / "artifacts" / "eval-teachers" / "partial_spearman.png").read_bytes()[:4] == b"\x89PNG"
    cache = tmp_path / "teacher_cache.jsonl"  # beside the (test) model cache
    rows = cache.read_text().count("\n")
    messages: list[str] = []
    again = eval_teachers(settings, config, lm=lm, say=messages.append)
    assert cache.read_text().count("\n") == rows and not any("scored" in m for m in messages)
    assert json.dumps(again["table"], sort_keys=True) == json.dumps(report["table"], sort_keys=True)


def test_the_residualized_teacher_fits_on_the_bank_and_travels_with_the_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from rl.teachers import bank_teacher_targets, length_model_of, teacher_values_for

    rng = np.random.default_rng(4)
    phrases = [SimpleNamespace(id=i, text=f"phrase {i}", language="en" if i % 2 else "ru") for i in range(120)]
    tokens = rng.integers(1, 30, size=120)
    stored = {p.id: LMScore(-(3.0 * k + rng.normal()), -3.0, int(k)) for p, k in zip(phrases, tokens, strict=True)}
    monkeypatch.setattr("core.lm.bank_scores.load_bank_scores", lambda _bank, _lm: stored)
    bank = SimpleNamespace(phrases=lambda status: phrases)
    texts, _, values, model = bank_teacher_targets(bank, "lm", "uncond_surprisal_resid")
    assert len(texts) == 120 and model is not None and abs(np.corrcoef(values, tokens)[0, 1]) < 0.2
    raw = bank_teacher_targets(bank, "lm", "uncond_surprisal")
    assert raw[3] is None and np.corrcoef(raw[2], tokens)[0, 1] > 0.9  # the raw teacher is mostly length
    manifest = {"metrics": {"teacher": {"length_model": model.to_json()}}}
    assert length_model_of(manifest) == model and length_model_of({"metrics": {}}) is None
    with pytest.raises(ValueError, match="needs its length model"):
        teacher_values_for([_score(3.0, 1)], "uncond_surprisal_resid", ["en"])
    with pytest.raises(ValueError, match="needs a dialogue context"):
        bank_teacher_targets(bank, "lm", "pmi")
