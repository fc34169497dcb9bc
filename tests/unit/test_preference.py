"""Bradley–Terry preference reward model, and the labels -> preferences export that feeds it."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from core.types import Context, Turn
from dialog.labeling import LabelStore, export_pairwise, export_pointwise, export_preferences, import_labels
from dialog.labeling.simulate import SimulatedRater, demo_setup, simulate_answers, write_simulated
from rl.preference import (
    PreferenceDataError,
    PreferencePair,
    PreferenceRewardModel,
    read_preferences,
    train_preference_model,
)

VOCAB = [f"w{i}" for i in range(300)]


def _planted_pairs(n: int, seed: int) -> list[PreferencePair]:
    """Raters prefer the reply that picks up more words of the user's message; lengths vary at random."""
    rng = random.Random(seed)
    pairs = []
    while len(pairs) < n:
        user = rng.sample(VOCAB, 8)
        replies = []
        for _ in range(2):
            shared = rng.sample(user, rng.randint(0, 6))
            filler = rng.sample(VOCAB, rng.randint(1, 10))
            words = shared + [w for w in filler if w not in user]
            rng.shuffle(words)
            replies.append((len(set(shared)), " ".join(words)))
        (k1, r1), (k2, r2) = replies
        if k1 == k2:
            continue
        chosen, rejected = (r1, r2) if k1 > k2 else (r2, r1)
        pairs.append(PreferencePair(Context((Turn("user", " ".join(user)),)), chosen, rejected))
    return pairs


def test_learns_a_planted_preference_and_round_trips(tmp_path: Path) -> None:
    pairs = _planted_pairs(400, seed=1)
    model, metrics = train_preference_model(pairs, tmp_path / "model", held_out=0.25, seed=0)
    assert metrics["held_out_pairs"] == 100
    assert metrics["held_out_accuracy"] > 0.9
    fresh = _planted_pairs(200, seed=2)
    assert model.pairwise_accuracy(fresh) > 0.9
    loaded = PreferenceRewardModel.load(tmp_path / "model")
    context = fresh[0].context
    assert np.allclose(loaded.score_many(context, [fresh[0].chosen, fresh[0].rejected]),
                       model.score_many(context, [fresh[0].chosen, fresh[0].rejected]))
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["config"]["featurizer"] == "cheap-v1" and len(manifest["data_sha256"]) == 64
    assert manifest["metrics"]["held_out_accuracy"] == metrics["held_out_accuracy"]
    assert {"numpy", "scipy", "python"} <= set(manifest["versions"])


def test_untrained_or_mismatched_models_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PreferenceDataError, match="not trained"):
        PreferenceRewardModel().score(Context((Turn("user", "hi"),)), "hello")

    def length_only(context: Context, response: str) -> np.ndarray:
        return np.array([len(response)], dtype=float)

    model = PreferenceRewardModel(length_only).fit(_planted_pairs(20, seed=3))
    model.save(tmp_path / "m")
    with pytest.raises(PreferenceDataError, match="featurizer 'length_only'"):
        PreferenceRewardModel.load(tmp_path / "m")
    assert PreferenceRewardModel.load(tmp_path / "m", length_only).score(Context((Turn("u", "x"),)), "ab") == \
        pytest.approx(model.score(Context((Turn("u", "x"),)), "ab"))


def test_read_preferences_is_strict(tmp_path: Path) -> None:
    path = tmp_path / "prefs.jsonl"
    good = {"context": {"turns": [{"speaker": "user", "text": "hi"}]}, "chosen": "Hello!", "rejected": "Blue."}
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "weight": -1}) + "\n{oops\n", encoding="utf-8")
    with pytest.raises(PreferenceDataError) as info:
        read_preferences(path)
    message = str(info.value)
    assert "prefs.jsonl: line 2: weight -1.0 must be > 0" in message
    assert "prefs.jsonl: line 3: not valid JSON" in message and "prefs.jsonl: line 1" not in message


@pytest.mark.parametrize("mode", ["pairwise", "pointwise"])
def test_preferences_from_labels_train_a_reward(tmp_path: Path, mode: str) -> None:
    contexts, systems, truth, point_pots, pair_pots = demo_setup(n_contexts=24)
    out = tmp_path / "export"
    if mode == "pairwise":
        export_pairwise(contexts, systems, out, "jsonl", overlap=3, honeypots=pair_pots)
    else:
        export_pointwise(contexts, systems, out, "jsonl", overlap=3, honeypots=point_pots)
    raters = [SimulatedRater(f"r{n}", 0.9) for n in range(3)]
    path = write_simulated(simulate_answers(out, raters, truth), out, tmp_path / "a.jsonl", "jsonl")
    with LabelStore(tmp_path / "labels.sqlite") as store:
        import_labels(out, path, "jsonl", store)
        summary = export_preferences(store, out, None, tmp_path / "prefs.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "prefs.jsonl").read_text(encoding="utf-8").splitlines()]
    assert summary["pairs"] == len(rows) > 24
    rank = {"bank": 2, "generic": 1, "echo": 0}
    right = sum(rank[r["meta"]["chosen_system"]] > rank[r["meta"]["rejected_system"]] for r in rows)
    assert right / len(rows) > 0.9
    assert all(0 < r["weight"] <= 1 and r["meta"]["source"] == mode for r in rows)
    pairs = read_preferences(tmp_path / "prefs.jsonl")
    echo = next(r for r in rows if r["meta"]["rejected_system"] == "echo")
    assert echo["rejected"] == echo["context"]["turns"][-1]["text"]  # the echo system's reply, unblinded
    _, metrics = train_preference_model(pairs, held_out=0.25)
    assert metrics["held_out_accuracy"] > 0.8
