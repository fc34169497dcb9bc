"""Whether an RL-tuned policy (``blender-rl``) may be served, and the near-tie rule serving applies to it.

Two things an RL run must not hide:

* **The guard.** A policy whose dev R@1 fell more than the allowed drop below π_ref (overall or in any
  language) is written for inspection only: its manifest records ``training.guard`` with ``servable``
  false, the guard that failed and the command that fixes it, and :func:`check_servable` refuses to load
  it unless ``[ranker] force_unguarded = true`` (``repliq serve --force-unguarded-policy``). A
  ``blender-rl`` written before guards were recorded is refused the same way.
* **Near-ties.** Serving answers with the policy's argmax. At a small KL the tuned scores differ from
  π_ref's by little, so in pools full of near-ties the top answer flips on noise. The tie-break gives
  π_ref's own top candidate a bonus of ``tolerance`` logits: another candidate replaces it only by beating
  it by more than that. The RL judge scores exactly this (:func:`tie_broken_scores`), and reports how often
  the top answer flips against π_ref with and without it (:func:`flip_rate`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ranker.blender import Blender
from rl.policy import group_argmax

POLICY_KIND = "blender-rl"
FIX_COMMAND = ("rerun `repliq rl tune` with larger β (e.g. `--betas 3 10`) until the guard passes, or serve the "
               "supervised blender (`[ranker] blender = \"auto\"`)")


class UnguardedPolicyError(ValueError):
    """A ``blender-rl`` that failed (or never recorded) its guard, refused for serving."""


def r_at_1_guard(reference: Mapping[str, float], final: Mapping[str, float], max_drop: float,
                 tolerance: float = 1e-9) -> dict[str, Any]:
    """The Goodhart guard of ``repliq rl tune``: dev R@1 within ``max_drop`` of π_ref, overall and per language."""
    failed = []
    for key in sorted(k for k in reference if k.startswith("r_at_1")):
        drop = float(reference[key]) - float(final[key])
        if drop > max_drop + tolerance:
            failed.append({"metric": key, "drop": drop, "limit": max_drop})
    detail = "; ".join(f"{f['metric']} fell {100 * f['drop']:.1f} points (limit {100 * max_drop:.1f})" for f in failed)
    return {"name": "r_at_1_within_max_drop", "passed": not failed, "servable": not failed, "failed": failed,
            "detail": detail or "dev R@1 within the allowed drop overall and in every language",
            "fix": None if not failed else FIX_COMMAND}


def check_servable(manifest: Any, path: Any, force: bool) -> None:
    """Refuse a ``blender-rl`` whose guard failed or is unknown, unless forced; other blenders always pass."""
    if getattr(manifest, "kind", None) != POLICY_KIND or force:
        return
    guard = (manifest.training or {}).get("guard")
    if guard is None:
        raise UnguardedPolicyError(
            f"the RL policy at {path} records no guard result (written before guards were kept), so it may have "
            f"lost relevance; {FIX_COMMAND}. To serve it anyway set [ranker] force_unguarded = true or run "
            "`repliq serve --force-unguarded-policy`")
    if not guard.get("servable", False):
        raise UnguardedPolicyError(
            f"the RL policy at {path} failed its guard {guard.get('name', '?')!r}: {guard.get('detail', '')}; it was "
            f"written for inspection only. Fix: {guard.get('fix') or FIX_COMMAND}. To serve it anyway set "
            "[ranker] force_unguarded = true or run `repliq serve --force-unguarded-policy`")


# ---- near-ties -----------------------------------------------------------------------------------------


def tie_broken_scores(tuned: np.ndarray, reference: np.ndarray, group_sizes: Sequence[int] | np.ndarray,
                      tolerance: float) -> np.ndarray:
    """``tuned`` plus ``tolerance`` on π_ref's top candidate of each pool: a near-tie keeps π_ref's answer."""
    scores = np.array(tuned, dtype=np.float64, copy=True)
    if tolerance > 0 and len(scores):
        scores[group_argmax(np.asarray(reference, np.float64), np.asarray(group_sizes))] += tolerance
    return scores


def flip_rate(scores: np.ndarray, reference: np.ndarray, group_sizes: Sequence[int] | np.ndarray) -> float:
    """Share of pools whose top candidate differs from π_ref's."""
    sizes = np.asarray(group_sizes)
    if not len(sizes):
        return 0.0
    return float(np.mean(group_argmax(scores, sizes) != group_argmax(reference, sizes)))


class TieBrokenPolicy(Blender):
    """A loaded ``blender-rl`` whose pools are ranked as the RL judge scored them: the booster's first
    ``reference_trees`` trees are π_ref (tuning continues from it), so π_ref's scores come from the same booster."""

    def __init__(self, blender: Blender, reference_trees: int, tolerance: float) -> None:
        super().__init__(blender.booster, blender.manifest, blender.annotators, blender.idf)
        if not 0 < reference_trees <= blender.booster.num_trees():
            raise ValueError(f"reference_trees={reference_trees} but the booster has {blender.booster.num_trees()} "
                             "trees; rerun `repliq rl tune`")
        self.reference_trees, self.tolerance = reference_trees, tolerance

    def reference_scores(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.predict(X, raw_score=True, num_iteration=self.reference_trees,
                                               num_threads=1), dtype=np.float64)

    def pool_scores(self, X: np.ndarray) -> np.ndarray:
        """One pool's scores as serving ranks them."""
        return tie_broken_scores(self.raw_scores(X), self.reference_scores(X), [len(X)], self.tolerance)


def serving_policy(blender: Blender) -> Blender:
    """The tie-broken view of a ``blender-rl`` that recorded its tie-break; any other blender unchanged."""
    rule = (blender.manifest.training or {}).get("tie_break") if blender.manifest.kind == POLICY_KIND else None
    if not rule:
        return blender
    return TieBrokenPolicy(blender, int(rule["reference_trees"]), float(rule["tolerance"]))
