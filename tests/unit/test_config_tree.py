"""Settings is composed of the trainers' own configs: one default each, set per workspace in config.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import ConfigError, Settings, load_settings
from core.job_configs import AdapterJobConfig, BlenderTrainConfig, RLRunConfig


def test_the_defaults_are_the_trainers_own() -> None:
    train = Settings().train
    assert train.blender == BlenderTrainConfig()
    assert train.adapter == AdapterJobConfig()
    assert train.rl == RLRunConfig()


def test_a_workspace_sets_trainer_configs_in_its_toml(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("[train.blender]\nrounds = 77\n\n[train.adapter.train]\nrank = 8\n",
                                          encoding="utf-8")
    train = load_settings(environ={"REPLIQ_HOME": str(tmp_path)}).train
    assert train.blender.rounds == 77 and train.adapter.train.rank == 8
    assert train.adapter.pairs_per_language == AdapterJobConfig().pairs_per_language


def test_an_unknown_trainer_key_names_the_table_and_the_key(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("[train.blender]\nround = 77\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"train\.blender.*'round'"):
        load_settings(environ={"REPLIQ_HOME": str(tmp_path)})
