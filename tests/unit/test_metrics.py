"""Prometheus /metrics of a real (tiny-model) pipeline over real gRPC on loopback, scraped over HTTP."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dialog.serving.client import ChatClient

from tiny_models import build_tiny_encoder
from workspace import make_settings


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    from core.bank.default import starter_rows
    from core.bank.store import PhraseBank
    from dialog.serving.assembly import build_pipeline
    from dialog.serving.metrics import start_metrics
    from dialog.serving.server import start_server
    from retriever.bank_index import build_index
    from retriever.encoder import Encoder

    root = tmp_path_factory.mktemp("metrics")
    encoder_dir = build_tiny_encoder(root / "tiny-encoder")
    settings = make_settings(root / "home", root / "models")
    settings = replace(settings, encoder=replace(settings.encoder, name=str(encoder_dir), backend="torch"),
                       ranker=replace(settings.ranker, blender="none", specificity="none"))
    settings.home.mkdir(parents=True)
    with PhraseBank(settings.bank_path) as bank:
        rows = starter_rows()
        report = bank.import_phrases([r for r in rows if r.language == "en"][:40]
                                     + [r for r in rows if r.language == "ru"][:40], who="tests")
        assert report.ok, report.errors
        build_index(bank, Encoder.from_config(settings), settings)
    assembled = build_pipeline(settings)
    running = start_server(assembled.pipeline, settings.server, settings.retrieval.top_k)
    exporter = start_metrics("127.0.0.1", 0)
    yield running.port, exporter.port
    exporter.close()
    running.stop(grace=1.0)
    assembled.close()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_requests_stages_batches_and_cache_hits(served: tuple[int, int]) -> None:
    grpc_port, metrics_port = served
    before = scrape(metrics_port)
    chat = ChatClient("127.0.0.1", grpc_port, timeout_s=10.0)
    try:
        for _ in range(3):  # the same opener: encoded once, then served from the query cache
            assert chat.respond([("user", "Hello! How are you doing today?")]).candidates
        assert chat.respond([("user", "Привет, как дела?")]).candidates
        with pytest.raises(grpc.RpcError) as info:
            chat.respond([("user", "   ")])
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        chat.close()
    after = scrape(metrics_port)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("repliq_request_seconds_count", rpc="Respond", code="OK") == 4
    assert grew("repliq_request_seconds_count", rpc="Respond", code="INVALID_ARGUMENT") == 1
    assert grew("repliq_request_seconds_bucket", rpc="Respond", code="OK", le="+Inf") == 4
    assert grew("repliq_stage_seconds_count", stage="encode") == 4
    assert grew("repliq_stage_seconds_count", stage="search") == 4
    assert grew("repliq_stage_seconds_sum", stage="search") > 0
    # Two distinct openers reached the model; the repeats were cache hits.
    assert grew("repliq_microbatch_texts_sum") == 2
    assert grew("repliq_query_cache_hits_total") == 2
    assert grew("repliq_query_cache_lookups_total") == 4
    assert 0 < value(after, "repliq_query_cache_hit_ratio") <= 1
    assert ("repliq_queue_depth", ()) in after and value(after, "repliq_queue_depth") == 0
    assert value(after, "repliq_unplanned_query_encodings_total") == 0


def test_metrics_port_in_use_is_a_clear_error(served: tuple[int, int]) -> None:
    from dialog.serving.metrics import start_metrics

    with pytest.raises(OSError, match="--metrics-port"):
        start_metrics("127.0.0.1", served[1])


def test_serve_accepts_metrics_port_flag(tmp_path: Path) -> None:
    from dialog.cli.main import build_parser
    from dialog.cli.serve import _server_settings

    args = build_parser().parse_args(["serve", "--metrics-port", "9464", "--port", "0"])
    settings = _server_settings(args, make_settings(tmp_path, tmp_path))
    assert settings.server.metrics_port == 9464
