"""The sensibleness judge on tiny random-weight encoders: groups, training, exact resume, artifact refusals, CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from core.corpora import Dialogue, DialogueTurn
from core.judge_config import JudgeJobConfig, JudgeTrainConfig
from core.types import Context, Turn
from rl.artifacts import RewardModelError
from rl.judge import SensiblenessJudge, load_judge
from rl.judge_data import JudgeGroup, build_groups, flatten, group_aucs, split_pairs
from rl.judge_train import JudgeRunMismatch, group_loss, train_judge

from tiny_models import build_tiny_encoder


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_encoder(tmp_path_factory.mktemp("judge") / "tiny-base")


def config(base: Path, **changes: object) -> JudgeTrainConfig:
    defaults = {"base": str(base), "max_length": 48, "frozen_layers": 0, "contexts_per_step": 2,
                "learning_rate": 1e-3, "head_learning_rate": 1e-2, "checkpoint_every": 1, "log_every": 1}
    return replace(JudgeTrainConfig(), **{**defaults, **changes})  # type: ignore[arg-type]


def groups(n: int = 8) -> list[JudgeGroup]:
    """Learnable on purpose: the gold repeats the context's word, negatives do not."""
    words = ["apple", "river", "house", "cloud", "stone", "bread", "chair", "music", "ocean", "tiger"]
    out = []
    for i in range(n):
        word = words[i % len(words)]
        context = Context((Turn("A", f"tell me about {word}"),))
        out.append(JudgeGroup(context, "en" if i % 2 else "ru", "tiny", (f"{word} is nice", "zzz qqq", f"{word}?"),
                              (1.0, 0.0, 0.3), ("gold", "corpus", "retrieved")))
    return out


def test_groups_hold_gold_and_each_negative_kind_with_its_label() -> None:
    turns = [("A", "hi there"), ("B", "hello, how are you?"), ("A", "fine thanks"), ("B", "great to hear")]
    dialogues = [Dialogue(f"chitchat:{i}", "en", tuple(DialogueTurn(s, f"{t} {i}") for s, t in turns))
                 for i in range(60)]
    pairs = split_pairs(dialogues, "train", 20, 3, seed=0)
    assert pairs and len(pairs) <= 20 and all(p.language == "en" for p in pairs)
    assert not set(p.conversation_id for p in pairs) & set(p.conversation_id for p in split_pairs(
        dialogues, "dev", 20, 3, seed=0)), "a dialogue must not give both train and dev contexts"

    def retrieve(contexts: list[Context], language: str, k: int) -> list[list[str]]:
        return [["retrieved one", "retrieved two"][:k] for _ in contexts]

    built = build_groups(pairs, {"en": ["bank a", "bank b", "bank c"]}, retrieve, corpus_negatives=1,
                         retrieved_negatives=1, random_negatives=1, retrieved_pool=2, retrieved_label=0.4, seed=0)
    assert len(built) == len(pairs)
    for pair, group in zip(pairs, built, strict=True):
        assert group.kinds == ("gold", "corpus", "retrieved", "random")
        assert group.labels == (1.0, 0.0, 0.4, 0.0) and group.texts[0] == pair.response
        assert group.texts[1] != pair.response and group.texts[2].startswith("retrieved")
        assert group.texts[3].startswith("bank")
        # the corpus negative comes from another conversation
        assert not group.texts[1].endswith(" " + pair.conversation_id.split(":")[1])


def test_group_aucs_per_language_and_kind() -> None:
    built = groups(6)
    _, _, kinds, languages = flatten(built)
    perfect = np.where(kinds == "gold", 1.0, 0.0)
    aucs = group_aucs(perfect, kinds, languages)
    assert aucs["en"]["auc_gold_vs_corpus"] == 1.0 and aucs["ru"]["auc_gold_vs_retrieved"] == 1.0
    assert group_aucs(-perfect, kinds, languages)["en"]["auc_gold_vs_corpus"] == 0.0


def test_loss_rewards_gold_above_hard_negatives() -> None:
    import torch

    built = groups(1)
    good = group_loss(torch.tensor([3.0, -3.0, -1.0]), built, 1.0)
    bad = group_loss(torch.tensor([-3.0, 3.0, -1.0]), built, 1.0)
    assert float(good) < float(bad)


def test_score_api_is_batched_and_checks_its_input(base: Path) -> None:
    judge = SensiblenessJudge.from_base(config(base), base.parent)
    contexts, texts, _, _ = flatten(groups(3))
    batched = judge.score(contexts, texts, batch_size=4)
    one_by_one = np.array([judge.score([c], [t])[0] for c, t in zip(contexts, texts, strict=True)])
    assert batched.shape == (len(texts),) and ((batched > 0) & (batched < 1)).all()
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    assert judge.score(["plain text context"], ["a reply"]).shape == (1,)
    with pytest.raises(ValueError, match="contexts for"):
        judge.score(contexts, texts[:-1])


