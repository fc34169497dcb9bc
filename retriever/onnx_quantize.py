"""The int8 ladder of the ONNX export: dynamic-quantization recipes, from the fastest to the most conservative.

Rungs (:data:`INT8_LADDER`), tried in order by :mod:`retriever.onnx_export` until one passes its fidelity
gate: per-channel int8 weights; the same with ``reduce_range`` (7-bit weights: on a CPU without VNNI,
AVX2's u8 x s8 multiply-add saturates its 16-bit sums with full 8-bit weights); the same with the node
groups found most sensitive kept in fp32 (:data:`SENSITIVE_GROUPS`); int8 for attention's MatMuls only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Node groups a rung may keep in fp32: name -> (op type, test on the node name). "layer.N" (any N) is every
# weight MatMul of encoder layer N.
FP32_GROUPS: dict[str, tuple[str, Callable[[str], bool]]] = {
    "word_embeddings": ("Gather", lambda name: "/word_embeddings/" in name),
    "ffn_in": ("MatMul", lambda name: "/intermediate/dense/" in name),
    "ffn_out": ("MatMul", lambda name: "/output/dense/" in name and "/attention/" not in name),
}
# Measured on e5-small with Russian dialogues of the *train* split (the gate's dev split stays unseen), int8
# (per-channel, MatMul) one group at a time, mean cosine to fp32: layers 0 and 4 lose 1.4e-3 each, every
# other layer <= 3e-4; by kind, the feed-forward MatMuls lose 1.9e-3 (in) and 2.2e-3 (out), attention's
# <= 3e-4; the word-embedding table 3e-5. Layers 0 and 4 plus the feed-forward output projections in fp32:
# 0.9990 (all int8 with reduce_range: 0.9965). Script and numbers: docs/benchmarks.md, "Encoder backends".
SENSITIVE_GROUPS: tuple[str, ...] = ("layer.0", "layer.4", "ffn_out")


@dataclass(frozen=True)
class Int8Recipe:
    """One rung of the int8 ladder: the arguments of ``onnxruntime.quantization.quantize_dynamic``."""

    name: str
    per_channel: bool = True
    reduce_range: bool = False
    op_types: tuple[str, ...] = ()  # empty: every op type ORT quantizes (MatMul, Gather, ...)
    keep_fp32: tuple[str, ...] = ()  # node groups left in fp32, see :data:`FP32_GROUPS`

    def describe(self) -> dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


INT8_LADDER = (
    Int8Recipe("int8-per-channel"),
    Int8Recipe("int8-per-channel-reduce-range", reduce_range=True),
    Int8Recipe("int8-reduce-range-sensitive-fp32", reduce_range=True, keep_fp32=SENSITIVE_GROUPS),
    # The last resort: int8 weights for attention's MatMuls only, the whole feed-forward block in fp32.
    Int8Recipe("int8-matmul-attention-only", reduce_range=True, op_types=("MatMul",), keep_fp32=("ffn_in", "ffn_out")),
)


def cpu_int8_flags() -> list[str]:
    """The CPU features that decide how int8 matrix products round and saturate (the gate holds where it ran:
    without VNNI, AVX2's 8-bit multiply-add saturates, which ``reduce_range`` avoids)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return sorted(flags & {"avx2", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8"})


def fp32_nodes(onnx_path: Path, groups: Sequence[str]) -> list[str]:
    """Names of the nodes in ``groups`` (keys of :data:`FP32_GROUPS`, or ``layer.N``), in graph order."""
    import onnx

    tests = []
    for group in groups:
        if group.startswith("layer.") and group[6:].isdigit():
            tests.append(("MatMul", lambda name, tag=f"/{group}/": tag in name))
        elif group in FP32_GROUPS:
            tests.append(FP32_GROUPS[group])
        else:
            raise ValueError(f"unknown fp32 node group {group!r}; use one of {', '.join(FP32_GROUPS)} or layer.N")
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return [node.name for node in graph.node if any(node.op_type == op and test(node.name) for op, test in tests)]


def quantize(fp32_path: Path, out_path: Path, recipe: Int8Recipe) -> list[str]:
    """Dynamic int8 (QInt8 weights) of ``fp32_path`` as ``recipe`` says; returns the nodes left in fp32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    excluded = fp32_nodes(fp32_path, recipe.keep_fp32) if recipe.keep_fp32 else []
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs advice to the root logger on every call
    try:
        quantize_dynamic(str(fp32_path), str(out_path), weight_type=QuantType.QInt8, per_channel=recipe.per_channel,
                         reduce_range=recipe.reduce_range, op_types_to_quantize=list(recipe.op_types) or None,
                         nodes_to_exclude=excluded)
    finally:
        root.setLevel(level)
    return excluded
