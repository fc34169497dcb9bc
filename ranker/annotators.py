"""The annotator registry: which feature families exist and how a feature matrix is assembled.

The base class lives in ``ranker.annotator_base`` so feature modules and this registry do not
import each other.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

import ranker.features  # noqa: F401  (registers the built-in annotators)
from core.types import Candidate, Context
from ranker.annotator_base import _REGISTRY, Annotator, AnnotatorResources

# Order matters: it is the column order of the feature matrix.
DEFAULT_ANNOTATORS: tuple[str, ...] = (
    "retrieval", "turn", "lexical", "lm", "surface", "nidf", "language", "generic", "blocklist", "specificity",
)


def registry() -> dict[str, type[Annotator]]:
    return dict(_REGISTRY)


def build_annotators(resources: AnnotatorResources | None = None,
                     names: Sequence[str] = DEFAULT_ANNOTATORS) -> list[Annotator]:
    known = registry()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise KeyError(f"unknown annotators {unknown}; known: {', '.join(sorted(known))}")
    resources = resources or AnnotatorResources()
    return [known[n](resources) for n in names]


def feature_names(annotators: Sequence[Annotator]) -> list[str]:
    names = [f for a in annotators for f in a.feature_names]
    duplicates = sorted({f for f in names if names.count(f) > 1})
    if duplicates:
        raise ValueError(f"feature names used by more than one annotator: {duplicates}")
    return names


def describe(annotators: Sequence[Annotator]) -> list[dict[str, object]]:
    return [{"name": a.name, "version": a.version, "features": list(a.feature_names)} for a in annotators]


def annotate_all(annotators: Sequence[Annotator], contexts: Sequence[Context],
                 candidates: Sequence[Sequence[Candidate]]) -> list[np.ndarray]:
    """Feature matrices per context, columns in ``feature_names(annotators)`` order."""
    per_annotator = [a.annotate(contexts, candidates) for a in annotators]
    out = []
    for i, pool in enumerate(candidates):
        blocks = [blocks_of[i] for blocks_of in per_annotator]
        width = sum(len(a.feature_names) for a in annotators)
        matrix = np.hstack(blocks).astype(np.float32, copy=False) if blocks else np.empty((len(pool), 0))
        if matrix.shape != (len(pool), width):
            raise RuntimeError(f"annotators returned shape {matrix.shape}, expected {(len(pool), width)}")
        out.append(matrix)
    return out


