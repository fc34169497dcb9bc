"""Off-policy estimators on a simulated logged bandit whose true values are known."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from rl.exploration import ServingPolicy
from rl.ope import LoggedDecisions, cross_fit_reward_model, evaluate
from rl.ope_simulation import World, log_decisions, on_policy_value, policy_probs, true_value

GREEDY = ServingPolicy("greedy")
EXPLORE = ServingPolicy("epsilon-greedy", epsilon=0.3, top_k=0)


@pytest.fixture(scope="module")
def world() -> World:
    return World.make(seed=1)


@pytest.fixture(scope="module")
def truth(world: World) -> float:
    return true_value(world, GREEDY)


def _report(world: World, n: int, logging: ServingPolicy = EXPLORE, seed: int = 2, n_boot: int = 200):
    data, X = log_decisions(world, n, logging, seed)
    target = policy_probs(X, world.theta_b, GREEDY).reshape(-1)
    return evaluate(data, target, cross_fit_reward_model(data), n_boot=n_boot, seed=seed)


def test_b_is_better_than_a_and_on_policy_agrees_with_the_exact_value(world: World, truth: float) -> None:
    value_a = true_value(World(world.beta, world.theta_a, world.theta_a), GREEDY)
    assert truth > value_a + 0.03, "the simulation must make B distinguishable from A"
    assert on_policy_value(world, GREEDY, 20_000, seed=5) == pytest.approx(truth, abs=0.01)


def test_intervals_cover_the_truth_on_20k_decisions_and_narrow_as_logs_grow(world: World, truth: float) -> None:
    big = _report(world, 20_000)
    small = _report(world, 2_000)
    for name in ("ips", "snips", "dr"):
        est = big.estimate(name)
        assert est.ci_low <= truth <= est.ci_high, (name, est, truth)
    served = big.logging_value
    assert big.estimate("dr").ci_low > served, "DR tells the better policy apart from the served one"
    big_width, small_width = (r.estimate("dr").ci_high - r.estimate("dr").ci_low for r in (big, small))
    assert big_width < 0.5 * small_width
    assert big.ess > 5 * small.ess > 0 and not big.warnings


def test_ips_is_unbiased_in_expectation(world: World, truth: float) -> None:
    values = [_report(world, 400, seed=100 + i, n_boot=0).estimate("ips").value for i in range(150)]
    mean, se = float(np.mean(values)), float(np.std(values) / np.sqrt(len(values)))
    assert abs(mean - truth) < 3 * se + 1e-3, (mean, truth, se)


def test_target_mass_outside_the_logged_support_is_warned_about(world: World) -> None:
    report = _report(world, 3_000, logging=ServingPolicy("epsilon-greedy", epsilon=0.2, top_k=2))
    assert report.unsupported_mass > 0.1
    assert any("never explored" in w for w in report.warnings)


def test_row_propensities_match_the_per_pool_ones() -> None:
    scores = np.random.default_rng(0).normal(size=(20, 7))
    for policy in (GREEDY, EXPLORE, ServingPolicy("epsilon-greedy", 0.1, top_k=3), ServingPolicy("softmax", top_k=4)):
        assert np.allclose(policy.propensities_rows(scores), [policy.propensities(s) for s in scores])


def test_bad_logs_and_targets_are_refused() -> None:
    ok = LoggedDecisions([0.5, 0.5, 1.0], [2, 1], [0, 0], [1.0, 0.0])
    with pytest.raises(ValueError, match="sum to 1"):
        evaluate(ok, np.array([0.5, 0.2, 1.0]))
    with pytest.raises(ValueError, match="propensity 0"):
        evaluate(LoggedDecisions([0.0, 1.0], [2], [0], [1.0]), np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="outside its pool"):
        LoggedDecisions([0.5, 0.5], [2], [2], [1.0])
    with pytest.raises(ValueError, match="no logged decisions"):
        LoggedDecisions([], [], [], [])


def test_direct_method_reads_the_reward_model_scores(world: World, truth: float) -> None:
    """Logged features that say nothing about the reward: only a reward model that tracks it can make DR's
    direct-method term (Σ_a π(a) r̂(a)) worth B's value rather than the served policy's."""
    data, X = log_decisions(world, 4_000, ServingPolicy("epsilon-greedy", epsilon=0.2, top_k=3), seed=7)
    noise = np.random.default_rng(8).normal(size=data.features.shape)
    blind = LoggedDecisions(data.logging_p, data.group_sizes, data.chosen, data.rewards, features=noise)
    target = policy_probs(X, world.theta_b, GREEDY)
    scores = world.reward_p(X).reshape(-1, 1)

    def direct(reward_hat: np.ndarray) -> float:
        return float((target * reward_hat.reshape(target.shape)).sum(axis=1).mean())

    with_model = direct(cross_fit_reward_model(blind, model_scores=scores))
    without = direct(cross_fit_reward_model(blind))
    assert abs(with_model - truth) < 0.015, (with_model, truth)
    assert abs(without - truth) > 0.05 and abs(without - blind.rewards.mean()) < 0.02, "blind r̂: the served value"
    report = evaluate(blind, target.reshape(-1), cross_fit_reward_model(blind, model_scores=scores), n_boot=100)
    assert report.estimate("dr").ci_low <= truth <= report.estimate("dr").ci_high
    only_model = cross_fit_reward_model(LoggedDecisions(data.logging_p, data.group_sizes, data.chosen,
                                                        data.rewards), model_scores=scores)
    assert np.corrcoef(only_model, scores[:, 0])[0, 1] > 0.99  # no logged features at all: the model alone
    with pytest.raises(ValueError, match="reward-model scores"):
        cross_fit_reward_model(LoggedDecisions(data.logging_p, data.group_sizes, data.chosen, data.rewards))


def test_matching_policies_reproduce_the_logged_value_exactly() -> None:
    data = LoggedDecisions([0.9, 0.1, 0.5, 0.5], [2, 2], [0, 1], [1.0, 0.0])
    report = evaluate(data, data.logging_p, n_boot=50)
    assert report.estimate("ips").value == pytest.approx(0.5) and report.estimate("snips").value == pytest.approx(0.5)
    assert report.ess == pytest.approx(2.0)


# ---- end to end: serve with a tiny blender over gRPC, collect Feedback, evaluate another blender ----------


PHRASES = ["Sure.", "What do you mean?", "I love pizza very much", "Why not?", "No", "Tell me more, is it far?",
           "That sounds great", "Okay then"]


class PhraseSource:
    name = "bank"

    def candidates(self, context, language, k, deadline):
        from core.types import Candidate

        # A content hash, not hash(): str hashes change per process, and so would every pool and the test's outcome.
        rng = np.random.default_rng(int(hashlib.sha1(context.last_text.encode()).hexdigest()[:8], 16))
        picks = rng.choice(len(PHRASES), size=6, replace=False)
        return [Candidate(PHRASES[i], "bank", language, phrase_id=int(i) + 1, score=float(c),
                          stage_scores={"retrieval": float(c)}) for i, c in zip(picks, rng.random(6), strict=True)]


def _tiny_blender(directory, prefer_questions: bool, names=("retrieval", "surface")):
    import lightgbm as lgb

    from core.types import Context, Turn
    from ranker.annotators import annotate_all, build_annotators, describe
    from ranker.blender import Blender
    from ranker.dataset import RankingDataset

    annotators = build_annotators(names=list(names))
    source = PhraseSource()
    contexts = [Context((Turn("user", f"message number {i}"),)) for i in range(150)]
    pools = [source.candidates(c, "en", 6, 0.0) for c in contexts]
    X = np.vstack(annotate_all(annotators, contexts, pools))
    y = np.array([float(c.text.endswith("?")) if prefer_questions else float(c.score == max(p.score for p in pool))
                  for pool in pools for c in pool], dtype=np.float32)
    names_ = [f for a in annotators for f in a.feature_names]
    dataset = RankingDataset(X, y, np.full(len(pools), 6), names_, [str(i) for i in range(150)],
                             [str(i) for i in range(150)], ["train"] * 150, [c.text for p in pools for c in p],
                             ["retrieved"] * len(y), describe(annotators), {})
    params = {"objective": "lambdarank", "num_leaves": 4, "min_data_in_leaf": 5, "verbosity": -1, "num_threads": 1}
    booster = lgb.train(params, lgb.Dataset(X, y, group=dataset.group_sizes, feature_name=names_), num_boost_round=20)
    Blender.from_booster(booster, dataset, params, annotators=annotators).save(directory)
    return Blender.load(directory)


def test_end_to_end_over_grpc_with_feedback_and_a_second_blender(tmp_path) -> None:
    from dataclasses import replace

    from core.config import ServerConfig, Settings
    from dialog.jobs.eval_offpolicy import evaluate_offpolicy
    from dialog.serving.client import ChatClient
    from dialog.serving.feedback import FEEDBACK_DB, build_serving_loop, feedback_rewards
    from dialog.serving.pipeline import Pipeline
    from dialog.serving.server import start_server
    from ranker.blender import BlenderMismatchError
    from repliq.v1 import chat_pb2

    served_blender = _tiny_blender(tmp_path / "blender-a", prefer_questions=False)
    candidate = _tiny_blender(tmp_path / "blender-b", prefer_questions=True)
    settings = Settings(home=tmp_path / "home")
    settings = replace(settings, logging=replace(settings.logging, decisions=True, log_user_text=True),
                       exploration=replace(settings.exploration, epsilon=0.5, top_k=0, seed=11))
    loop = build_serving_loop(settings, served_blender)
    pipeline = Pipeline([PhraseSource()], pool_k=6, reranker=served_blender,
                        versions={"ranker": served_blender.version})
    running = start_server(pipeline, replace(ServerConfig(), port=0), default_top_k=3, loop=loop)
    client = ChatClient("127.0.0.1", running.port, timeout_s=10.0)
    truth = []
    try:
        for i in range(240):
            reply = client.respond([("user", f"hello number {i}")])
            liked = reply.candidates[0].text.endswith("?")  # simulated users like being asked back
            thumb = chat_pb2.THUMB_UP if liked else chat_pb2.THUMB_DOWN
            client.stub.Feedback(chat_pb2.FeedbackRequest(request_id=reply.request_id, thumb=thumb), timeout=5)
    finally:
        client.close()
        running.stop(grace=2.0)
        loop.close()
    logs = settings.home / "decisions"
    with open(loop.log.files()[-1], "a", encoding="utf-8") as handle:
        handle.write('{"schema": "repliq.decision/1", "request_id": "trunc')  # a crash mid-write
    summary = evaluate_offpolicy(logs, tmp_path / "blender-b", feedback_rewards(settings.home / FEEDBACK_DB),
                                 tmp_path / "report")
    assert summary["decisions_rewarded"] == 240 and summary["skipped_lines"] == 1
    records = [json.loads(line) for path in loop.log.files() for line in path.read_text().splitlines()[:-1]]
    for record in records:  # B's true value on these contexts: rewards are a known function of the reply
        names = record["feature_names"]
        X = np.array([[np.nan if v is None else v for v in c["features"]] for c in record["candidates"]])
        assert len(names) == X.shape[1]
        best = int(np.argmax(candidate.raw_scores(X)))
        truth.append(float(record["candidates"][best]["text"].endswith("?")))
    value = float(np.mean(truth))
    dr = next(e for e in summary["estimates"] if e["estimator"] == "dr")
    # B's true value sits on the edge of the reward range (it always asks back: 1.0), where a bootstrap interval
    # of a mean of 0/1 rewards often stops just short of it; allow that edge, and pin the point estimate.
    assert dr["ci_low"] <= value <= dr["ci_high"] + 0.01 and abs(dr["value"] - value) < 0.03, (dr, value)
    assert value > summary["logging_value"]
    assert (tmp_path / "report" / "report.md").read_text().count("| dr |") == 1
    assert (tmp_path / "report" / "estimates.png").stat().st_size > 1000
    _check_reward_model_sources(logs, tmp_path, records, candidate, summary)
    _tiny_blender(tmp_path / "blender-c", prefer_questions=True, names=("retrieval",))
    with pytest.raises(BlenderMismatchError, match="other model versions"):
        evaluate_offpolicy(logs, tmp_path / "blender-c", feedback_rewards(settings.home / FEEDBACK_DB),
                           tmp_path / "report-c")


class _TextScorer:
    """A reward model with a known answer: ``total`` is a fixed function of the reply's text."""

    columns = ("relevance", "specificity_z", "total")

    def __init__(self, identity: str, fn) -> None:
        self.identity, self.fn = identity, fn

    def score(self, contexts, texts, languages) -> np.ndarray:
        assert len(contexts) == len(texts) == len(languages) and all(c.turns for c in contexts)
        values = np.array([self.fn(t) for t in texts], dtype=np.float64)
        return np.column_stack([values, -values, values])