def test_training_learns_and_a_killed_run_resumes_exactly(base: Path, tmp_path: Path) -> None:
    data = groups(8)
    cfg = config(base, epochs=3)
    whole = SensiblenessJudge.from_base(cfg, base.parent)
    state = train_judge(whole, data, tmp_path / "whole")
    assert state["step"] == state["total"] == 12
    contexts, texts, kinds, _ = flatten(data)
    before = SensiblenessJudge.from_base(cfg, base.parent).score(contexts, texts)
    after = whole.score(contexts, texts)
    gold = kinds == "gold"
    assert after[gold].mean() - after[~gold].mean() > before[gold].mean() - before[~gold].mean()

    killed = SensiblenessJudge.from_base(cfg, base.parent)
    assert train_judge(killed, data, tmp_path / "killed", max_steps=5)["step"] == 5
    resumed = SensiblenessJudge.from_base(cfg, base.parent)
    state = train_judge(resumed, data, tmp_path / "killed")
    assert state["resumed_from"] == 5 and state["step"] == 12
    np.testing.assert_allclose(resumed.score(contexts, texts), after, atol=1e-5)

    # A spent time budget stops the run with a checkpoint; the budget is not part of the run's identity.
    train_judge(SensiblenessJudge.from_base(cfg, base.parent), data, tmp_path / "budget", max_steps=3)
    budgeted = SensiblenessJudge.from_base(replace(cfg, max_minutes=1e-9), base.parent)
    state = train_judge(budgeted, data, tmp_path / "budget")
    assert state["stopped_early"] and state["resumed_from"] == state["step"] == 3

    other = SensiblenessJudge.from_base(replace(cfg, retrieved_label=0.5), base.parent)
    with pytest.raises(JudgeRunMismatch, match="another judge run"):
        train_judge(other, data, tmp_path / "killed")


def test_saved_judge_loads_and_is_refused_on_other_weights(base: Path, tmp_path: Path) -> None:
    cfg = config(base, frozen_layers=1)  # the tiny encoder has one layer: only the head trains
    judge = SensiblenessJudge.from_base(cfg, base.parent)
    assert set(judge.arrays()) == {"head.weight", "head.bias"}
    train_judge(judge, groups(4), tmp_path / "work")
    manifest = judge.save(tmp_path / "judge", data_sha256="x", metrics={"dev": {}})
    assert manifest["kind"] == "sensibleness-judge" and manifest["lineage"]["encoder"] == judge.base
    contexts, texts, _, _ = flatten(groups(2))
    np.testing.assert_allclose(load_judge(tmp_path / "judge", base.parent).score(contexts, texts),
                               judge.score(contexts, texts), atol=1e-6)

    weights = tmp_path / "judge" / "weights.npz"
    good = weights.read_bytes()
    np.savez(weights, **{k: v + 1 for k, v in judge.arrays().items()})
    with pytest.raises(RewardModelError, match="repliq train judge"):
        load_judge(tmp_path / "judge", base.parent)
    weights.write_bytes(good)

    # The base encoder's weights change (a retrained model under the same path): refused, not scored.
    other = build_tiny_encoder(tmp_path / "moved", seed=7)
    text = json.loads((tmp_path / "judge" / "manifest.json").read_text())
    text["config"]["base"] = str(other)
    (tmp_path / "judge" / "manifest.json").write_text(json.dumps(text))
    with pytest.raises(RewardModelError, match="repliq train judge"):
        load_judge(tmp_path / "judge", base.parent)

    text["kind"] = "relevance"
    (tmp_path / "judge" / "manifest.json").write_text(json.dumps(text))
    with pytest.raises(RewardModelError, match="not 'sensibleness-judge'"):
        load_judge(tmp_path / "judge", base.parent)


def test_cli_flags_default_to_the_config_fields(tmp_path: Path) -> None:
    from dialog.cli.judge import config_from_args
    from dialog.cli.main import build_parser

    args = build_parser().parse_args(["train", "judge"])
    assert config_from_args(args) == JudgeJobConfig()
    (tmp_path / "convai2").mkdir()
    args = build_parser().parse_args(["train", "judge", "--data", str(tmp_path), "--train-contexts", "5"])
    built = config_from_args(args)
    assert built.convai2 == tmp_path / "convai2" and built.russian is None and built.train_contexts == 5
    with pytest.raises(ValueError, match="train_contexts"):
        config_from_args(build_parser().parse_args(["train", "judge", "--train-contexts", "0"]))
    with pytest.raises(ValueError, match="retrieved_label"):
        JudgeTrainConfig(retrieved_label=1.0).validate()
