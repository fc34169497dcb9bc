"""What the blender's annotators are given, decided in one place for training and for serving.

A blender learns from feature columns; if serving fills a column that training left empty (or the
other way round) the scores silently drift. So the resources are described by a small dict that is
stored in the blender manifest at training time and compared at load time.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from core.bank.store import PhraseBank
from core.config import Settings
from ranker.annotator_base import AnnotatorResources
from ranker.blender import Blender, BlenderMismatchError
from ranker.blender_scorer import CachingEncoder
from ranker.idf import IdfTable
from retriever.bank_index import BankIndex, BankIndexError, load_index
from retriever.encoder import Encoder

log = logging.getLogger(__name__)

BLENDER_DIR = "blender"
SERVING_CACHE = 4096  # recent contexts' and generated replies' vectors kept for the blender's annotators
SPECIFICITY_DIR = "reward-specificity"


def specificity_scorer(settings: Settings, encoder: Encoder) -> tuple[object | None, str]:
    """The distilled specificity proxy as an annotator callable, and its identity ("none" if absent)."""
    path = settings.artifact_path(settings.ranker.specificity, SPECIFICITY_DIR)
    if path is None:
        return None, "none"
    from rl.proxy import load_proxy_scorer

    scorer, identity = load_proxy_scorer(path, encoder)
    return scorer, identity


class ReusingEncoder(CachingEncoder):
    """A :class:`CachingEncoder` whose passage cache starts with the index's bank vectors.

    Bank phrases already have vectors in the index, and each context's query is needed twice (to
    retrieve and to score the gold and random phrases); encoding dominates the build, so both are
    looked up instead of recomputed. RL tuning and proxy training reuse it too: their reward models
    read every candidate text several times (standardization, train and dev rewards). Serving hands one
    to the blender's annotators (with ``max_cached``), so a request encodes its queries, not its pool.
    """

    def __init__(self, encoder: Encoder, bank_index: BankIndex, max_cached: int | None = None) -> None:
        super().__init__(encoder, max_cached=max_cached)
        for language in bank_index.languages:
            shard = bank_index.shard(language)
            ids = shard.ids.tolist()
            known = [(info.text, vector) for pid, vector in zip(ids, shard.vectors(ids), strict=True)
                     if (info := bank_index.phrase(pid)) is not None]
            if known:
                self.seed_passages([t for t, _ in known], np.stack([v for _, v in known]))


def index_backed_encoder(settings: Settings, encoder: Encoder, bank: PhraseBank) -> CachingEncoder:
    """The workspace encoder with the live index's bank vectors, or a plain cache without a current index
    (the caller's work is then only slower, never wrong)."""
    try:
        return ReusingEncoder(encoder, load_index(settings, encoder, bank))
    except BankIndexError as exc:
        log.warning("encoding bank phrases afresh: %s", exc)
        return CachingEncoder(encoder)


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
        encoder = ReusingEncoder(encoder, bank_index, max_cached=SERVING_CACHE)
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
