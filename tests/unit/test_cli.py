"""The command line: --help everywhere, consistent errors, and the bank import contract."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from core.config import ConfigError, load_settings
from dialog.cli.main import build_parser, main


def all_command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths += all_command_paths(sub, (*prefix, name))
    return paths


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    paths = all_command_paths(build_parser())
    assert ("bank", "import") in paths and ("serve",) in paths and ("ssa", "report") in paths
    for path in paths:
        with pytest.raises(SystemExit) as info:
            main([*path, "--help"])
        assert info.value.code == 0, path
        assert "usage: repliq" in capsys.readouterr().out


def test_train_retriever_help_lists_the_domain_adaptation_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "retriever", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--topicalchat TOPICALCHAT", "--topicalchat-pairs N", "--corpus CORPUS", "--corpus-pairs N"):
        assert flag in out, flag
    assert "train hash split" in out


def test_train_blender_refuses_bad_pool_flags_before_reading_anything(home: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "blender", "--random-negatives", "-1"]) != 0
    assert "--random-negatives must be 0 or more" in capsys.readouterr().err
    assert main(["train", "blender", "--topicalchat", str(tmp_path / "nowhere")]) != 0
    assert "valid_freq.json" in capsys.readouterr().err
    assert not (home / "artifacts").exists()  # nothing was written


def test_malformed_import_leaves_the_bank_unchanged(home: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"text": "Сегодня идёт снег, и город совсем белый.", "language": "ru"},
                               ensure_ascii=False) + "\n", encoding="utf-8")
    assert main(["bank", "import", str(good)]) == 0
    assert main(["bank", "stats"]) == 0
    before = capsys.readouterr().out.split("added")[-1]
    bad = tmp_path / "bad.csv"
    bad.write_text("text,language\nA perfectly fine phrase about tea.,en\n,en\nAnother one,xx-bad\n", encoding="utf-8")
    assert main(["bank", "import", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:3" in err and f"{bad}:4" in err and "nothing was written" in err
    assert main(["bank", "stats"]) == 0
    assert capsys.readouterr().out == before.split("\n", 1)[1]


def test_missing_bank_is_a_clear_error(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bank", "list"]) == 2
    assert "repliq bank init --default" in capsys.readouterr().err


def test_config_file_and_environment_overrides(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[retrieval]\ntop_k = 7\n[server]\nport = 6001\n', encoding="utf-8")
    settings = load_settings(config, {"REPLIQ_HOME": str(tmp_path), "REPLIQ_SERVER_PORT": "6002"})
    assert settings.retrieval.top_k == 7 and settings.server.port == 6002
    config.write_text('[retrieval]\ntopk = 7\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown key 'topk'"):
        load_settings(config, {"REPLIQ_HOME": str(tmp_path)})
    with pytest.raises(ConfigError, match="cannot read 'many'"):
        load_settings(None, {"REPLIQ_HOME": str(tmp_path / "other"), "REPLIQ_SERVER_MAX_WORKERS": "many"})
