"""The artifact contract (core.artifacts) and `repliq artifacts list`: kinds, formats, lineage and staleness."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from core.artifact_list import list_artifacts
from core.artifacts import (
    KINDS,
    ArtifactError,
    ArtifactManifest,
    check_declared,
    check_lineage,
    load_manifest,
    package_versions,
    save_manifest,
)
from core.bank.store import PhraseBank
from core.config import Settings
from core.models.manifest import ModelManifest
from core.types import Context, Turn
from dialog.cli.main import main
from dialog.jobs.rl_tune import _rl_lineage, save_run_manifest
from ranker.blender import MANIFEST_NAME, Blender, BlenderMismatchError, read_blender_manifest
from ranker.dataset import RankingDataset
from rl.artifacts import RewardModelError, load_artifact, save_artifact, weights_digest
from rl.preference import CheapFeaturizer, PreferenceDataError, PreferencePair, PreferenceRewardModel

ENCODER = "enc"


def _encoder(models_dir: Path, name: str = ENCODER, weights: str = "a", **extra: object) -> str:
    """A model-cache entry (manifest only: listing never loads weights); returns its identity."""
    manifest = ModelManifest(model_id=name, kind="encoder", source_package=str(extra.pop("package", "test")),
                             source_version="0", weights_sha256=weights * 64, dim=4, extra=dict(extra))
    manifest.save(models_dir / name)
    return manifest.short_id


def _settings(tmp_path: Path) -> Settings:
    base = Settings()
    return replace(base, home=tmp_path / "home", models_dir=tmp_path / "models",
                   encoder=replace(base.encoder, name=ENCODER))


def _proxy(settings: Settings, encoder: str, seed: int = 0) -> str:
    arrays = {"m0_mean": np.random.default_rng(seed).normal(size=3).astype(np.float32)}
    save_artifact(settings.artifacts_dir / "reward-specificity", "specificity-proxy", arrays, config={},
                  encoder=encoder, data_sha256="0" * 64, metrics={})
    return f"specificity-proxy@{weights_digest(arrays)[:12]}"


def _blender(directory: Path, resources: dict[str, str], seed: int = 0, kind: str = "blender",
             lineage: dict[str, str] | None = None) -> Blender:
    """A real LightGBM lambdarank booster on random features, saved the way training saves one."""
    rng = np.random.default_rng(seed)
    sizes = np.full(20, 5)
    X = rng.normal(size=(100, 2)).astype(np.float32)
    y = np.tile([1.0, 0, 0, 0, 0], 20).astype(np.float32)
    params = {"objective": "lambdarank", "verbosity": -1, "min_data_in_leaf": 5, "seed": seed, "num_threads": 1}
    booster = lgb.train(params, lgb.Dataset(X, y, group=sizes, feature_name=["f0", "f1"]), num_boost_round=5)
    dataset = RankingDataset(X, y, sizes, ["f0", "f1"], [f"c{i}" for i in range(20)], [f"v{i}" for i in range(20)],
                             ["train"] * 20, [f"t{i}" for i in range(100)], ["gold"] * 100, [], dict(resources))
    blender = Blender.from_booster(booster, dataset, params)
    blender.manifest.kind, blender.manifest.lineage = kind, dict(lineage or {})
    blender.save(directory)
    return blender


def _by_kind(settings: Settings) -> dict[str, dict]:
    return {e.kind: e.to_json() for e in list_artifacts(settings)}


# ---- the contract ----------------------------------------------------------------------------


def test_manifest_round_trip_and_refusals_name_the_rebuild_command(tmp_path: Path) -> None:
    manifest = ArtifactManifest(kind="relevance", identity="f" * 64, config={"l2": 1.0}, data_sha256="d" * 64,
                                lineage={"encoder": "enc@aaa"}, versions=package_versions("numpy"),
                                metrics={"auc": 0.9}, details={"encoder": "enc@aaa"})
    path = tmp_path / "m" / "manifest.json"
    save_manifest(path, manifest)
    loaded = load_manifest(path.parent, "relevance")
    assert loaded == manifest and loaded.format_version == KINDS["relevance"].format_version
    assert loaded.ref == "relevance@" + "f" * 12 and {"python", "numpy"} <= set(loaded.versions)
    with pytest.raises(ArtifactError, match=r"holds a 'relevance' artifact.*repliq train reward --kind specificity"):
        load_manifest(path, "specificity-proxy")
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "format_version": 1}))
    with pytest.raises(ArtifactError, match=r"format 1, this repliq reads format 2; run `repliq train reward "
                                            r"--kind relevance`"):
        load_manifest(path, "relevance")
    path.write_text(json.dumps({k: v for k, v in data.items() if k != "format_version"}))
    with pytest.raises(ArtifactError, match="before the artifact contract"):
        load_manifest(path, "relevance")
    with pytest.raises(ArtifactError, match=r"not found.*repliq index build"):
        load_manifest(tmp_path / "nothing", "index")
    with pytest.raises(ValueError, match="overwrite common manifest keys"):
        ArtifactManifest(kind="index", identity="x", details={"metrics": {}})
    with pytest.raises(ArtifactError, match="unknown artifact kind"):
        ArtifactManifest(kind="nonsense", identity="x")
    with pytest.raises(ArtifactError, match=r"built on encoder 'enc@aaa', but this workspace has 'enc@bbb'"):
        check_lineage(loaded, "encoder", "enc@bbb", path)
    check_lineage(loaded, "encoder", "enc@aaa", path)
    check_declared({"schema": "anything"}, "labeling-batch", path)  # pre-contract exports stay loadable
    with pytest.raises(ArtifactError, match="repliq ssa export"):
        check_declared({"kind": "labeling-batch", "format_version": 7, "identity": "x"}, "labeling-batch", path)


def test_reward_artifact_refuses_old_format_damage_and_another_encoder(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    _proxy(settings, "enc@" + "a" * 12)
    directory = settings.artifacts_dir / "reward-specificity"
    manifest, arrays = load_artifact(directory, "specificity-proxy", "enc@" + "a" * 12)
    assert manifest["lineage"] == {"encoder": "enc@" + "a" * 12} and set(arrays) == {"m0_mean"}
    with pytest.raises(RewardModelError, match="Retrain it with `repliq train reward --kind specificity`"):
        load_artifact(directory, "specificity-proxy", "other@" + "b" * 12)
    np.savez(directory / "weights.npz", m0_mean=np.ones(3, np.float32))
    with pytest.raises(RewardModelError, match="does not match its manifest hash"):
        load_artifact(directory, "specificity-proxy")
    legacy = {k: v for k, v in manifest.items() if k not in ("format_version", "identity", "lineage")}
    (directory / "manifest.json").write_text(json.dumps(legacy))
    with pytest.raises(RewardModelError, match=r"before the artifact contract.*repliq train reward --kind specificity"):
        load_artifact(directory, "specificity-proxy")


def test_preference_model_is_refused_in_an_old_format(tmp_path: Path) -> None:
    pairs = [PreferencePair(_context(f"hello {i}"), f"a specific reply number {i}?", "ok") for i in range(12)]
    PreferenceRewardModel(CheapFeaturizer()).fit(pairs).save(tmp_path / "pref", "0" * 64)
    loaded = load_manifest(tmp_path / "pref", "preference-reward")
    assert loaded.lineage == {"featurizer": "cheap-v1"} and loaded.details["model"] == "bradley-terry-linear"
    assert PreferenceRewardModel.load(tmp_path / "pref").weights is not None
    path = tmp_path / "pref" / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "format_version": 1}))
    with pytest.raises(PreferenceDataError, match="repliq train reward --kind preference"):
        PreferenceRewardModel.load(tmp_path / "pref")


def _context(text: str) -> Context:
    return Context((Turn("user", text),))


def test_blender_manifest_is_an_artifact_and_old_formats_are_refused(tmp_path: Path) -> None:
    blender = _blender(tmp_path / "blender", {"encoder": "enc@" + "a" * 12, "specificity": "none"})
    artifact = load_manifest(tmp_path / "blender", "blender")
    assert artifact.identity == blender.manifest.model_sha256 and artifact.ref == f"blender@{blender.version}"
    assert artifact.lineage == {"encoder": "enc@" + "a" * 12, "specificity": "none"}
    assert read_blender_manifest(tmp_path / "blender") == blender.manifest
    assert Blender.load(tmp_path / "blender").version == blender.version
    path = tmp_path / "blender" / MANIFEST_NAME
    path.write_text(json.dumps({**json.loads(path.read_text()), "format_version": 1}))
    with pytest.raises(BlenderMismatchError, match=r"format 1.*run `repliq train blender`"):
        Blender.load(tmp_path / "blender")
    tuned = _blender(tmp_path / "blender-rl", {}, kind="blender-rl", lineage={"blender": "blender@x"})
    assert Blender.load(tmp_path / "blender-rl").manifest.lineage == {"blender": "blender@x"} == tuned.manifest.lineage


# ---- repliq artifacts list -------------------------------------------------------------------


def test_artifacts_list_marks_a_blender_stale_when_its_proxy_or_parent_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    settings = _settings(tmp_path)
    encoder = _encoder(settings.models_dir)
    proxy = _proxy(settings, encoder)
    blender = _blender(settings.artifacts_dir / "blender", {"encoder": encoder, "specificity": proxy})
    parent = f"blender@{blender.version}"
    _blender(settings.artifacts_dir / "blender-rl", {"encoder": encoder, "specificity": proxy}, seed=1,
             kind="blender-rl", lineage={"blender": parent})
    relevance = {"kind": "relevance", "identity": "9" * 64}
    lineage = _rl_lineage(Blender.load(settings.artifacts_dir / "blender"), proxy, relevance)
    assert lineage == {"blender": parent, "reward-specificity": proxy, "reward-relevance": "relevance@" + "9" * 12}
    lineage.pop("reward-relevance")  # no relevance model in this workspace: that key would be stale at once
    run = save_run_manifest(settings.artifacts_dir / "rl-run", {"config": {"betas": [1.0]}, "selection": {}},
                            "d" * 64, lineage, "blender-rl@x")
    assert load_manifest(settings.artifacts_dir / "rl-run", "rl-run") == run
    (settings.artifacts_dir / "eval").mkdir()  # reports without a manifest are not artifacts
    listed = _by_kind(settings)
    assert set(listed) == {"specificity-proxy", "blender", "blender-rl", "rl-run"}
    assert not any(e["stale"] for e in listed.values()), listed
    assert listed["blender-rl"]["lineage"]["blender"] == parent == listed["blender"]["identity"]

    new_proxy = _proxy(settings, encoder, seed=1)  # retrained proxy: the blenders read its old scores
    listed = _by_kind(settings)
    assert not listed["specificity-proxy"]["stale"] and listed["specificity-proxy"]["identity"] == new_proxy
    assert listed["blender"]["stale"] and listed["blender"]["rebuild"] == "repliq train blender"
    assert listed["blender"]["reasons"] == [f"specificity: built on {proxy}, the workspace now has {new_proxy}"]
    assert listed["rl-run"]["stale"] and listed["rl-run"]["reasons"][0].startswith("reward-specificity: built on")

    _blender(settings.artifacts_dir / "blender", {"encoder": encoder, "specificity": new_proxy}, seed=2)
    listed = _by_kind(settings)
    assert not listed["blender"]["stale"]
    assert listed["blender-rl"]["stale"] and listed["blender-rl"]["rebuild"] == "repliq rl tune"
    assert any(r.startswith(f"blender: built on {parent}") for r in listed["blender-rl"]["reasons"])

    monkeypatch.setenv("REPLIQ_ENCODER_NAME", ENCODER)
    argv = ["--home", str(settings.home), "--models-dir", str(settings.models_dir), "artifacts", "list"]
    assert main([*argv, "--json"]) == 0
    from_cli = {e["kind"]: e for e in json.loads(capsys.readouterr().out)}
    assert from_cli == listed
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "STALE" in table and "run `repliq rl tune`" in table and "run `repliq train blender`" not in table


def test_artifacts_list_follows_the_encoder_and_flags_pre_contract_artifacts(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    encoder = _encoder(settings.models_dir)
    _proxy(settings, encoder)
    legacy = settings.artifacts_dir / "reward-relevance"
    legacy.mkdir(parents=True)
    (legacy / "manifest.json").write_text(json.dumps({"kind": "relevance", "encoder": encoder}))
    listed = _by_kind(settings)
    assert not listed["specificity-proxy"]["stale"]
    assert listed["relevance"]["stale"] and listed["relevance"]["rebuild"] == "repliq train reward --kind relevance"
    assert "before the artifact contract" in listed["relevance"]["reasons"][0]

    other = _encoder(settings.models_dir, weights="b")  # the same model id re-prepared with other weights
    listed = _by_kind(settings)
    assert listed["specificity-proxy"]["stale"]
    assert listed["specificity-proxy"]["reasons"] == [f"encoder: built on {encoder}, the workspace now has {other}"]
    assert listed["specificity-proxy"]["rebuild"] == "repliq train reward --kind specificity"


def test_artifacts_list_shows_fine_tuned_encoders_and_their_base(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    base = _encoder(settings.models_dir, name="base")
    _encoder(settings.models_dir, name="base-ft", weights="c", package="repliq-finetune", base=base,
             data_hash="d" * 64, created_at="2024-01-01T00:00:00+00:00")
    listed = _by_kind(settings)
    assert listed["encoder"]["identity"] == "base-ft@" + "c" * 12 and not listed["encoder"]["stale"]
    assert listed["encoder"]["lineage"] == {"base": base}
    _encoder(settings.models_dir, name="base", weights="e")
    listed = _by_kind(settings)
    assert listed["encoder"]["stale"] and listed["encoder"]["rebuild"] == "repliq train retriever"


def test_index_is_stale_after_a_bank_edit_and_refused_in_an_old_format(tmp_path: Path) -> None:
    from retriever.bank_index import IndexMismatchError, build_index, load_index, update_index
    from retriever.encoder import Encoder

    from tiny_models import build_tiny_encoder

    model_dir = build_tiny_encoder(tmp_path / "models" / "tiny")
    settings = _settings(tmp_path)
    settings = replace(settings, encoder=replace(settings.encoder, name=str(model_dir)))
    encoder = Encoder(model_dir)
    with PhraseBank(settings.bank_path) as bank:
        bank.add("hello there", "en")
        bank.add("привет", "ru")
        built = build_index(bank, encoder, settings)
        listed = _by_kind(settings)
        assert listed["index"]["identity"] == f"index@{built.checksum[:12]}" and not listed["index"]["stale"]
        assert listed["index"]["lineage"] == {"bank": str(bank.revision), "model": encoder.identity}
        bank.add("a new phrase", "en")
        listed = _by_kind(settings)
        assert listed["index"]["stale"] and listed["index"]["rebuild"] == "repliq index build"
        assert listed["index"]["reasons"] == [f"bank: built on {built.bank_revision}, the workspace now has "
                                              f"{bank.revision}"]
        path = settings.indexes_dir / encoder.manifest.model_id / built.snapshot / "manifest.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "format_version": 1}))
        with pytest.raises(IndexMismatchError, match=r"format 1.*repliq index build"):
            load_index(settings, encoder, bank)
        report = update_index(bank, encoder, settings)
        assert report.full_rebuild and "format 1" in report.reason
        assert load_index(settings, encoder, bank).manifest.total == 3
        assert not _by_kind(settings)["index"]["stale"]
