"""`repliq train adapter`: a response-tuned query adapter on the frozen default encoder.

Straight-line: sample (context, reply) pairs from the train hash splits (chitchat, Russian dialogues,
Topical-Chat train), encode them once into the on-disk embedding store (resumable), hold out a slice of
train conversations for choosing the epoch (dev and test splits stay untouched for `repliq eval
ranking`), train the adapter, and record how held-out R@1 grows with the number of pairs used.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict
from typing import Any

import numpy as np
from tqdm import tqdm

from core.atomic import atomic_write_bytes, atomic_write_json, jsonable, sha256_json
from core.config import Settings
from core.figures import png_bytes
from core.job_configs import AdapterJobConfig
from core.models.registry import resolve
from retriever.adapter import save_adapter
from retriever.adapter_train import recall_at_1, train_adapter
from retriever.encoder import Encoder
from retriever.pairs import PairSource, TrainPair, bilingual_pairs, topicalchat_source

log = logging.getLogger("repliq.train")
ADAPTER_DIR = "adapter"


def _held_out(pair: TrainPair, fraction: float) -> bool:
    digest = hashlib.sha1(("adapter-holdout:" + pair.conversation_id).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction


def _pairs(config: AdapterJobConfig) -> list[TrainPair]:
    extra: list[PairSource] = []
    if config.topicalchat is not None:
        extra.append(topicalchat_source(config.topicalchat, {"train": config.topicalchat_pairs}))
    return bilingual_pairs({"train": config.pairs_per_language}, config.russian, extra=extra)["train"]


def _per_language_r1(adapter_apply: Any, queries: np.ndarray, passages: np.ndarray, languages: np.ndarray,
                     group: int) -> dict[str, float]:
    out = {}
    for language in sorted(set(languages.tolist())):
        mask = languages == language
        if mask.sum() >= group:
            out[language] = recall_at_1(adapter_apply(queries[mask]), passages[mask], group)
    return out


def _curve_png(curve: list[dict[str, Any]]) -> bytes:

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    languages = sorted({lang for row in curve for lang in row["adapter"]})
    for language in languages:
        xs = [row["pairs"] for row in curve if language in row["adapter"]]
        ax.plot(xs, [row["adapter"][language] for row in curve if language in row["adapter"]], marker="o",
                label=f"adapter ({language})")
        ax.axhline(curve[0]["base"][language], linestyle="--", linewidth=1, label=f"base encoder ({language})")
    ax.set_xscale("log")
    ax.set_xlabel("training pairs")
    ax.set_ylabel("held-out R@1 of 10")
    ax.set_title("query adapter: held-out R@1 vs pairs used")
    ax.legend(fontsize=8)
    return png_bytes(fig)


def run_train_adapter(settings: Settings, config: AdapterJobConfig, encoder: Encoder | None = None) -> dict[str, Any]:
    """Train, save ``<out>/adapter.npz`` + manifest, ``report.json`` and ``curve.png``; return the report."""
    from retriever.embedding_store import EmbeddingStore

    out = config.out or settings.artifacts_dir / ADAPTER_DIR
    # The adapter is trained on the base encoder's own vectors (torch, no adapter): the reference every
    # backend's fidelity gate is measured against.
    encoder = encoder or Encoder(resolve(settings.encoder.name, settings.models_dir))
    pairs = _pairs(config)
    if not pairs:
        raise ValueError("no training pairs: check the corpora given to `repliq train adapter`")
    store_root = settings.artifacts_dir / "embeddings"
    stores = {side: EmbeddingStore(store_root, encoder.identity, side) for side in ("query", "passage")}
    texts = {"query": [p.query for p in pairs], "passage": [p.response for p in pairs]}
    vectors = {}
    for side, encode in (("query", encoder.encode_queries), ("passage", encoder.encode_passages)):
        with tqdm(total=len(set(texts[side])), desc=f"encoding {side} texts", unit="text") as bar:
            vectors[side] = stores[side].encode(texts[side], encode, progress=bar.update)
    held = np.array([_held_out(p, config.holdout_fraction) for p in pairs])
    languages = np.array([p.language for p in pairs])
    q_train, p_train = vectors["query"][~held], vectors["passage"][~held]
    dev = (vectors["query"][held], vectors["passage"][held])
    group = config.train.dev_group
    base_r1 = _per_language_r1(lambda q: q, *dev, languages[held], group)
    log.info("adapter: %d train pairs, %d held out; base R@1/%d %s", len(q_train), held.sum(), group, base_r1)
    curve = []
    for count in sorted({*(c for c in config.curve if c < len(q_train)), len(q_train)}):
        adapter, history = train_adapter(q_train[:count], p_train[:count], encoder.identity, config.train, dev=dev)
        curve.append({"pairs": count, "base": base_r1,
                      "adapter": _per_language_r1(adapter.apply, *dev, languages[held], group),
                      "best_epoch": max(history, key=lambda row: row["dev_r_at_1"])["epoch"]})
        log.info("adapter on %d pairs: held-out R@1 %s", count, curve[-1]["adapter"])
    report = {"pairs": len(pairs), "train_pairs": len(q_train), "held_out_pairs": int(held.sum()),
              "pairs_by_language": {lang: int((languages == lang).sum()) for lang in sorted(set(languages.tolist()))},
              "base_r_at_1": base_r1, "adapter_r_at_1": curve[-1]["adapter"], "curve": curve, "history": history,
              "config": jsonable(asdict(config))}
    manifest = save_adapter(
        out, adapter, config=jsonable(asdict(config)), data_sha256=sha256_json([asdict(p) for p in pairs]),
        metrics={"held_out_r_at_1": curve[-1]["adapter"], "base_held_out_r_at_1": base_r1})
    report["adapter"] = manifest.ref
    atomic_write_json(out.with_name(out.name + "-report") / "report.json", report)
    atomic_write_bytes(out.with_name(out.name + "-report") / "curve.png", _curve_png(curve))
    return report

