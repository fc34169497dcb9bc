"""The cached request-path features must equal the uncached code they replaced, bit for bit.

The reference functions below are the code path as it was before the per-phrase caches (kept here
verbatim in substance); the annotators are run twice over the same pools so both the cold and the warm
cache are compared with it.
"""

from __future__ import annotations

import pickle
import random
from collections import Counter

import numpy as np
import pytest

from core.bank.default import starter_rows
from core.text import detect_language, normalize_text, word_tokens
from core.types import SOURCE_BANK, Candidate, Context, Turn
from ranker.annotator_base import AnnotatorResources
from ranker.annotators import build_annotators
from ranker.bm25 import K1, B, bm25_many, bm25_pool
from ranker.features.generic import HIGHFREQ_MAX_NIDF, HIGHFREQ_MAX_WORDS
from ranker.features.pool import pool_gap
from ranker.idf import DOC_CACHE_SIZE, IdfTable

EDGE_TEXTS = ["", "   ", "?!", "123 456", "🙂🙂", "ok ok ok ok", "Ага, ага, ага!", "Привіт, як справи? Їжак є.",
              "Ёжик съел объедки", "mixed Привет hello мир world", "café naïve", "Ελληνικά", "a", "the the the"]


def _old_detect_language(text: str, default: str = "en") -> str:
    cyrillic = latin = ukrainian = russian = 0
    for ch in text:
        if "\u0400" <= ch <= "\u04ff":
            cyrillic += 1
            ukrainian += ch in set("іїєґІЇЄҐ")
            russian += ch in set("ыэъёЫЭЪЁ")
        elif ch.isascii() and ch.isalpha():
            latin += 1
    if cyrillic == 0 and latin == 0:
        return default
    if cyrillic > latin:
        return "uk" if ukrainian > russian else "ru"
    return "en"


def _old_bm25_many(queries: list[set[str]], document: list[str], idf: IdfTable) -> list[float]:
    if not document:
        return [0.0] * len(queries)
    tf = Counter(document)
    norm = K1 * (1 - B + B * len(document) / max(idf.avg_doc_len, 1e-9))
    words = tf.keys()
    shared = set().union(*(words & q for q in queries))
    weights = {w: idf.bm25_idf(w) * tf[w] * (K1 + 1) / (tf[w] + norm) for w in shared}
    return [sum(weights[w] for w in words & q) for q in queries]


def _old_features(context: Context, pool: list[Candidate], idf: IdfTable, turns: int = 3) -> np.ndarray:
    """lexical (5) + nidf (2) + generic_highfreq (1) + language (2), as the uncached annotators computed them."""
    window = context.window(turns).turns
    last = set(word_tokens(context.last_text))
    whole = {w for t in window for w in word_tokens(t.text)}
    seen = {normalize_text(t.text).lower() for t in window}
    context_lang = _old_detect_language(context.last_text, default="")
    out = np.full((len(pool), 10), np.nan, dtype=np.float32)
    for i, cand in enumerate(pool):
        words = word_tokens(cand.text)
        out[i, 0], out[i, 1] = _old_bm25_many([last, whole], words, idf)
        doc = set(words)
        out[i, 2] = len(doc & set(whole)) / len(doc) if doc else 0.0
        out[i, 3] = float(normalize_text(cand.text).lower() in seen)
        if words:
            values = idf.nidf_values(words)
            out[i, 5], out[i, 6] = sum(values) / len(values), max(values)
            out[i, 7] = float(len(words) <= HIGHFREQ_MAX_WORDS and max(values) < HIGHFREQ_MAX_NIDF)
        detected = _old_detect_language(cand.text, default="")
        if detected:
            out[i, 8] = float(detected == cand.language)
            if context_lang:
                out[i, 9] = float(detected == context_lang)
    if len(pool):
        out[:, 4] = pool_gap(out[:, 1])
    return out


def _new_features(annotators: dict, context: Context, pool: list[Candidate]) -> np.ndarray:
    lexical = annotators["lexical"].annotate_pool(context, pool)
    nidf = annotators["nidf"].annotate_pool(context, pool)
    generic = annotators["generic"].annotate_pool(context, pool)[:, 1:2]
    language = annotators["language"].annotate_pool(context, pool)
    return np.hstack([lexical, nidf, generic, language])


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [row.text for row in starter_rows()] + EDGE_TEXTS


def _pools(texts: list[str], n: int = 12, size: int = 50) -> list[tuple[Context, list[Candidate]]]:
    rng = random.Random(7)
    pools = []
    for _ in range(n):
        turns = tuple(Turn("u" if k % 2 == 0 else "b", rng.choice(texts)) for k in range(rng.randint(1, 5)))
        chosen = [*rng.sample(texts, size - 2), turns[-1].text, turns[-1].text.upper() + "  "]  # echoes
        pool = [Candidate(t, SOURCE_BANK, rng.choice(["ru", "en"])) for t in chosen]
        pools.append((Context(turns), pool))
    return pools


def test_lexical_nidf_generic_language_features_equal_the_uncached_code(texts: list[str]) -> None:
    idf = IdfTable.build(texts[::2])  # half the texts: the other half has words the table never saw
    by_name = {a.name: a for a in build_annotators(AnnotatorResources(idf=idf),
                                                   names=("lexical", "nidf", "generic", "language"))}
    pools = _pools(texts)
    expected = [_old_features(ctx, pool, idf) for ctx, pool in pools]
    for _pass in ("cold cache", "warm cache"):
        for (ctx, pool), want in zip(pools, expected, strict=True):
            np.testing.assert_array_equal(_new_features(by_name, ctx, pool), want, err_msg=_pass)
    assert idf.bm25_weights.cache_info().hits > 0 and idf.nidf_stats.cache_info().hits > 0


def test_bm25_pool_is_bm25_many_bit_for_bit(texts: list[str]) -> None:
    idf = IdfTable.build(texts)
    rng = random.Random(3)
    for _ in range(20):
        queries = [set(word_tokens(rng.choice(texts))), set(word_tokens(" ".join(rng.sample(texts, 3))))]
        documents = [tuple(word_tokens(t)) for t in rng.sample(texts, 40)] + [()]
        matrix = bm25_pool(queries, documents, idf)
        reference = np.array([_old_bm25_many(queries, list(d), idf) for d in documents])
        assert matrix.shape == (41, 2) and matrix.tobytes() == reference.tobytes()
        assert matrix.tobytes() == np.array([bm25_many(queries, list(d), idf) for d in documents]).tobytes()


def test_detect_language_matches_the_character_loop(texts: list[str]) -> None:
    rng = random.Random(11)
    alphabet = ("abcXYZ 0123?!.,-_" + "абвгдежзийклмнопрстуфхцчшщьюя" + "іїєґІЇЄҐ" + "ыэъёЫЭЪЁ" + "éñßΩЂѣ"
                + "🙂\u04ff\u0400\u0500")
    samples = texts + ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(3000)]
    for text in samples:
        for default in ("en", ""):
            assert detect_language(text, default) == _old_detect_language(text, default), text


def test_idf_table_caches_are_bounded_and_survive_pickling(texts: list[str]) -> None:
    idf = IdfTable.build(texts)
    assert idf.bm25_weights.cache_info().maxsize == DOC_CACHE_SIZE
    words = tuple(word_tokens(texts[0]))
    idf.nidf_stats(words)
    copy = pickle.loads(pickle.dumps(idf))
    assert copy == idf and copy.nidf_stats(words) == idf.nidf_stats(words)
    assert copy.nidf_stats.cache_info().currsize == 1  # its own cache, not a shipped one
