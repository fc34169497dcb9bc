"""Which parts of e5-small lose the most to int8: the measurement behind the ladder's "sensitive" rung.

Cheap by construction. The word-embedding table (384 of the export's 470 MB) is cut off the fp32 graph
(``onnx.utils.extract_model``), so each variant quantizes only the 85 MB transformer body in seconds; the
table's own int8 error is simulated in numpy as ORT's dynamic Gather quantization does it (symmetric int8,
one scale). Texts are Russian dialogues of the *train* hash split (contexts as queries, their candidates as
passages): the fidelity gate's dev split stays unseen by the choice it checks. Per variant: mean and min
cosine to fp32, and how many contexts' top-1 candidate changed.

    python -m bench.bench_int8_sensitivity --russian ../shared/data/ru/koziev_anekdot_dialogues.tar.xz
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import markdown_table, write_results
from core.config import load_settings

NAME = "int8_sensitivity"
EMBEDDING_OUT = "/transformer/embeddings/word_embeddings/Gather_output_0"
KINDS = {"query": "/attention/self/query/", "key": "/attention/self/key/", "value": "/attention/self/value/",
         "attention output": "/attention/output/dense/", "ffn in": "/intermediate/dense/"}


class _Probe:
    """Tokenized Russian texts, the fp32 body's vectors for them, and the per-context candidate rows."""

    def __init__(self, model_dir: Path, russian: Path, contexts: int, scratch: Path) -> None:
        import onnx
        from onnx import numpy_helper

        from core.corpora import read_anekdot_dialogues
        from ranker.evaluation import dataset_from_dialogues
        from retriever.onnx_encoder import OnnxEncoder

        fp32 = model_dir / "onnx" / "model.fp32.onnx"
        self.table = next(numpy_helper.to_array(t) for t in onnx.load(str(fp32)).graph.initializer
                          if t.name.endswith("word_embeddings.weight"))
        self.body = scratch / "body.onnx"
        onnx.utils.extract_model(str(fp32), str(self.body), ["input_ids", "attention_mask", EMBEDDING_OUT],
                                 ["sentence_embedding"])
        encoder = OnnxEncoder(model_dir, "fp32", num_threads=1)
        data = dataset_from_dialogues("ru-train", read_anekdot_dialogues(russian), split="train",
                                      n_contexts=contexts, pool_size=10, bank_size=0, seed=7)
        queries = [encoder.manifest.query_prefix + ex.context.as_query_text(3) for ex in data.examples]
        passages = list(dict.fromkeys(c for ex in data.examples for c in ex.candidates))
        texts = queries + [encoder.manifest.passage_prefix + p for p in passages]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        self.batches = [order[s:s + 32] for s in range(0, len(order), 32)]
        self.feeds = [encoder.tokenize([texts[i] for i in rows]) for rows in self.batches]
        row = {p: len(queries) + i for i, p in enumerate(passages)}
        self.pools = [[row[c] for c in ex.candidates] for ex in data.examples]
        self.model_dir, self.n_texts = model_dir, len(texts)
        self.reference = self.vectors(self.body, self.table)
        self.reference_top = self.top1(self.reference)

    def vectors(self, path: Path, table: np.ndarray) -> np.ndarray:
        from retriever.onnx_encoder import _session

        session, out = _session(path, 1, self.model_dir), np.empty((self.n_texts, table.shape[1]), np.float32)
        for rows, feed in zip(self.batches, self.feeds, strict=True):
            out[rows] = session.run(["sentence_embedding"], {**feed, EMBEDDING_OUT: table[feed["input_ids"]]})[0]
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def top1(self, vectors: np.ndarray) -> np.ndarray:
        return np.array([int(np.argmax(vectors[pool] @ vectors[i])) for i, pool in enumerate(self.pools)])

    def compare(self, vectors: np.ndarray) -> dict[str, Any]:
        cosines = np.sum(vectors * self.reference, axis=1)
        return {"mean_cosine": round(float(cosines.mean()), 6), "min_cosine": round(float(cosines.min()), 6),
                "top1_changed": int(np.sum(self.top1(vectors) != self.reference_top)), "contexts": len(self.pools)}


