"""Ray and local executors give the same numbers, and a Ray job killed mid-way resumes from what it wrote.

One local Ray (2 CPUs, no dashboard, a small object store) serves the whole module: starting Ray takes
seconds, every pipeline then only starts its actors. The models are tiny random ones (tests/tiny_models.py).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from core.bank.store import PhraseBank
from core.config import Settings
from core.executor import ExecutorConfig, RayExecutor
from core.job_configs import BankScoreConfig, BlenderTrainConfig, BuilderConfig, IndexBuildConfig
from core.training_corpora import BlenderCorpora
from dialog.jobs.bank_score import bank_score
from dialog.jobs.index_build import index_build
from dialog.jobs.train_blender import BlenderFeatureWorker, train_workspace_blender
from ranker.dataset import RankingDataset
from ranker.idf import IdfTable
from ranker.training_data import data_dir_of

from tiny_models import build_tiny_decoder, build_tiny_encoder
from workspace import make_settings

ray = pytest.importorskip("ray")

RAY = ExecutorConfig(kind="ray", actors=2)
PHRASES = [f"{word} number {i}, said {'кто-то' if i % 3 else 'someone'} twice" for i, word in
           enumerate(["hello", "привет", "tea", "погода", "good night", "ok", "see you", "спасибо"] * 5)]


@pytest.fixture(scope="module", autouse=True)
def ray_session() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024 * 1024, logging_level="warning")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    build_tiny_decoder(root / "tiny-lm")
    build_tiny_encoder(root / "tiny-encoder")
    return root


def workspace(root: Path, models: Path) -> Settings:
    settings = make_settings(root, models)
    settings = replace(settings, encoder=replace(settings.encoder, name=str(models / "tiny-encoder"), adapter="none",
                                                 backend="torch", num_threads=1, batch_size=2))
    settings.home.mkdir(parents=True, exist_ok=True)
    with PhraseBank(settings.bank_path) as bank:
        for i, text in enumerate(PHRASES):
            bank.add(text, "ru" if any("а" <= c <= "я" for c in text) else "en", status="retired" if i == 5 else
                     "approved")
    return settings


def stored_scores(settings: Settings) -> dict[int, tuple[float, float, int]]:
    with PhraseBank(settings.bank_path) as bank, bank.connect() as conn:
        rows = conn.execute("SELECT phrase_id, sum_logprob, mean_logprob, n_tokens FROM lm_scores").fetchall()
    return {int(pid): (float(total), float(mean), int(n)) for pid, total, mean, n in rows}


def checksum(rows: dict) -> str:
    return hashlib.sha256(json.dumps(sorted(rows.items())).encode()).hexdigest()


def test_bank_score_on_ray_equals_local_and_resumes_after_a_kill(tmp_path: Path, models: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    config = BankScoreConfig(lm=str(models / "tiny-lm"), batch_size=4, threads=1)
    local = workspace(tmp_path / "local", models)
    assert bank_score(local, config, progress=False).scored == 39
    expected = stored_scores(local)

    on_ray = workspace(tmp_path / "ray", models)
    original = RayExecutor.map

    def killed_after_two(self, factory, batches):  # the driver dies after committing two batches
        for count, item in enumerate(original(self, factory, batches)):
            if count == 2:
                raise KeyboardInterrupt("killed")
            yield item

    monkeypatch.setattr(RayExecutor, "map", killed_after_two)
    with pytest.raises(KeyboardInterrupt):  # one actor here: every actor start costs seconds of CPU
        bank_score(on_ray, replace(config, executor=replace(RAY, actors=1)), progress=False)
    partial = stored_scores(on_ray)
    assert len(partial) == 8 and all(expected[pid] == row for pid, row in partial.items())

    monkeypatch.setattr(RayExecutor, "map", original)
    report = bank_score(on_ray, replace(config, executor=RAY), progress=False)
    assert (report.scored, report.already_scored, report.approved) == (31, 8, 39)
    assert report.lm_id == bank_score(local, config, progress=False).lm_id  # same identity, nothing left to do
    assert checksum(stored_scores(on_ray)) == checksum(expected)


def test_index_build_on_ray_writes_the_same_snapshot(tmp_path: Path, models: Path) -> None:
    local = index_build(workspace(tmp_path / "local", models), IndexBuildConfig(), progress=lambda *_: None)
    seen: list[tuple[int, int]] = []
    on_ray = index_build(workspace(tmp_path / "ray", models), IndexBuildConfig(executor=RAY),
                         progress=lambda done, total: seen.append((done, total)))
    assert local.full_rebuild and on_ray.full_rebuild and on_ray.manifest.total == 39
    assert seen[-1] == (39, 39)
    # The snapshot checksum covers every shard's vectors and the phrase table: equal means bit-identical.
    assert on_ray.manifest.checksum == local.manifest.checksum
    assert on_ray.manifest.counts == local.manifest.counts


def write_dialogues(path: Path) -> Path:
    """Twelve four-turn dialogues per language in the JSONL dialogue format, some turns quoting bank phrases."""
    rows = [{"id": f"d:{lang}{i}", "language": lang, "turns": [
        {"speaker": "AB"[j % 2], "text": f"{words[(i + j) % 4]} {i} {j}" if (i + j) % 3 else PHRASES[i + j]}
        for j in range(4)]}
        for i in range(12) for lang, words in (("en", ["hello", "tea", "good night", "see you"]),
                                                ("ru", ["привет", "погода", "спасибо", "чай"]))]
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def test_blender_dataset_built_on_ray_equals_the_local_one(tmp_path: Path, models: Path) -> None:
    settings = workspace(tmp_path / "home", models)
    index_build(settings, IndexBuildConfig(), progress=lambda *_: None)
    corpora = BlenderCorpora(chitchat_conversations=0, jsonl=[write_dialogues(tmp_path / "dialogues.jsonl")],
                             max_pairs_per_language=24)
    # Every kind of negative, retrieval included, so the workers' rebuilt retriever and encoder are exercised.
    pools = BuilderConfig(k_retrieved=3, k_random=3, k_corpus=3, batch_size=8)
    built = {}
    for name, executor in (("local", ExecutorConfig()), ("ray", RAY)):
        out = tmp_path / f"blender-{name}"
        train_workspace_blender(settings, corpora, BlenderTrainConfig(rounds=3, early_stopping=0),
                                replace(pools, executor=executor), out_dir=out)
        built[name] = RankingDataset.load(data_dir_of(out) / "dataset.npz")
    local, on_ray = built["local"], built["ray"]
    assert len(local.group_sizes) > 16 and {"retrieved", "random", "corpus"} <= set(local.origins)
    assert np.isfinite(local.X[np.array(local.origins) == "retrieved"][:, local.feature_names.index(
        "retrieval_cosine")]).all()

    def digest(dataset: RankingDataset) -> str:
        return hashlib.sha256(dataset.X.tobytes() + dataset.y.tobytes() + dataset.group_sizes.tobytes()).hexdigest()

    assert digest(on_ray) == digest(local)  # feature matrix and labels, bit for bit
    assert on_ray.data_hash == local.data_hash  # and the contexts, texts, origins and annotators, in order

    # A worker whose rebuilt resources are not the driver's (here: another index) refuses to compute.
    stale = BlenderFeatureWorker(settings, None, IdfTable.build(["x"]), ([], np.zeros((0, 32), np.float32)),  # type: ignore[arg-type]
                                 "another-index", local.annotators, local.resources)
    with pytest.raises(RuntimeError, match="differ from the driver's"):
        stale()
