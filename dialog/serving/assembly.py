"""Builds the serving pipeline from settings: bank, encoder, index, sources and reranker.

Everything that can be refused (a stale index, a mismatched encoder) is refused here, at start-up,
so a running server never serves from inconsistent artifacts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace

from core.bank.store import PhraseBank
from core.config import Settings
from dialog.generation.source import build_generator
from dialog.serving import metrics
from dialog.serving.encoding import RequestEncoder
from dialog.serving.logs import log_event
from dialog.serving.pipeline import Pipeline
from ranker.blender import Blender
from ranker.features.generation import GENERATION_ANNOTATORS
from retriever.adapter import adapter_identity
from retriever.bank_index import load_index
from retriever.bank_retriever import BankRetriever
from retriever.encoder import Encoder
from retriever.encoder_cache import CachingEncoder
from retriever.index import set_search_threads
from retriever.microbatch import BatchedQueries, MicroBatcher
from rl.blender_setup import SERVING_CACHE, blender_path, load_blender

log = logging.getLogger("repliq.server")


@dataclass
class Assembled:
    pipeline: Pipeline
    encoder: Encoder
    bank: PhraseBank
    close: Callable[[], None]
    # The request-scoped query encoder (one encoder call per request) and the batcher behind it.
    query_encoder: RequestEncoder | None = None
    batcher: MicroBatcher | None = None


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, e.g. a container's cpuset), not the machine's."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def encoder_threads(settings: Settings) -> int:
    """Intra-op threads of the serving encoder.

    Only one thread ever runs the model (the micro-batcher's, or one request at a time under the
    encoder's lock), so workers x intra-op threads is just this number; request threads, which hold
    the GIL for features and search, get the remaining core. An explicit setting wins.
    """
    if settings.server.encoder_threads > 0:
        return settings.server.encoder_threads
    if settings.encoder.num_threads > 0:
        return settings.encoder.num_threads
    return max(1, usable_cores() - 1)


def query_windows(retriever: BankRetriever, blender: Blender | None) -> list[int]:
    """Every dialogue window a request encodes as a query: the retriever's, and any annotator's that
    declares ``windows`` (the turn features' last turn and last exchange)."""
    windows = [retriever.context_turns]
    for annotator in blender.annotators if blender is not None else []:
        windows.extend(getattr(annotator, "windows", ()))
    return windows


def build_pipeline(settings: Settings) -> Assembled:
    if not settings.bank_path.exists():
        raise FileNotFoundError(
            f"no phrase bank at {settings.bank_path}; run `repliq bank init --default` first"
        )
    bank = PhraseBank(settings.bank_path)
    set_search_threads(settings.server.search_threads)
    threads = encoder_threads(settings)
    settings = replace(settings, encoder=replace(settings.encoder, num_threads=threads))
    encoder = Encoder.from_config(settings)
    bank_index = load_index(settings, encoder, bank)
    batcher = None
    if settings.server.microbatch:
        batcher = MicroBatcher(
            encoder.encode_queries,
            max_batch=settings.server.microbatch_max_size,
            max_wait_ms=settings.server.microbatch_wait_ms,
            on_batch=metrics.observe_batch,
        )
    front = BatchedQueries(encoder, batcher)
    # Bank vectors come from the index (copied only when a blender will read them).
    if blender_path(settings)[0] is not None:
        cache = CachingEncoder.seeded_from_index(front, bank_index, max_cached=SERVING_CACHE)
    else:
        cache = CachingEncoder(front, max_cached=SERVING_CACHE)
    query_encoder = RequestEncoder(cache, [settings.retrieval.context_turns])
    retriever = BankRetriever(query_encoder, bank_index, bank, context_turns=settings.retrieval.context_turns)
    blender = load_blender(settings, query_encoder)  # type: ignore[arg-type]
    query_encoder.add_windows(query_windows(retriever, blender))
    if blender is not None:
        metrics.timed_method(blender, "features", "features")
        metrics.timed_method(blender, "raw_scores", "blender")
    metrics.bind_cache(cache, lambda: query_encoder.unplanned)
    log_event(log, "encoder plan", backend=getattr(encoder, "backend", "torch"), threads=threads,
              cores=usable_cores(), microbatch=batcher is not None, windows=list(query_encoder.windows))
    versions = {
        "encoder": encoder.identity,
        "bank": str(bank_index.manifest.bank_revision),
        "index": bank_index.manifest.checksum[:12],
        "ranker": blender.version if blender is not None else "bank-first",
        "adapter": adapter_identity(encoder),
    }
    configured, shipped = blender_path(settings)
    if blender is None and configured is not None and not shipped:
        versions["ranker"] = "bank-first (fallback: the configured blender was refused, see the log)"
    elif blender is not None and shipped:
        versions["ranker"] += " (shipped default)"
    # The unconditional pass behind gen_pmi costs the request's budget: only for a blender that reads it.
    reads_pmi = blender is not None and any(a.name in GENERATION_ANNOTATORS for a in blender.annotators)
    generation = replace(settings.generation, pmi=settings.generation.pmi or reads_pmi)
    generator = build_generator(replace(settings, generation=generation))
    if generator is not None:
        versions["generator"] = generator.version
    pipeline = Pipeline(
        [retriever], pool_k=settings.retrieval.pool_k, reranker=blender, versions=versions,
        optional_sources=[generator] if generator is not None else [],
        optional_enabled=settings.generation.mode == "always",
    )
    pipeline.query_encoder = query_encoder

    def close() -> None:
        if batcher is not None:
            batcher.close()
        bank.close()

    return Assembled(pipeline=pipeline, encoder=encoder, bank=bank, close=close, query_encoder=query_encoder,
                     batcher=batcher)