def _check_reward_model_sources(logs, tmp_path, records, candidate, feedback_summary) -> None:
    """--reward model scores the served reply with the reward model; a reward model sharpens DR's direct method."""
    from dialog.jobs.eval_offpolicy import evaluate_offpolicy

    def words(text: str) -> float:
        return len(text.split()) / 5.0

    summary = evaluate_offpolicy(logs, tmp_path / "blender-b", None, tmp_path / "report-model",
                                 reward_source="model", reward_model=_TextScorer("words", words))
    served = np.mean([words(r["candidates"][r["chosen"]]["text"]) for r in records])
    assert summary["logging_value"] == pytest.approx(served) and summary["reward_model"] == "words"
    assert summary["decisions_rewarded"] == len(records) and summary["logging_value"] != pytest.approx(
        feedback_summary["logging_value"])
    best = [int(np.argmax(candidate.raw_scores(np.array([[np.nan if v is None else v for v in c["features"]]
                                                          for c in r["candidates"]])))) for r in records]
    truth = float(np.mean([words(r["candidates"][b]["text"]) for r, b in zip(records, best, strict=True)]))
    dr = next(e for e in summary["estimates"] if e["estimator"] == "dr")
    assert abs(dr["value"] - truth) < 0.02 and abs(truth - served) > 0.05, (dr, truth, served)
    assert "reward model words" in (tmp_path / "report-model" / "report.md").read_text()

    def asks(text: str) -> float:
        return float(text.endswith("?"))

    from dialog.serving.feedback import FEEDBACK_DB, feedback_rewards

    rewards = feedback_rewards(logs.parent / FEEDBACK_DB)
    sharp = evaluate_offpolicy(logs, tmp_path / "blender-b", rewards, tmp_path / "report-dm",
                               reward_model=_TextScorer("asks", asks))
    width = {name: next(e["ci_high"] - e["ci_low"] for e in s["estimates"] if e["estimator"] == "dr")
             for name, s in (("plain", feedback_summary), ("model", sharp))}
    assert width["model"] < 0.5 * width["plain"], width
    with pytest.raises(ValueError, match="needs a reward model"):
        evaluate_offpolicy(logs, tmp_path / "blender-b", None, tmp_path / "r", reward_source="model")


def test_a_reward_model_refuses_logs_without_user_text() -> None:
    from rl.ope_rewards import candidate_scores

    record = {"request_id": "r1", "language": "en", "chosen": 0,
              "candidates": [{"text": "Hi", "propensity": 1.0}], "context_hash": "abc"}
    with pytest.raises(ValueError, match="log_user_text"):
        candidate_scores([record], _TextScorer("x", len))
