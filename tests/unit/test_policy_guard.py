"""An RL policy that failed its guard is not served unless forced, and serving breaks near-ties toward π_ref."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from core.config import Settings
from ranker.blender import Blender
from ranker.dataset import RankingDataset
from rl.blender_setup import load_blender
from rl.policy_guard import (
    TieBrokenPolicy,
    UnguardedPolicyError,
    check_servable,
    flip_rate,
    r_at_1_guard,
    serving_policy,
    tie_broken_scores,
)

REFERENCE = {"r_at_1": 0.50, "r_at_1_en": 0.545, "r_at_1_ru": 0.46}


def test_the_guard_names_every_metric_that_fell_too_far() -> None:
    tuned = {"r_at_1": 0.49, "r_at_1_en": 0.465, "r_at_1_ru": 0.47}
    guard = r_at_1_guard(REFERENCE, tuned, max_drop=0.02)
    assert not guard["passed"] and not guard["servable"]
    assert [f["metric"] for f in guard["failed"]] == ["r_at_1_en"]
    assert "r_at_1_en fell 8.0 points (limit 2.0)" in guard["detail"] and "repliq rl tune" in guard["fix"]
    assert r_at_1_guard(REFERENCE, {"r_at_1": 0.49, "r_at_1_en": 0.53, "r_at_1_ru": 0.45}, 0.02)["servable"]


def _ranking_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = np.full(40, 6)
    X = rng.normal(size=(240, 3))
    y = (X[:, 0] + 0.5 * rng.normal(size=240) > 1.0).astype(np.float64)
    return X, y, sizes


def _policy(tmp_path: Path, guard: dict | None, tolerance: float = 0.05) -> tuple[Blender, lgb.Booster, np.ndarray]:
    """A real π_ref booster, continued for a few rounds toward another target (what rl tune does), saved as
    blender-rl with the given guard and the near-tie rule."""
    X, y, sizes = _ranking_data()
    names = ["f0", "f1", "f2"]
    params = {"objective": "lambdarank", "verbosity": -1, "min_data_in_leaf": 5, "num_threads": 1, "seed": 0}
    reference = lgb.train(params, lgb.Dataset(X, y, group=sizes, feature_name=names), num_boost_round=8)
    shifted = (X[:, 1] > 0.8).astype(np.float64)
    tuned = lgb.train(params, lgb.Dataset(X, shifted, group=sizes, feature_name=names), num_boost_round=3,
                      init_model=reference)
    dataset = RankingDataset(X, y, sizes, names, [f"c{i}" for i in range(40)], [f"v{i}" for i in range(40)],
                             ["train"] * 40, [f"t{i}" for i in range(240)], ["gold"] * 240, [], {})
    blender = Blender.from_booster(tuned, dataset, params)
    blender.manifest.kind = "blender-rl"
    blender.manifest.training = {"tie_break": {"reference_trees": reference.num_trees(), "tolerance": tolerance},
                                 **({"guard": guard} if guard is not None else {})}
    blender.save(tmp_path / "blender-rl")
    return blender, reference, X


def _settings(tmp_path: Path, **ranker: object) -> Settings:
    base = Settings()
    return replace(base, home=tmp_path / "home", ranker=replace(base.ranker, blender=str(tmp_path / "blender-rl"),
                                                               specificity="none", **ranker))


class _NoEncoder:
    """load_blender describes the encoder in its resources; these blenders use no encoder feature."""

    identity = "none"


def test_the_server_refuses_a_policy_that_failed_its_guard_unless_forced(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    failed = r_at_1_guard(REFERENCE, {"r_at_1": 0.49, "r_at_1_en": 0.465, "r_at_1_ru": 0.47}, 0.02)
    _policy(tmp_path, failed)
    # The resources check compares the encoder/adapter/proxy descriptor; this test is about the guard only.
    monkeypatch.setattr("rl.blender_setup.annotator_resources", _bare_resources)
    with pytest.raises(UnguardedPolicyError) as refused:
        load_blender(_settings(tmp_path), _NoEncoder())  # type: ignore[arg-type]
    message = str(refused.value)
    assert "r_at_1_within_max_drop" in message and "r_at_1_en fell 8.0 points" in message
    assert "repliq rl tune" in message and "--force-unguarded-policy" in message and "force_unguarded" in message
    served = load_blender(_settings(tmp_path, force_unguarded=True), _NoEncoder())  # type: ignore[arg-type]
    assert isinstance(served, TieBrokenPolicy)


def test_a_policy_without_a_recorded_guard_is_refused_and_a_passing_one_is_served(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("rl.blender_setup.annotator_resources", _bare_resources)
    _policy(tmp_path, None)
    with pytest.raises(UnguardedPolicyError, match="records no guard"):
        load_blender(_settings(tmp_path), _NoEncoder())  # type: ignore[arg-type]
    _policy(tmp_path, r_at_1_guard(REFERENCE, REFERENCE, 0.02))
    assert isinstance(load_blender(_settings(tmp_path), _NoEncoder()), TieBrokenPolicy)  # type: ignore[arg-type]


def _bare_resources(settings: Settings, encoder: object, idf: object = None, shipped: bool = False):
    from ranker.annotator_base import AnnotatorResources

    return AnnotatorResources(), {}


def test_a_supervised_blender_is_never_subject_to_the_guard() -> None:
    class Manifest:
        kind, training = "blender", {}

    check_servable(Manifest(), "x", force=False)


def test_near_ties_keep_the_reference_answer_and_clear_wins_flip() -> None:
    reference = np.array([1.0, 0.9, 0.0, 2.0, 0.0, 0.1])
    sizes = np.array([3, 3])
    tuned = np.array([1.00, 1.03, 0.0, 2.0, 0.0, 2.2])  # pool 1: a near-tie; pool 2: a clear win
    assert flip_rate(tuned, reference, sizes) == 1.0
    broken = tie_broken_scores(tuned, reference, sizes, tolerance=0.05)
    assert flip_rate(broken, reference, sizes) == 0.5
    assert np.argmax(broken[:3]) == 0 and np.argmax(broken[3:]) == 2
    assert np.array_equal(tie_broken_scores(tuned, reference, sizes, 0.0), tuned)


def test_the_served_policy_ranks_a_pool_as_the_judge_scored_it(tmp_path: Path) -> None:
    blender, reference, X = _policy(tmp_path, r_at_1_guard(REFERENCE, REFERENCE, 0.02), tolerance=0.5)
    policy = serving_policy(Blender.load(tmp_path / "blender-rl"))
    assert isinstance(policy, TieBrokenPolicy)
    pool = X[:6]
    assert np.allclose(policy.reference_scores(pool), reference.predict(pool, raw_score=True))
    expected = tie_broken_scores(blender.raw_scores(pool), reference.predict(pool, raw_score=True), [6], 0.5)
    assert np.allclose(policy.pool_scores(pool), expected)
    assert not np.allclose(policy.pool_scores(pool), policy.raw_scores(pool))


def test_publish_never_ships_a_policy_that_failed_its_guard(tmp_path: Path) -> None:
    from dialog.jobs.train_default import publish

    artifacts = tmp_path / "artifacts"
    for name in ("adapter", "blender"):
        (artifacts / name).mkdir(parents=True)
        (artifacts / name / "weights.bin").write_bytes(b"x")
    _policy(artifacts, r_at_1_guard(REFERENCE, {"r_at_1": 0.49, "r_at_1_en": 0.465, "r_at_1_ru": 0.47}, 0.02))
    shipped = publish(artifacts, 10_000_000, include_rl=True, target=tmp_path / "shipped")
    assert "blender-rl" not in shipped["artifacts"] and not (tmp_path / "shipped" / "blender-rl").exists()
    _policy(artifacts, r_at_1_guard(REFERENCE, REFERENCE, 0.02))
    assert "blender-rl" in publish(artifacts, 10_000_000, include_rl=True, target=tmp_path / "shipped")["artifacts"]


def test_publish_ships_a_guarded_policy_only_when_it_met_the_rl_target(tmp_path: Path) -> None:
    from dialog.jobs.train_default import publish

    artifacts = tmp_path / "artifacts"
    for name in ("adapter", "blender"):
        (artifacts / name).mkdir(parents=True)
        (artifacts / name / "weights.bin").write_bytes(b"x")
    for met in (False, True):
        blender, _, _ = _policy(artifacts, r_at_1_guard(REFERENCE, REFERENCE, 0.02))
        blender.manifest.training["target_met"] = met
        blender.save(artifacts / "blender-rl")
        shipped = publish(artifacts, 10_000_000, include_rl=True, target=tmp_path / "shipped")
        assert ("blender-rl" in shipped["artifacts"]) is met
        assert (tmp_path / "shipped" / "blender-rl").exists() is met


def test_the_serve_flag_forces_an_unguarded_policy() -> None:
    from dialog.cli.main import build_parser
    from dialog.cli.serve import _server_settings

    parser = build_parser()
    forced = _server_settings(parser.parse_args(["serve", "--force-unguarded-policy"]), Settings())
    assert forced.ranker.force_unguarded
    assert not _server_settings(parser.parse_args(["serve"]), Settings()).ranker.force_unguarded
