"""The trained defaults committed under core/data/shipped agree with the code that will load them.

A fresh install serves these files; if a feature list, an annotator version, the artifact format or the
size budget drifted from the code, every new user would get a refusal (or, worse, silently wrong
features). `repliq train default --publish` rebuilds them.
"""

from __future__ import annotations

import pytest

from core.artifacts import load_manifest, shipped_dir
from core.job_configs import TrainDefaultConfig
from ranker.annotator_base import AnnotatorResources
from ranker.annotators import build_annotators, describe, feature_names
from ranker.blender import read_blender_manifest
from ranker.idf import IdfTable
from retriever.adapter import MANIFEST_NAME, load_adapter

REBUILD = "rebuild with `repliq train default --data ../shared/data --publish`"


def test_the_shipped_set_is_present_and_within_budget() -> None:
    root = shipped_dir("")
    for name in ("adapter", "blender"):
        assert (root / name).is_dir(), f"core/data/shipped/{name} is missing; {REBUILD}"
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert 0 < total <= TrainDefaultConfig().max_shipped_bytes, f"shipped set is {total} bytes; {REBUILD}"


def test_every_shipped_manifest_loads_under_the_artifact_contract() -> None:
    adapter, manifest = load_adapter(shipped_dir("adapter"))  # checks kind, format and the weights hash
    assert manifest.lineage["encoder"].startswith("e5-small@"), manifest.lineage
    assert load_manifest(shipped_dir("adapter") / MANIFEST_NAME, "query-adapter").identity == adapter.digest
    blender = read_blender_manifest(shipped_dir("blender"))
    assert blender.resources["encoder"] == manifest.lineage["encoder"], "blender and adapter disagree on the encoder"
    assert blender.resources["query_adapter"] == adapter.identity, REBUILD


def test_the_shipped_blender_features_are_what_the_code_computes() -> None:
    manifest = read_blender_manifest(shipped_dir("blender"))
    idf = IdfTable.load(shipped_dir("blender") / "idf.json")
    wants_proxy = manifest.resources.get("specificity", "none") != "none"
    resources = AnnotatorResources(idf=idf, specificity=(lambda _c, texts: [0.0] * len(texts)) if wants_proxy else None,
                                   context_turns=int(manifest.resources["context_turns"]), encoder=None)
    annotators = build_annotators(resources)
    assert manifest.annotators == describe(annotators), f"annotators changed since the shipped blender; {REBUILD}"
    assert manifest.feature_names == feature_names(annotators), REBUILD


@pytest.mark.parametrize("name", ["reward-specificity", "reward-relevance", "blender-rl"])
def test_optional_shipped_artifacts_load_when_present(name: str) -> None:
    directory = shipped_dir(name)
    if not directory.exists():
        pytest.skip(f"{name} is not shipped (trained by `repliq train default --rewards --rl`)")
    kinds = {"reward-specificity": "specificity-proxy", "reward-relevance": "relevance", "blender-rl": "blender-rl"}
    load_manifest(directory, kinds[name])
