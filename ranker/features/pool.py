"""Pool-relative statistics: a candidate's value against the rest of its pool.

Trees see one row at a time and cannot compare a candidate with its pool-mates; these columns do it for
them. They are defined once here so every annotator that derives one, and anything that recomputes
them for a smaller pool (``ranker.dataset.restrict_origins``), computes exactly the same thing.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def pool_ranks(values: np.ndarray) -> np.ndarray:
    """1 for the best value in the pool, ties sharing the better rank; NaN stays NaN."""
    values = np.asarray(values, dtype=np.float64)
    known = ~np.isnan(values)
    ranks = np.full(len(values), np.nan)
    present = values[known]
    ranks[known] = 1.0 + np.sum(present[None, :] > present[:, None], axis=1)
    return ranks


def pool_gap(values: np.ndarray) -> np.ndarray:
    """Distance below the pool's best value (0 for the best); all-NaN pools stay NaN."""
    values = np.asarray(values, dtype=np.float64)
    return values - np.nanmax(values) if len(values) and not np.all(np.isnan(values)) else values.copy()


def pool_z(values: np.ndarray) -> np.ndarray:
    """Standardized within the pool; NaN when the pool has no spread."""
    values = np.asarray(values, dtype=np.float64)
    if not len(values) or np.all(np.isnan(values)) or not np.nanstd(values) > 0:
        return np.full(len(values), np.nan)
    return (values - np.nanmean(values)) / np.nanstd(values)


STATISTICS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"rank": pool_ranks, "gap": pool_gap, "z": pool_z}
