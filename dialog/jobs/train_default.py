"""`repliq train default`: rebuild, from public data, the small trained artifacts repliq ships.

A fresh install serves what `core/data/shipped/` holds: the response-tuned query adapter and the blender
trained on top of it (plus, when asked, the reward heads and the RL-tuned policy). This job is the one
command that makes every one of them again, in dependency order, in the workspace; `--publish` then
copies them into the package, refusing a set over the size budget (the repository stays small).

Each step is a job of its own, resumable on its own terms (the adapter's embeddings are cached on disk),
so a killed run repeats at most the step it was in.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from core.artifacts import shipped_dir
from core.atomic import atomic_directory, atomic_write_json
from core.config import Settings
from core.job_configs import (
    DEFAULT_POOLS,
    IndexBuildConfig,
    RewardJobConfig,
    TrainDefaultConfig,
)
from dialog.jobs.index_build import index_build
from dialog.jobs.train_adapter import ADAPTER_DIR, run_train_adapter
from dialog.jobs.train_blender import train_workspace_blender

log = logging.getLogger("repliq.train")
# What ships, in the order it is built; the reward heads and policy only with --rewards / --rl.
SHIPPED = ("adapter", "reward-specificity", "reward-relevance", "blender", "blender-rl")
# Files of a trained directory that stay in the workspace: training data and run logs are not the model.
NOT_SHIPPED = ("history.json",)


def data_files(data: Path) -> tuple[Path, Path]:
    """The public corpora under ``data`` (the layout of the project's shared data folder)."""
    russian, topical = data / "ru" / "koziev_anekdot_dialogues.tar.xz", data / "topicalchat_valid"
    missing = [str(p) for p in (russian, topical) if not p.exists()]
    if missing:
        raise FileNotFoundError(f"`repliq train default --data {data}`: not found: {', '.join(missing)}; give the "
                                "folder holding ru/koziev_anekdot_dialogues.tar.xz and topicalchat_valid/")
    return russian, topical


def train_default(settings: Settings, config: TrainDefaultConfig, say: Callable[[str], None] = print
                  ) -> dict[str, Any]:
    """Adapter, then (optionally) rewards, then the blender on top of them, then (optionally) RL; report."""
    if config.data is None:
        raise ValueError("`repliq train default` needs --data DIR (the public corpora it learns from)")
    russian, topical = data_files(config.data)
    report: dict[str, Any] = {"steps": {}}
    say(f"1/4 index: {index_build(settings, IndexBuildConfig())}")
    adapter_config = replace(config.adapter, russian=russian, topicalchat=topical)
    report["steps"]["adapter"] = run_train_adapter(settings, adapter_config)
    say(f"2/4 adapter: held-out R@1 {report['steps']['adapter']['adapter_r_at_1']} "
        f"(base {report['steps']['adapter']['base_r_at_1']})")
    # Every later step must see the adapter it just trained, not a shipped one.
    settings = replace(settings, encoder=replace(settings.encoder, adapter=str(settings.artifacts_dir / ADAPTER_DIR)))
    if config.rewards:
        from dialog.jobs.train_reward import train_reward

        for kind in ("specificity", "relevance"):
            report["steps"][f"reward-{kind}"] = train_reward(settings, RewardJobConfig(kind=kind, russian=russian),
                                                              say=say)
        say("3/4 rewards trained")
    corpora = replace(config.corpora, russian_dialogues=russian, topicalchat=topical)
    report["steps"]["blender"] = train_workspace_blender(settings, corpora, config.blender, DEFAULT_POOLS)
    say(f"3/4 blender: {report['steps']['blender']}")
    if config.rl:
        from dialog.jobs.rl_tune import run_rl_tune

        report["steps"]["rl"] = run_rl_tune(settings, config.rl_run)
        say("4/4 RL tuned")
    if config.publish:
        report["published"] = publish(settings.artifacts_dir, config.max_shipped_bytes, include_rl=config.rl)
        say(f"published to {shipped_dir('')}: {report['published']['total_bytes']} bytes")
    atomic_write_json(settings.artifacts_dir / "train-default-report.json", report)
    return report


def _shippable_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name not in NOT_SHIPPED)


def _shippable_policy(directory: Path) -> bool:
    """Only a policy that passed its R@1 guard *and* met the RL target in every language becomes the default.

    One that passed the guard but missed the target stays servable on request (``[ranker] blender``), but a
    fresh install should not get it: it is not known to help (issue 14's rule). Manifests written before the
    target existed carry no ``target_met`` and are judged by the guard alone.
    """
    from ranker.blender import read_blender_manifest

    training = read_blender_manifest(directory).training
    return bool((training.get("guard") or {}).get("servable")) and training.get("target_met", True) is not False


def publish(artifacts: Path, max_bytes: int, include_rl: bool = False, target: Path | None = None) -> dict[str, Any]:
    """Copy the workspace's trained defaults into the package (``core/data/shipped``), each atomically.

    Checked before anything is replaced: every directory exists and the set fits ``max_bytes``, so a
    refused publish changes nothing.
    """
    target = target or shipped_dir("")
    names = [n for n in SHIPPED if (artifacts / n).is_dir() and (include_rl or n != "blender-rl")]
    if "blender-rl" in names and not _shippable_policy(artifacts / "blender-rl"):
        names.remove("blender-rl")  # failed its guard or missed the target: never the shipped default
    for required in ("adapter", "blender"):
        if required not in names:
            raise FileNotFoundError(f"no {required} in {artifacts}; run `repliq train default` without --publish "
                                    "first, or check --home")
    sizes = {n: sum(p.stat().st_size for p in _shippable_files(artifacts / n)) for n in names}
    total = sum(sizes.values())
    if total > max_bytes:
        raise ValueError(f"the shipped set would be {total} bytes ({sizes}), over the {max_bytes}-byte budget; "
                         "shrink the blender (fewer rounds) or the adapter rank")
    for name in names:
        with atomic_directory(target / name) as scratch:
            for source in _shippable_files(artifacts / name):
                destination = scratch / source.relative_to(artifacts / name)
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, destination)
    for stale in (n for n in SHIPPED if n not in names and (target / n).exists()):
        shutil.rmtree(target / stale)  # a shipped artifact that was not rebuilt would carry an old lineage
    return {"artifacts": sizes, "total_bytes": total}

