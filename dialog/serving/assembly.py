"""Builds the serving pipeline from settings: bank, encoder, index, sources and reranker.

Everything that can be refused (a stale index, a mismatched encoder) is refused here, at start-up,
so a running server never serves from inconsistent artifacts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from core.bank.store import PhraseBank
from core.config import Settings
from dialog.generation.source import build_generator
from dialog.serving.pipeline import Pipeline
from retriever.bank_index import load_index
from retriever.bank_retriever import BankRetriever
from retriever.encoder import Encoder
from retriever.microbatch import MicroBatcher
from rl.blender_setup import load_blender


@dataclass
class Assembled:
    pipeline: Pipeline
    encoder: Encoder
    bank: PhraseBank
    close: Callable[[], None]


def build_pipeline(settings: Settings) -> Assembled:
    if not settings.bank_path.exists():
        raise FileNotFoundError(
            f"no phrase bank at {settings.bank_path}; run `repliq bank init --default` first"
        )
    bank = PhraseBank(settings.bank_path)
    encoder = Encoder.from_config(settings)
    bank_index = load_index(settings, encoder, bank)
    batcher = None
    if settings.server.microbatch:
        batcher = MicroBatcher(
            encoder.encode_queries,
            max_batch=settings.server.microbatch_max_size,
            max_wait_ms=settings.server.microbatch_wait_ms,
        )
    retriever = BankRetriever(
        encoder, bank_index, bank, context_turns=settings.retrieval.context_turns, microbatcher=batcher
    )
    blender = load_blender(settings, encoder, bank_index)
    versions = {
        "encoder": encoder.identity,
        "bank": str(bank_index.manifest.bank_revision),
        "index": bank_index.manifest.checksum[:12],
        "ranker": blender.version if blender is not None else "bank-first",
    }
    generator = build_generator(settings)
    if generator is not None:
        versions["generator"] = generator.version
    pipeline = Pipeline(
        [retriever], pool_k=settings.retrieval.pool_k, reranker=blender, versions=versions,
        optional_sources=[generator] if generator is not None else [],
        optional_enabled=settings.generation.mode == "always",
    )

    def close() -> None:
        if batcher is not None:
            batcher.close()
        bank.close()

    return Assembled(pipeline=pipeline, encoder=encoder, bank=bank, close=close)
