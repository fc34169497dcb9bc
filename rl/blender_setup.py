"""What the blender (π_ref of RL tuning) is given, decided in one place for training, tuning and serving.

A blender learns from feature columns; if serving fills a column that training left empty (or the
other way round) the scores silently drift. So the resources are described by a small dict that is
stored in the blender manifest at training time and compared at load time.
"""

from __future__ import annotations

import logging
from pathlib import Path

from core.artifacts import ArtifactError, shipped_dir
from core.config import Settings
from ranker.annotator_base import AnnotatorResources
from ranker.blender import Blender, BlenderMismatchError
from ranker.idf import IdfTable
from retriever.adapter import adapter_identity
from retriever.bank_index import BankIndex
from retriever.encoder import Encoder
from retriever.encoder_cache import CachingEncoder
from rl.policy_guard import check_servable, serving_policy
from rl.proxy import load_proxy_scorer

log = logging.getLogger(__name__)

BLENDER_DIR = "blender"
SERVING_CACHE = 4096  # recent contexts' and generated replies' vectors kept for the blender's annotators
SPECIFICITY_DIR = "reward-specificity"


def specificity_scorer(settings: Settings, encoder: Encoder, shipped: bool = False) -> tuple[object | None, str]:
    """The distilled specificity proxy as an annotator callable, and its identity ("none" if absent).

    ``shipped``: the blender being fed is the one shipped with repliq, so ``"auto"`` means the proxy shipped
    beside it (the pair was trained together), never a workspace proxy the shipped blender has not seen.
    """
    if shipped and settings.ranker.specificity == "auto":
        path = shipped_dir(SPECIFICITY_DIR) if shipped_dir(SPECIFICITY_DIR).exists() else None
    else:
        path = settings.artifact_path(settings.ranker.specificity, SPECIFICITY_DIR)
    if path is None:
        return None, "none"
    scorer, identity = load_proxy_scorer(path, encoder)
    return scorer, identity


def annotator_resources(settings: Settings, encoder: Encoder | CachingEncoder, idf: IdfTable | None = None,
                        shipped: bool = False) -> tuple[AnnotatorResources, dict[str, str]]:
    """The annotators' inputs and their description; the query adapter is part of it because it changes every
    retrieval cosine the blender learned from."""
    specificity, specificity_id = specificity_scorer(settings, encoder, shipped)
    resources = AnnotatorResources(idf=idf, specificity=specificity, context_turns=settings.retrieval.context_turns,
                                   encoder=encoder)
    descriptor = {"encoder": encoder.identity, "query_adapter": adapter_identity(encoder),
                  "specificity": specificity_id, "lm": "none", "context_turns": str(settings.retrieval.context_turns)}
    return resources, descriptor


def blender_path(settings: Settings) -> tuple[Path | None, bool]:
    """The blender to serve and whether it is the one shipped with repliq.

    ``"auto"`` prefers the workspace's own (`repliq train blender`); without one, the shipped default
    (`repliq train default` rebuilds it) serves, so a fresh install ranks with the learned chain.
    """
    path = settings.artifact_path(settings.ranker.blender, BLENDER_DIR)
    if path is None and settings.ranker.blender == "auto" and shipped_dir(BLENDER_DIR).exists():
        return shipped_dir(BLENDER_DIR), True
    return path, False


def load_blender(settings: Settings, encoder: Encoder | CachingEncoder,
                 bank_index: BankIndex | None = None) -> Blender | None:
    """The configured blender, refused unless its features and resources match what serving provides.

    With ``bank_index`` (serving) its annotators read bank vectors from the index instead of re-encoding
    each pool; the copy is made only when there is a blender to feed. The shipped default is skipped, with
    a warning, when it was trained for other inputs (another encoder, no adapter): it is a default, not a
    configuration the user asked for. ``[ranker] fallback = true`` turns any refusal into retrieval-only
    serving, said in the log and in ``Versions``. An RL policy that failed its guard is refused unless
    ``[ranker] force_unguarded = true`` (``rl.policy_guard``); a servable one ranks with its near-tie rule.
    """
    path, shipped = blender_path(settings)
    if path is None:
        return None
    try:
        return _checked_blender(settings, encoder, bank_index, path, shipped)
    except (BlenderMismatchError, ArtifactError, OSError, ValueError) as exc:
        if not (shipped or settings.ranker.fallback):
            raise
        log.warning("serving retrieval only, without the %sblender at %s: %s", "shipped " if shipped else "", path,
                    exc)
        return None


def _checked_blender(settings: Settings, encoder: Encoder | CachingEncoder, bank_index: BankIndex | None,
                     path: Path, shipped: bool) -> Blender:
    if bank_index is not None:
        encoder = CachingEncoder.seeded_from_index(encoder, bank_index, max_cached=SERVING_CACHE)
    resources, descriptor = annotator_resources(settings, encoder, shipped=shipped)
    blender = Blender.load(Path(path), resources)
    trained = {key: blender.manifest.resources.get(key, "none" if key == "query_adapter" else None)
               for key in descriptor}
    differs = {key: (trained[key], value) for key, value in descriptor.items() if trained[key] != value}
    if differs:
        detail = "; ".join(f"{key}: trained with {old!r}, serving has {new!r}" for key, (old, new) in differs.items())
        raise BlenderMismatchError(
            f"blender at {path} was trained for other inputs ({detail}); run `repliq train blender` "
            "(or set [ranker] blender = \"none\")"
        )
    check_servable(blender.manifest, path, settings.ranker.force_unguarded)
    return serving_policy(blender)
