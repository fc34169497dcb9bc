"""`repliq train prompts` and `repliq eval prompts` end to end on tiny random models and toy dialogues."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from prompt_helpers import dialogues

from core.config import EncoderConfig, Settings
from core.corpora import split_of

from tiny_models import build_tiny_decoder, build_tiny_encoder


@pytest.fixture(autouse=True)
def _single_thread(one_torch_thread: None) -> None:
    """Tiny models and matrix work run several times faster on one torch thread on a shared machine."""


def test_paired_bootstrap_interval() -> None:
    from rl.generated_quality import bootstrap_mean as paired_bootstrap

    rng = np.random.default_rng(0)
    mean, low, high = paired_bootstrap(0.5 + rng.normal(0, 0.2, 80), 1000, 0)
    assert low < mean < high and low > 0
    mean, low, high = paired_bootstrap(rng.normal(0, 0.2, 80), 1000, 0)
    assert low < 0 < high
    with pytest.raises(ValueError, match="at least 2"):
        paired_bootstrap(np.array([1.0]), 100, 0)


def test_train_then_eval_prompts_on_tiny_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.artifact_list import list_artifacts
    from core.lm.wrapper import DecoderLM
    from dialog.jobs import eval_prompts, prompt_train
    from retriever.encoder import Encoder
    from retriever.prompt_pool import load_pool

    toy = dialogues(160)
    monkeypatch.setattr(prompt_train, "read_sources", lambda corpora: {"toy": toy})
    monkeypatch.setattr(eval_prompts, "read_sources", lambda corpora: {"toy": toy})
    lm = DecoderLM.from_dir(build_tiny_decoder(tmp_path / "lm"))
    encoder = Encoder(build_tiny_encoder(tmp_path / "enc"))
    settings = Settings(home=tmp_path / "home", models_dir=tmp_path / "models",
                        encoder=EncoderConfig(name=str(tmp_path / "enc")))  # what `artifacts list` checks against
    config = prompt_train.PromptJobConfig(pool_per_source=200, examples_per_language=6)
    config.scoring = replace(config.scoring, candidates=3, batch_size=8)
    config.train = replace(config.train, epochs=3, dev_fraction=0.25)
    report = prompt_train.run_train_prompts(settings, config, encoder=encoder, lm=lm)
    assert report["lm"] == lm.lm_id and report["metrics"]["examples"] == 12
    # "auto" trained both losses and kept the one with the better held-out choice gain.
    metrics = report["metrics"]
    by_loss = metrics["kept_dev_choice_gain_by_loss"]
    assert set(by_loss) == {"contrastive", "listwise"}
    assert by_loss[metrics["loss"]] == max(by_loss.values()) == metrics["kept_dev_choice_gain"]
    assert metrics["kept_dev_choice_gain"] <= metrics["best_dev_choice_gain"]
    pool, _ = load_pool(settings.artifacts_dir / "prompt-pool")
    assert all(split_of(d.conversation_id) == "train" for d in pool.demonstrations)
    listed = {e.kind: e for e in list_artifacts(settings)}
    assert {"prompt-pool", "prompt-retriever"} <= set(listed)
    assert listed["prompt-retriever"].lineage["prompt-pool"] == pool.ref and not listed["prompt-retriever"].stale
    assert json.loads((settings.artifacts_dir / "prompt-retriever-report" / "report.json").read_text())["history"]

    eval_config = eval_prompts.EvalPromptsConfig(contexts_per_language=4, k=2, n_boot=200)
    eval_config.scoring = config.scoring
    result = eval_prompts.run_eval_prompts(settings, eval_config, encoder=encoder, lms=[lm])
    rows = result["results"][lm.lm_id]
    assert set(rows) == {"en", "ru"} and all(r["contexts"] >= 2 for r in rows.values())
    for row in rows.values():
        d = row["uprise_minus_none"]
        assert d["ci95"][0] <= d["mean"] <= d["ci95"][1]
        assert d["mean"] == pytest.approx(row["mean_logprob"]["uprise"] - row["mean_logprob"]["none"])
    assert (settings.artifacts_dir / "eval-prompts" / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert "uprise" in result["table"]

    from retriever.prompt_pool import PromptPool, save_pool

    save_pool(settings.artifacts_dir / "prompt-pool", PromptPool(pool.demonstrations[:-1]), {})
    stale = {e.kind: e for e in list_artifacts(settings)}["prompt-retriever"]
    assert stale.stale and "prompt-pool" in stale.reasons[0] and stale.rebuild == "repliq train prompts"


def test_eval_conditions_must_include_uprise_and_a_baseline() -> None:
    from dialog.jobs.eval_prompts import EvalPromptsConfig

    EvalPromptsConfig(conditions=("uprise", "none")).validate()
    for bad in (("base", "none"), ("uprise",), ("uprise", "oracle")):
        with pytest.raises(ValueError, match="conditions"):
            EvalPromptsConfig(conditions=bad).validate()
