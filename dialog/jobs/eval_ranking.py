"""Which scorers `repliq eval ranking` runs: BM25, each bi-encoder, and the trained blender when there is one.

The blender is loaded through :func:`rl.blender_setup.load_blender`, the serving path, so an
evaluation refuses exactly the blenders serving would refuse, with the same message. Encoders are
wrapped in one :class:`retriever.encoder_cache.CachingEncoder` per model, so the blender and the
bi-encoder row of its own encoder encode each text once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from core.atomic import atomic_write_bytes
from core.config import Settings
from core.job_configs import EvalRankingConfig
from core.models.registry import resolve
from ranker.blender import MANIFEST_NAME, Blender, BlenderMismatchError, read_blender_manifest
from ranker.blender_scorer import BlenderScorer
from ranker.eval_plots import feature_importance_png
from ranker.evaluation import (
    BiEncoderScorer,
    BM25Scorer,
    Scorer,
    evaluate_ranking,
    jsonl_datasets,
    russian_dataset,
    topicalchat_dataset,
    write_report,
)
from retriever.adapter import AdaptedEncoder, configured_adapter
from retriever.encoder import Encoder
from retriever.encoder_cache import CachingEncoder
from rl.blender_setup import SPECIFICITY_DIR, load_blender


def ranking_scorers(settings: Settings, encoder_names: Sequence[str], blender_dir: Path | None = None,
                    use_blender: bool = True, say: Callable[[str], None] = print,
                    ) -> tuple[list[Scorer], Blender | None]:
    """The scorers side by side, and the blender among them (``None`` when skipped or none is trained).

    ``blender_dir`` overrides the configured blender; it must still match the settings' encoder and
    annotator resources, or :class:`ranker.blender.BlenderMismatchError` says what differs.
    """
    encoders = {name: CachingEncoder(Encoder(resolve(name, settings.models_dir))) for name in encoder_names}
    scorers: list[Scorer] = [BM25Scorer()]
    scorers += [BiEncoderScorer(encoder, name=Path(name).name) for name, encoder in encoders.items()]
    # The workspace encoder as serving runs it: with its query adapter (workspace or shipped) when it has one,
    # as a row of its own beside the plain encoder.
    # One model copy: the adapted row reads base vectors (and all passages) through the plain row's cache.
    plain = encoders.get(settings.encoder.name) or CachingEncoder(Encoder(resolve(settings.encoder.name,
                                                                                 settings.models_dir)))
    adapter = configured_adapter(settings.encoder.adapter, settings.artifacts_dir / "adapter", str(plain.identity))
    served = CachingEncoder(AdaptedEncoder(plain, adapter)) if adapter is not None else plain
    if adapter is not None:
        scorers.append(BiEncoderScorer(served, name=f"{Path(settings.encoder.name).name}+adapter"))
    if not use_blender:
        return scorers, None
    if blender_dir is not None:
        settings = replace(settings, ranker=replace(settings.ranker, blender=str(blender_dir)))
    # One cache for the bi-encoder row, the blender's retrieval cosines and its annotators (turn windows,
    # specificity proxy), so each text is encoded once however many of them read it.
    shared = served
    blender = load_blender(settings, shared)
    if blender is None:
        say("no trained blender in this workspace (`repliq train blender`); evaluating without it")
        return scorers, None
    scorers.append(BlenderScorer(blender, shared,
                                 context_turns=settings.retrieval.context_turns,
                                 rerank_depth=settings.retrieval.pool_k))
    return scorers, blender


def write_blender_importance(blender: Blender, out_dir: Path, stem: str = "ranking_eval") -> Path:
    """The blender's gain importance beside the report, so a score change can be traced to its inputs."""
    path = Path(out_dir) / f"{stem}_blender_importance.png"
    gains = blender.booster.feature_importance(importance_type="gain").tolist()
    atomic_write_bytes(path, feature_importance_png(blender.feature_names, gains, f"blender {blender.version}"))
    return path


def settings_for_blender(settings: Settings, directory: Path) -> Settings:
    """Settings that give a blender directory the inputs its manifest says it was trained with.

    For runs outside a workspace (benchmarks): the encoder is the model named in the recorded encoder
    identity (``model_id@weights-hash``), the context window is the recorded one, and a specificity
    proxy, if the blender used one, is looked for beside it. ``load_blender`` then checks every one.
    """
    if not (Path(directory) / MANIFEST_NAME).is_file():
        raise FileNotFoundError(f"{directory} holds no trained blender ({MANIFEST_NAME} missing); "
                                "give the directory `repliq train blender` wrote")
    resources = read_blender_manifest(Path(directory)).resources
    if "@" not in resources.get("encoder", ""):
        raise BlenderMismatchError(f"{directory} does not record the encoder it was trained with; "
                                   "run `repliq train blender` to retrain it")
    proxy = Path(directory).parent / SPECIFICITY_DIR
    wants_proxy = resources.get("specificity", "none") != "none" and proxy.exists()
    return replace(
        settings,
        encoder=replace(settings.encoder, name=resources["encoder"].rpartition("@")[0]),
        retrieval=replace(settings.retrieval,
                          context_turns=int(resources.get("context_turns", settings.retrieval.context_turns))),
        ranker=replace(settings.ranker, blender=str(directory), specificity=str(proxy) if wants_proxy else "none"),
    )


def eval_ranking(settings: Settings, config: EvalRankingConfig,
                 say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every scorer on every dataset; writes the report (and the blender's feature importance) to ``out``."""
    datasets = []
    if config.topicalchat:
        datasets.append(topicalchat_dataset(config.topicalchat, n_contexts=config.contexts))
    if config.russian:
        datasets.append(russian_dataset(config.russian, n_contexts=config.contexts))
    for path in config.corpora:
        datasets += jsonl_datasets(path, n_contexts=config.contexts)
    if not datasets:
        raise ValueError("no evaluation data: give --topicalchat, --russian or --corpus")
    scorers, blender = ranking_scorers(settings, config.encoders or [settings.encoder.name], config.blender,
                                       use_blender=config.use_blender)
    report = evaluate_ranking(datasets, scorers, say=say)
    out = config.out or settings.artifacts_dir / "eval"
    write_report(report, out)
    if blender is not None:
        write_blender_importance(blender, out)
    return report
