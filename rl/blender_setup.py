"""What the blender (π_ref of RL tuning) is given, decided in one place for training, tuning and serving.

A blender learns from feature columns; if serving fills a column that training left empty (or the
other way round) the scores silently drift. So the resources are described by a small dict that is
stored in the blender manifest at training time and compared at load time.
"""

from __future__ import annotations

import logging
from pathlib import Path

from core.config import Settings
from ranker.annotator_base import AnnotatorResources
from ranker.blender import Blender, BlenderMismatchError
from ranker.idf import IdfTable
from retriever.bank_index import BankIndex
from retriever.encoder import Encoder
from retriever.encoder_cache import CachingEncoder
from rl.proxy import load_proxy_scorer

log = logging.getLogger(__name__)

BLENDER_DIR = "blender"
SERVING_CACHE = 4096  # recent contexts' and generated replies' vectors kept for the blender's annotators
SPECIFICITY_DIR = "reward-specificity"


def specificity_scorer(settings: Settings, encoder: Encoder) -> tuple[object | None, str]:
    """The distilled specificity proxy as an annotator callable, and its identity ("none" if absent)."""
    path = settings.artifact_path(settings.ranker.specificity, SPECIFICITY_DIR)
    if path is None:
        return None, "none"
    scorer, identity = load_proxy_scorer(path, encoder)
    return scorer, identity


def annotator_resources(settings: Settings, encoder: Encoder | CachingEncoder, idf: IdfTable | None = None
                        ) -> tuple[AnnotatorResources, dict[str, str]]:
    specificity, specificity_id = specificity_scorer(settings, encoder)
    resources = AnnotatorResources(idf=idf, specificity=specificity, context_turns=settings.retrieval.context_turns,
                                   encoder=encoder)
    descriptor = {"encoder": encoder.identity, "specificity": specificity_id, "lm": "none",
                  "context_turns": str(settings.retrieval.context_turns)}
    return resources, descriptor


def load_blender(settings: Settings, encoder: Encoder | CachingEncoder,
                 bank_index: BankIndex | None = None) -> Blender | None:
    """The configured blender, refused unless its features and resources match what serving provides.

    With ``bank_index`` (serving) its annotators read bank vectors from the index instead of re-encoding
    each pool; the copy is made only when there is a blender to feed.
    """
    path = settings.artifact_path(settings.ranker.blender, BLENDER_DIR)
    if path is None:
        return None
    if bank_index is not None:
        encoder = CachingEncoder.seeded_from_index(encoder, bank_index, max_cached=SERVING_CACHE)
    resources, descriptor = annotator_resources(settings, encoder)
    blender = Blender.load(Path(path), resources)
    trained = {key: blender.manifest.resources.get(key) for key in descriptor}
    differs = {key: (trained[key], value) for key, value in descriptor.items() if trained[key] != value}
    if differs:
        detail = "; ".join(f"{key}: trained with {old!r}, serving has {new!r}" for key, (old, new) in differs.items())
        raise BlenderMismatchError(
            f"blender at {path} was trained for other inputs ({detail}); run `repliq train blender` "
            "(or set [ranker] blender = \"none\")"
        )
    return blender
