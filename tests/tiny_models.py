"""Tiny random-weight models for fast tests: built on the spot, nothing downloaded.

Import it from tests as ``from tiny_models import build_tiny_encoder`` (pytest puts ``tests/`` on
``sys.path`` because ``tests/conftest.py`` lives there without an ``__init__.py``).
"""

from __future__ import annotations

import shutil
import string
import tempfile
from pathlib import Path

from core.atomic import sha256_file
from core.models.manifest import ModelManifest

_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_CYRILLIC = [chr(code) for code in range(ord("а"), ord("я") + 1)] + ["ё"]
_CHARS = list(string.ascii_lowercase) + _CYRILLIC + list(string.digits) + list(".,!?'-:;()\"")


def build_tiny_encoder(directory: Path, *, model_id: str = "tiny-random-encoder", seed: int = 0,
                       hidden: int = 32, query_prefix: str = "query: ", passage_prefix: str = "passage: ",
                       languages: tuple[str, ...] = ("en", "ru")) -> Path:
    """A character-level 1-layer BERT saved as a sentence-transformers directory with a repliq manifest.

    Different ``seed`` values give different weights (and weights hashes); the vectors carry no
    meaning but are deterministic, distinct per text and sensitive to every character, prefix included.
    Takes well under a second after torch is imported.
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizer

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.hf."))
    hf_dir = scratch / "hf"
    vocab = _SPECIAL + _CHARS + ["##" + char for char in _CHARS]
    tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True,
                              strip_accents=False)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=hidden * 2, max_position_embeddings=256)
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    transformer = Transformer(str(hf_dir), max_seq_length=128)
    model = SentenceTransformer(modules=[transformer, Pooling(hidden, "mean"), Normalize()], device="cpu")
    model.save(str(directory))
    shutil.rmtree(scratch)
    ModelManifest(
        model_id=model_id,
        kind="encoder",
        source_package="tests.tiny_models",
        source_version="0",
        weights_sha256=sha256_file(directory / "model.safetensors"),
        dim=hidden,
        query_prefix=query_prefix,
        passage_prefix=passage_prefix,
        languages=list(languages),
        license="test-only",
    ).save(directory)
    return directory


_DECODER_CORPUS = [
    "Hello there, how are you today?", "I like green tea and long walks.", "What are you doing this weekend?",
    "Привет! Как дела?", "Сегодня отличная погода, пойдём гулять.", "Я люблю читать книги вечером.",
]


def build_tiny_decoder(directory: Path, seed: int = 0) -> Path:
    """A 2-layer Llama with a byte-level BPE tokenizer trained on a few sentences; builds in ~1 s."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<bos>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    raw.train_from_iterator(_DECODER_CORPUS * 3, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<bos>", eos_token="<eos>",
                                        pad_token="<pad>")
    config = LlamaConfig(vocab_size=raw.get_vocab_size(), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