def _int8_table(table: np.ndarray) -> np.ndarray:
    scale = np.abs(table).max() / 127
    return (np.clip(np.round(table / scale), -127, 127) * scale).astype(np.float32)


def _variants(names: list[str]) -> dict[str, dict[str, Any]]:
    """name -> quantize_dynamic options over the body's weight MatMuls (``only``: quantize just these)."""
    weight_mm = [n for n in names if "/attention/self/MatMul" not in n]
    ffn_out = [n for n in weight_mm if "/output/dense/" in n and "/attention/" not in n]
    layer = {i: [n for n in weight_mm if f"/layer.{i}/" in n] for i in range(12)}
    out: dict[str, dict[str, Any]] = {
        "all MatMuls, per-channel": {}, "all MatMuls, per-channel, reduce_range": {"reduce_range": True},
        "all MatMuls, per-tensor, reduce_range": {"per_channel": False, "reduce_range": True}}
    out.update({f"only layer {i}": {"only": nodes} for i, nodes in layer.items() if nodes})
    out.update({f"only {kind}": {"only": [n for n in weight_mm if tag in n]} for kind, tag in KINDS.items()})
    out["only ffn out"] = {"only": ffn_out}
    out["reduce_range, layers 0+4 fp32"] = {"reduce_range": True, "exclude": layer[0] + layer[4]}
    out["reduce_range, layers 0+4 + ffn out fp32 (the ladder's rung 3)"] = {
        "reduce_range": True, "exclude": sorted(set(layer[0] + layer[4] + ffn_out))}
    out["reduce_range, all ffn fp32 (rung 4)"] = {
        "reduce_range": True, "exclude": ffn_out + [n for n in weight_mm if KINDS["ffn in"] in n]}
    return out


def run(model: str, russian: Path, contexts: int) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from core.models.registry import resolve

    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's advice on every call
    model_dir = resolve(model, load_settings().models_dir)
    with tempfile.TemporaryDirectory(prefix="int8-sens-") as tmp:
        probe = _Probe(model_dir, russian, contexts, Path(tmp))
        results = {"word-embedding table only": probe.compare(probe.vectors(probe.body, _int8_table(probe.table)))}
        names = [n.name for n in onnx.load(str(probe.body), load_external_data=False).graph.node
                 if n.op_type == "MatMul"]
        for name, options in _variants(names).items():
            path = Path(tmp) / "variant.onnx"
            quantize_dynamic(str(probe.body), str(path), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                             per_channel=options.get("per_channel", True),
                             reduce_range=options.get("reduce_range", False),
                             nodes_to_quantize=options.get("only"), nodes_to_exclude=options.get("exclude"))
            results[name] = probe.compare(probe.vectors(path, probe.table))
            print(f"{name:60} {results[name]}", flush=True)
    return {"model": model, "texts": probe.n_texts, "split": "ru-anekdot train", "results": results}


def section(record: dict[str, Any]) -> str:
    rows = [[name, f"{r['mean_cosine']:.5f}", f"{r['min_cosine']:.4f}", f"{r['top1_changed']} of {r['contexts']}"]
            for name, r in record["results"].items()]
    return ("## int8 sensitivity of e5-small (issue 13) — `bench/bench_int8_sensitivity.py`\n\n"
            f"{record['texts']} Russian texts from the {record['split']} split (contexts as queries, their "
            "candidates as passages); int8 dynamic quantization (QInt8 weights, per-channel unless said) of the "
            "named MatMuls only, everything else fp32; compared with the fp32 export. \"top-1 changed\": contexts "
            "whose best of 10 candidates differs from fp32's.\n\n"
            + markdown_table(["int8 variant", "mean cosine to fp32", "min cosine", "top-1 changed"], rows) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="e5-small")
    parser.add_argument("--russian", type=Path, required=True, help="koziev_anekdot_dialogues.tar.xz")
    parser.add_argument("--contexts", type=int, default=60)
    args = parser.parse_args()
    record = run(args.model, args.russian, args.contexts)
    write_results(NAME, record, section(record))


if __name__ == "__main__":
    main()
