"""A fresh workspace on the real default encoder serves the shipped chain: adapter-tuned retrieval and the
shipped blender, with explain contributions, and says so in Versions; a refused blender falls back only
when configured to."""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from core.artifacts import shipped_dir
from core.types import Context, Turn
from dialog.serving.assembly import build_pipeline
from dialog.serving.client import ChatClient
from dialog.serving.pipeline import PipelineRequest
from ranker.blender import BlenderMismatchError
from retriever.encoder import Encoder

from workspace import make_settings

pytestmark = pytest.mark.real


def test_a_fresh_workspace_serves_the_shipped_chain(real_server: tuple) -> None:
    port = real_server[1]
    client = ChatClient("127.0.0.1", port, timeout_s=60)
    try:
        reply = client.respond([("user", "I just got a puppy and have no idea how to train him.")], top_k=3,
                               explain=True)
    finally:
        client.close()
    versions = reply.versions
    assert versions.adapter.startswith("query-adapter@"), versions
    assert versions.ranker.endswith("(shipped default)"), versions
    assert reply.candidates and reply.candidates[0].contributions, "explain should carry blender contributions"


def test_the_adapter_moves_queries_and_leaves_passages(real_home: Path, models_dir: Path) -> None:
    settings = make_settings(real_home, models_dir)
    adapted = Encoder.from_config(settings)
    plain = Encoder.from_config(replace(settings, encoder=replace(settings.encoder, adapter="none")))
    texts = ["Посоветуй книгу на выходные", "What should I cook tonight?"]
    np.testing.assert_allclose(adapted.encode_passages(texts), plain.encode_passages(texts), atol=1e-5)
    cosines = np.sum(adapted.encode_queries(texts) * plain.encode_queries(texts), axis=1)
    # The learned map turns queries a long way (cosine ~0.4-0.5 to the plain query) but keeps them related.
    assert np.all(cosines < 0.99) and np.all(cosines > 0.2), cosines


def test_a_broken_blender_is_refused_unless_fallback_is_configured(real_home: Path, models_dir: Path,
                                                                  tmp_path: Path) -> None:
    broken = tmp_path / "blender"
    shutil.copytree(shipped_dir("blender"), broken)
    booster = broken / "booster.txt"
    booster.write_text(booster.read_text(encoding="utf-8")[:500], encoding="utf-8")
    settings = make_settings(real_home, models_dir)
    settings = replace(settings, ranker=replace(settings.ranker, blender=str(broken)))
    with pytest.raises((BlenderMismatchError, ValueError, OSError), match="repliq train blender"):
        build_pipeline(settings)
    fallback = replace(settings, ranker=replace(settings.ranker, fallback=True))
    assembled = build_pipeline(fallback)
    try:
        request = PipelineRequest(Context((Turn("user", "Привет! Как дела?"),)), top_k=2,
                                  deadline=time.monotonic() + 60)
        result = assembled.pipeline.respond(request)
        assert result.candidates
        assert "fallback" in assembled.pipeline.versions["ranker"]
    finally:
        assembled.close()
