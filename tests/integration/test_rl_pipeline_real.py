"""Blender and RL tuning end to end on the real default models (e5-small, gemma-3-270m), on a small slice.

The same calls `repliq train reward`, `repliq train blender` and `repliq rl tune` make, in a copy of the
real test workspace (starter bank + e5 index): the bank is LM-scored, the specificity proxy distilled,
relevance trained, the blender trained with the proxy feature, then tuned. The tuned blender is served
over real gRPC, and a blender whose inputs differ from what serving provides is refused.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from core.config import Settings
from dialog.cli.main import main
from dialog.jobs.rl_tune import RELEVANCE_DIR, TUNED_DIR, RLRunConfig, run_rl_tune
from ranker.blender import BlenderMismatchError, read_blender_manifest
from rl.blender_setup import SPECIFICITY_DIR, load_blender
from rl.policy_guard import UnguardedPolicyError
from rl.tune import PolicyTuneConfig

from workspace import make_settings

pytestmark = pytest.mark.real
PAIRS_PER_LANGUAGE = 150


def copy_workspace(source: Path, target: Path) -> None:
    """Bank (with its WAL files) and index; artifacts written here never reach the shared real_home."""
    for path in source.glob("bank.sqlite*"):
        shutil.copy2(path, target / path.name)
    shutil.copytree(source / "indexes", target / "indexes")


@pytest.fixture(scope="module")
def rl_settings(real_home: Path, models_dir: Path, shared_data: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Settings:
    from dialog.jobs.train_blender import BlenderCorpora, read_corpora, sample_pairs, train_workspace_blender
    from ranker.train import BlenderTrainConfig
    from rl.relevance import train_relevance_model

    home = tmp_path_factory.mktemp("rl-home")
    copy_workspace(real_home, home)
    settings = make_settings(home, models_dir)
    # `repliq train reward --kind specificity`: LM-scores the bank (the teacher), then distils the proxy.
    assert main(["--home", str(home), "--models-dir", str(models_dir), "train", "reward", "--kind", "specificity",
                 "--members", "3"]) == 0
    proxy_metrics = json.loads((settings.artifacts_dir / SPECIFICITY_DIR / "manifest.json").read_text())["metrics"]
    assert min(proxy_metrics["held_out_spearman_by_language"].values()) > 0.5, proxy_metrics

    corpora = BlenderCorpora(chitchat_conversations=200, russian_dialogues=shared_data / "ru" /
                             "koziev_anekdot_dialogues.tar.xz", russian_conversations=400,
                             max_pairs_per_language=PAIRS_PER_LANGUAGE)
    pairs = sample_pairs(read_corpora(corpora), ("en", "ru"), PAIRS_PER_LANGUAGE, settings.retrieval.context_turns,
                         seed=1)
    train_relevance_model(settings, pairs, settings.artifacts_dir / RELEVANCE_DIR)
    train_workspace_blender(settings, corpora, BlenderTrainConfig(rounds=150))
    return settings


@pytest.fixture(scope="module")
def rl_report(rl_settings: Settings) -> dict:
    config = RLRunConfig(betas=(0.05, 5.0), main_beta=0.05,
                         policy=PolicyTuneConfig(iterations=2, rounds_per_iteration=10, learning_rate=0.2),
                         teacher_reference=120, samples_in_report=5)
    return run_rl_tune(rl_settings, config)


def test_blender_uses_the_proxy_feature_and_explains_served_answers(rl_settings: Settings) -> None:
    from dialog.serving.assembly import build_pipeline
    from dialog.serving.client import ChatClient
    from dialog.serving.server import start_server

    assembled = build_pipeline(rl_settings)
    running = start_server(assembled.pipeline, rl_settings.server, rl_settings.retrieval.top_k)
    client = ChatClient("127.0.0.1", running.port, timeout_s=30)
    try:
        for question, language in (("Что ты любишь готовить на ужин?", "ru"), ("Do you have any pets?", "en")):
            reply = client.respond([("user", question)], explain=True, top_k=3)
            best = reply.candidates[0]
            assert reply.language == language and reply.versions.ranker
            assert best.stage_scores["blender"] == pytest.approx(best.score)
            contributions = {c.feature: c for c in best.contributions}
            assert sum(c.contribution for c in contributions.values()) == pytest.approx(best.score, abs=1e-6)
            assert np.isfinite(contributions["specificity_proxy"].value)
    finally:
        client.close()
        running.stop(grace=1.0)
        assembled.close()


def test_rl_tune_writes_report_plots_and_a_servable_tuned_blender(rl_settings: Settings, rl_report: dict) -> None:
    run_dir = rl_settings.artifacts_dir / "rl-run"
    saved = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    assert saved["targets"] == json.loads(json.dumps(rl_report["targets"]))
    history = saved["runs"]["0.05"]["history"]
    assert len(history) == 3  # the reference, then one row per iteration
    for key in ("train_reward", "train_kl", "train_entropy", "dev_reward", "dev_r_at_1", "dev_teacher_specificity_z"):
        assert all(np.isfinite(row[key]) for row in history), key
    assert history[-1]["train_reward"] > history[0]["train_reward"]
    assert saved["runs"]["5"]["history"][-1]["train_kl"] < history[-1]["train_kl"]  # a larger β stays nearer π_ref
    for name in ("pareto.png", "curves-beta-0.05.png", "samples.md"):
        assert (run_dir / name).stat().st_size > 0
    assert set(saved["targets"]) == {"all", "en", "ru"}

    tuned_settings = replace(rl_settings, ranker=replace(rl_settings.ranker,
                                                         blender=str(rl_settings.artifacts_dir / TUNED_DIR)))
    from retriever.encoder import Encoder

    encoder = Encoder.from_config(rl_settings)
    guard = read_blender_manifest(rl_settings.artifacts_dir / TUNED_DIR).training["guard"]
    if not guard["servable"]:
        # A policy that failed its guard (this fixture's few dev pools often decide it) is for inspection only:
        # refused unless forced, and then it loads like any servable one.
        with pytest.raises(UnguardedPolicyError, match="failed its guard"):
            load_blender(tuned_settings, encoder)
        tuned_settings = replace(tuned_settings, ranker=replace(tuned_settings.ranker, force_unguarded=True))
    tuned, reference = load_blender(tuned_settings, encoder), load_blender(rl_settings, encoder)
    assert tuned is not None and reference is not None
    assert tuned.manifest.parent == reference.version
    assert tuned.manifest.training["rl"]["beta"] == 0.05


def test_guard_and_targets_are_the_measured_metrics(rl_settings: Settings, rl_report: dict) -> None:
    """The relevance guard and the "target met" verdicts, checked against the metrics they are made of."""
    from dialog.jobs.rl_tune import choose_beta
    from ranker.blender import read_blender_manifest

    saved = json.loads((rl_settings.artifacts_dir / "rl-run" / "report.json").read_text(encoding="utf-8"))
    ref, final, n_pools = saved["reference"], saved["runs"]["0.05"]["final"], saved["dev_groups"]
    assert saved["selection"]["rule"] == "given" and saved["selection"]["beta"] == 0.05
    assert set(saved["targets"]) == {"all", "en", "ru"} and n_pools >= 20
    for language, row in saved["targets"].items():
        suffix = "" if language == "all" else f"_{language}"
        gain = final[f"teacher_specificity_z{suffix}"] - ref[f"teacher_specificity_z{suffix}"]
        drop = ref[f"r_at_1{suffix}"] - final[f"r_at_1{suffix}"]
        assert row["specificity_gain_sd"] == pytest.approx(gain) and row["r_at_1_drop"] == pytest.approx(drop)
        low, high = row["r_at_1_drop_ci95"]
        # A handful of dev pools per language in this fixture: the interval may be wide, never inverted or
        # outside what a drop of R@1 can be.
        assert -1 <= low <= drop + 1e-9 and drop - 1e-9 <= high <= 1, (language, row)
        assert row["met"] is (gain >= 0.3 and drop <= 0.02), (language, row)
    # R@1 counts whole pools: a hit is one pool's gold reply on top.
    for metrics in (ref, final):
        assert metrics["r_at_1"] * n_pools == pytest.approx(round(metrics["r_at_1"] * n_pools), abs=1e-6)
    # π_ref's R@1 here is the supervised blender's own dev R@1 from training (same pools, same model);
    # training skips pools without a gold reply, the guard counts them as misses: the hits must agree.
    trained = read_blender_manifest(rl_settings.artifacts_dir / "blender").metrics
    assert abs(ref["r_at_1"] * n_pools - trained["dev_r@1"] * trained["dev_groups"]) <= 1.0, (ref, trained)
    assert 0.0 < ref["r_at_1"] < 1.0
    # Left to choose, the guard passes the saved β exactly when no language lost more than two points.
    _, selection = choose_beta(saved, RLRunConfig(betas=(0.05, 5.0)))
    assert (0.05 in selection["passing"]) is all(row["r_at_1_drop"] <= 0.02 for row in saved["targets"].values())
    assert read_blender_manifest(rl_settings.artifacts_dir / TUNED_DIR).metrics == pytest.approx(final)


def test_tuned_blender_with_other_inputs_is_refused(rl_settings: Settings, rl_report: dict) -> None:
    from dialog.serving.assembly import build_pipeline

    without_proxy = replace(rl_settings, ranker=replace(rl_settings.ranker, specificity="none",
                                                        blender=str(rl_settings.artifacts_dir / TUNED_DIR)))
    with pytest.raises(BlenderMismatchError, match=r"specificity: trained with .* serving has 'none'"):
        build_pipeline(without_proxy)


def test_reuse_data_refits_the_same_blender_and_refuses_changed_annotators(rl_settings: Settings,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`repliq train blender --reuse-data`: the saved ranking data gives back the very same booster, and is
    refused once an annotator would compute its columns differently."""
    from dialog.jobs.train_blender import retrain_from_saved_data
    from ranker.blender import MANIFEST_NAME
    from ranker.dataset import DatasetError
    from ranker.features.turn import TurnAnnotator
    from ranker.train import BlenderTrainConfig
    from ranker.training_data import DATA_SUFFIX

    artifacts = rl_settings.artifacts_dir
    shutil.copytree(artifacts / ("blender" + DATA_SUFFIX), artifacts / ("refit" + DATA_SUFFIX))
    metrics = retrain_from_saved_data(rl_settings, BlenderTrainConfig(rounds=150), artifacts / "refit")
    original = json.loads((artifacts / "blender" / MANIFEST_NAME).read_text(encoding="utf-8"))
    refit = json.loads((artifacts / "refit" / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert refit["data_hash"] == original["data_hash"] and refit["model_sha256"] == original["model_sha256"]
    assert metrics["dev_r@1"] == pytest.approx(original["metrics"]["dev_r@1"])
    monkeypatch.setattr(TurnAnnotator, "version", "999")
    with pytest.raises(DatasetError, match="without --reuse-data"):
        retrain_from_saved_data(rl_settings, BlenderTrainConfig(rounds=150), artifacts / "refit")
