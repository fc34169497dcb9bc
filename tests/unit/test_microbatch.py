"""MicroBatcher under real threads: each caller gets its own rows, calls are shared, errors reach everyone."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from retriever.microbatch import MicroBatcher, MicroBatcherClosed


def text_rows(texts: list[str]) -> np.ndarray:
    """A row that identifies its text: (text length, a per-text code)."""
    return np.array([[len(t), sum(map(ord, t))] for t in texts], dtype=np.float32).reshape(len(texts), 2)


class CountingFn:
    def __init__(self, delay_s: float = 0.0, fail_on: str | None = None) -> None:
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.batches: list[list[str]] = []
        self.lock = threading.Lock()

    def __call__(self, texts: list[str]) -> np.ndarray:
        with self.lock:
            self.batches.append(list(texts))
        time.sleep(self.delay_s)
        if self.fail_on is not None and self.fail_on in texts:
            raise RuntimeError(f"cannot encode {self.fail_on!r}")
        return text_rows(texts)


def run_threads(batcher: MicroBatcher, requests: list[list[str]]) -> list[object]:
    results: list[object] = [None] * len(requests)
    barrier = threading.Barrier(len(requests))

    def work(i: int) -> None:
        barrier.wait()
        try:
            results[i] = batcher.submit(requests[i])
        except Exception as exc:  # collected and checked by the test
            results[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return results


def test_sixteen_threads_get_their_own_rows_in_few_calls() -> None:
    fn = CountingFn(delay_s=0.01)
    requests = [[f"thread {i} text {j}" for j in range(1 + i % 3)] for i in range(16)]
    with MicroBatcher(fn, max_batch=64, max_wait_ms=50) as batcher:
        results = run_threads(batcher, requests)
    for request, result in zip(requests, results, strict=True):
        assert isinstance(result, np.ndarray)
        assert np.array_equal(result, text_rows(request))
    assert len(fn.batches) < 16
    assert sorted(t for batch in fn.batches for t in batch) == sorted(t for r in requests for t in r)
    assert batcher.calls == len(fn.batches)


def test_batches_never_exceed_max_batch_unless_one_request_is_bigger() -> None:
    fn = CountingFn(delay_s=0.005)
    requests = [[f"r{i}-{j}" for j in range(3)] for i in range(12)] + [[f"big-{j}" for j in range(9)]]
    with MicroBatcher(fn, max_batch=7, max_wait_ms=20) as batcher:
        results = run_threads(batcher, requests)
    for request, result in zip(requests, results, strict=True):
        assert np.array_equal(result, text_rows(request))
    assert all(len(batch) <= 7 or (len(batch) == 9 and batch[0].startswith("big")) for batch in fn.batches)


def test_exception_reaches_every_caller_of_the_batch_and_the_worker_survives() -> None:
    fn = CountingFn(delay_s=0.01, fail_on="poison")
    requests = [["poison"]] + [[f"ok {i}"] for i in range(5)]
    with MicroBatcher(fn, max_batch=64, max_wait_ms=100) as batcher:
        results = run_threads(batcher, requests)
        failed_batch = next(batch for batch in fn.batches if "poison" in batch)
        for request, result in zip(requests, results, strict=True):
            if request[0] in failed_batch:
                assert isinstance(result, RuntimeError) and "poison" in str(result)
            else:
                assert np.array_equal(result, text_rows(request))
        assert len(failed_batch) > 1
        assert np.array_equal(batcher.submit(["after"]), text_rows(["after"]))


def test_wrong_row_count_is_an_error_not_a_misaligned_answer() -> None:
    with MicroBatcher(lambda texts: np.zeros((len(texts) + 1, 2)), max_wait_ms=0) as batcher, \
            pytest.raises(RuntimeError, match="rows"):
        batcher.submit(["a", "b"])


def test_close_drains_pending_requests_then_refuses_new_ones() -> None:
    fn = CountingFn(delay_s=0.02)
    batcher = MicroBatcher(fn, max_batch=2, max_wait_ms=1000)
    results: list[object] = []
    threads = [threading.Thread(target=lambda i=i: results.append(batcher.submit([f"t{i}"]))) for i in range(5)]
    for thread in threads:
        thread.start()
    time.sleep(0.05)
    batcher.close()
    for thread in threads:
        thread.join(5)
    assert len(results) == 5
    with pytest.raises(MicroBatcherClosed):
        batcher.submit(["late"])


def test_empty_request_and_single_string_guard() -> None:
    with MicroBatcher(text_rows, max_wait_ms=0) as batcher:
        assert batcher.submit([]).shape == (0, 2)
        with pytest.raises(TypeError):
            batcher.submit("not a list")  # type: ignore[arg-type]


def test_one_encoder_call_per_request_covers_retrieval_and_turn_feature_windows() -> None:
    """The retrieval window and the blender's last-turn and last-exchange windows of one request reach the
    model in one call; the bank candidates' vectors come from the seeded (index) side, never the model."""
    from core.types import Candidate, Context, Turn
    from dialog.serving.encoding import RequestEncoder
    from dialog.serving.pipeline import Pipeline, PipelineRequest
    from ranker.annotator_base import AnnotatorResources
    from ranker.features.turn import TurnAnnotator
    from retriever.encoder_cache import CachingEncoder
    from retriever.microbatch import BatchedQueries

    model_calls: list[list[str]] = []
    passages: list[list[str]] = []

    class Model:
        identity, manifest, dim = "m@0", None, 2

        def encode_queries(self, texts: list[str]) -> np.ndarray:
            model_calls.append(list(texts))
            return text_rows(list(texts)) / 1000

        def encode_passages(self, texts: list[str]) -> np.ndarray:
            passages.append(list(texts))
            return text_rows(list(texts)) / 1000

    bank_texts = [f"bank reply {i}" for i in range(4)]

    class Source:
        name = "bank"

        def candidates(self, context: Context, language: str, k: int, deadline: float) -> list[Candidate]:
            encoder.encode_queries([context.as_query_text(3)])
            return [Candidate(text=t, source="bank", language=language, phrase_id=i + 1)
                    for i, t in enumerate(bank_texts)]

    class TurnReranker:
        def __init__(self) -> None:
            self.annotator = TurnAnnotator(AnnotatorResources(encoder=encoder))
            self.features: list[np.ndarray] = []

        def rerank(self, context: Context, pool: list[Candidate], explain: bool = False) -> list[Candidate]:
            self.features.append(self.annotator.annotate_pool(context, pool))
            return pool

    with MicroBatcher(Model().encode_queries, max_batch=64, max_wait_ms=20) as batcher:
        cache = CachingEncoder(BatchedQueries(Model(), batcher), max_cached=16)
        cache.seed_passages(bank_texts, text_rows(bank_texts))
        encoder = RequestEncoder(cache, [3, *TurnAnnotator.windows])
        reranker = TurnReranker()
        pipeline = Pipeline([Source()], pool_k=10, reranker=reranker)
        pipeline.query_encoder = encoder
        dialogue = Context((Turn("user", "hi there"), Turn("bot", "hello"), Turn("user", "how are you")))
        result = pipeline.respond(PipelineRequest(context=dialogue, top_k=3, deadline=time.monotonic() + 10))
        assert len(result.candidates) == 3
        assert len(model_calls) == 1
        assert sorted(model_calls[0]) == sorted(["hi there\nhello\nhow are you", "how are you", "hello\nhow are you"])
        assert passages == [] and encoder.unplanned == 0
        assert not np.isnan(reranker.features[0]).any()
        pipeline.respond(PipelineRequest(context=dialogue, top_k=3, deadline=time.monotonic() + 10))
        assert len(model_calls) == 1, "the repeated opener must come from the query cache"
        assert cache.query_hits == 3
