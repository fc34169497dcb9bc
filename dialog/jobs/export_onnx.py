"""The ONNX step of `repliq models prepare`: export every cached encoder and gate it on dev retrieval.

The export itself lives in :mod:`retriever.onnx_export`; the retrieval half of its fidelity gate uses
the ranking evaluation (:mod:`ranker.evaluation`), which the retriever package may not import, so it is
put together here. The dev sets are small on purpose (a few hundred held-out contexts per language, ten
candidates each) so that prepare stays quick; they never touch a ``test`` split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.corpora import read_chitchat
from core.models.cache import cached_encoders
from core.models.registry import resolve
from core.types import QueryPassageEncoder
from ranker.evaluation import BiEncoderScorer, EvalDataset, dataset_from_dialogues, evaluate_scorer, russian_dataset
from ranker.evaluation import topicalchat_dataset as _topicalchat
from retriever.onnx_export import RetrievalGate, export_model

GATE_CONTEXTS = 300
GATE_POOL = 10
GATE_SEED = 13


@dataclass(frozen=True)
class GateData:
    """Where the gate's dev dialogues come from; English falls back to Chit Chat's dev split (packaged)."""

    russian: Path | None = None
    topicalchat: Path | None = None
    contexts: int | None = None  # None: GATE_CONTEXTS

    @property
    def n_contexts(self) -> int:
        return self.contexts or GATE_CONTEXTS


def gate_datasets(data: GateData) -> list[EvalDataset]:
    options: dict[str, Any] = {"n_contexts": data.n_contexts, "pool_size": GATE_POOL, "bank_size": 0, "seed": GATE_SEED}
    if data.topicalchat is not None:
        english = _topicalchat(data.topicalchat, **options)
    else:
        english = dataset_from_dialogues("en-chitchat-dev", read_chitchat(), split="dev", **options)
    datasets = [english]
    if data.russian is not None:
        datasets.append(russian_dataset(data.russian, **options))  # its dev hash split only
    return datasets


def gate_data_names(data: GateData) -> list[str]:
    """What the gate measures on, known without reading any file: an export gated on other data is redone."""
    names = ["en-topicalchat-heldout" if data.topicalchat else "en-chitchat-dev"]
    names += ["ru-anekdot-dev"] if data.russian else []
    return [f"{name}:{data.n_contexts}x{GATE_POOL}:seed{GATE_SEED}" for name in names]


def retrieval_gate(data: GateData) -> RetrievalGate:
    """R@1/10 of the candidate and of torch per language; torch's figure is computed once per reference.
    The dev sets are read on first use, so a prepare run whose exports are all current reads nothing."""
    torch_scores: dict[tuple[int, str], float] = {}
    datasets: list[EvalDataset] = []

    def measure(reference: QueryPassageEncoder, candidate: QueryPassageEncoder) -> dict[str, dict[str, float]]:
        if not datasets:
            datasets.extend(gate_datasets(data))
        rows: dict[str, dict[str, float]] = {}
        for dataset in datasets:
            key = (id(reference), dataset.name)
            if key not in torch_scores:
                torch_scores[key] = evaluate_scorer(BiEncoderScorer(reference, name="torch"), dataset)["r1_of_10"]
            onnx = evaluate_scorer(BiEncoderScorer(candidate, name="onnx"), dataset)["r1_of_10"]
            rows[dataset.language] = {"torch": round(torch_scores[key], 6), "onnx": round(onnx, 6),
                                      "n": len(dataset.examples), "dataset": dataset.name}
        return rows

    return measure


def export_encoders(models_dir: Path, names: Sequence[str] | None = None, data: GateData | None = None,
                    force: bool = False, say: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Export the named encoders (default: every cached one) behind the fidelity gate; one summary per model."""
    targets = [resolve(name, models_dir) for name in names] if names else cached_encoders(models_dir)
    if not targets:
        return []
    data = data or GateData()
    gate, gate_data = retrieval_gate(data), gate_data_names(data)
    results = []
    for model_dir in targets:
        export = export_model(model_dir, gate, gate_data, force=force, say=say)
        for warning in export.get("warnings") or []:
            say(f"warning: {model_dir.name}: {warning}")
        results.append({"name": model_dir.name, "path": str(model_dir), "status": export["status"],
                        "selected": export.get("selected"), "seconds": export.get("seconds", 0.0)})
    return results
