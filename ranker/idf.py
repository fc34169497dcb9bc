"""Document frequencies over the bank and a training corpus: the statistics behind BM25 and NIDF.

NIDF (normalized inverse document frequency, as used in studies of specificity in chit-chat) maps a
word's IDF onto [0, 1] between the most common and the rarest word of the table, so "specific" can be
compared across tables of different sizes. Words the table has never seen count as the rarest.

A candidate's per-phrase quantities (its BM25 term weights, its NIDF mean and max) depend only on its
words and the table, and bank phrases recur in request after request, so each table remembers them
for its most recent :data:`DOC_CACHE_SIZE` distinct phrases.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

from core.atomic import atomic_write_json, sha256_json
from core.text import word_tokens

FORMAT_VERSION = 1
# Distinct phrases whose per-phrase statistics a table keeps (the default bank has ~14,000).
DOC_CACHE_SIZE = 32768


class IdfTableError(ValueError):
    """An IDF file that is damaged or from another format; the message says how to rebuild it."""


@dataclass(frozen=True)
class IdfTable:
    n_docs: int
    df: dict[str, int]
    avg_doc_len: float

    def __post_init__(self) -> None:
        if self.n_docs <= 0:
            raise IdfTableError("an IDF table needs at least one document")
        # Word-level lookups run per candidate on the request path, so they are precomputed once.
        max_count = max(self.df.values(), default=0)
        min_idf, max_idf = self._raw_idf(max_count), self._raw_idf(0)
        span = max_idf - min_idf
        nidf = {w: (self._raw_idf(c) - min_idf) / span if span > 0 else 1.0 for w, c in self.df.items()}
        object.__setattr__(self, "_nidf", nidf)
        object.__setattr__(self, "_bm25_idf", {w: self._raw_bm25_idf(c) for w, c in self.df.items()})
        object.__setattr__(self, "bm25_weights", lru_cache(maxsize=DOC_CACHE_SIZE)(self._bm25_weights))
        object.__setattr__(self, "nidf_stats", lru_cache(maxsize=DOC_CACHE_SIZE)(self._nidf_stats))

    def __reduce__(self) -> tuple[type[IdfTable], tuple[int, dict[str, int], float]]:
        """Pickled as its three fields; the caches are rebuilt, never shipped."""
        return (IdfTable, (self.n_docs, self.df, self.avg_doc_len))

    @classmethod
    def build(cls, documents: Iterable[str], min_df: int = 1) -> IdfTable:
        """Count each word once per document; words below ``min_df`` are dropped to keep the file small."""
        df: Counter[str] = Counter()
        n_docs = total_len = 0
        for text in documents:
            tokens = word_tokens(text)
            n_docs += 1
            total_len += len(tokens)
            df.update(set(tokens))
        if n_docs == 0:
            raise IdfTableError("no documents given; build the IDF table from the bank and a corpus")
        kept = {word: count for word, count in df.items() if count >= min_df}
        return cls(n_docs=n_docs, df=kept, avg_doc_len=total_len / n_docs)

    def _raw_idf(self, count: int) -> float:
        return math.log((self.n_docs + 1) / (count + 1))

    def idf(self, word: str) -> float:
        return self._raw_idf(self.df.get(word, 0))

    def _raw_bm25_idf(self, count: int) -> float:
        return math.log(1 + (self.n_docs - count + 0.5) / (count + 0.5))

    def bm25_idf(self, word: str) -> float:
        """Robertson-Sparck Jones IDF with the +1 that keeps it positive for very common words."""
        value = self._bm25_idf.get(word)  # type: ignore[attr-defined]
        return self._raw_bm25_idf(0) if value is None else value

    def nidf(self, word: str) -> float:
        """0 for the most common word of the table, 1 for a word it has never seen."""
        return self._nidf.get(word, 1.0)  # type: ignore[attr-defined]

    def nidf_values(self, words: Iterable[str]) -> list[float]:
        table = self._nidf  # type: ignore[attr-defined]
        return [table.get(w, 1.0) for w in words]

    def _bm25_weights(self, document: tuple[str, ...], k1: float, b: float) -> dict[str, float]:
        """Each distinct word of ``document`` (first-occurrence order) -> idf * saturated term frequency.

        Cached per document as ``bm25_weights(document, k1, b)``; the arithmetic is term for term the one
        :func:`ranker.bm25.bm25_many` does, so sums over it match that function bit for bit. The cached dict
        is shared by every caller: read it, never modify it.
        """
        tf = Counter(document)
        norm = k1 * (1 - b + b * len(document) / max(self.avg_doc_len, 1e-9))
        return {w: self.bm25_idf(w) * tf[w] * (k1 + 1) / (tf[w] + norm) for w in tf}

    def _nidf_stats(self, words: tuple[str, ...]) -> tuple[float, float]:
        """(mean, max) NIDF of ``words`` (non-empty); cached per phrase as ``nidf_stats(words)``."""
        values = self.nidf_values(words)
        return sum(values) / len(values), max(values)

    @cached_property
    def hash(self) -> str:
        return sha256_json(self._payload())

    def _payload(self) -> dict:
        return {"format": FORMAT_VERSION, "n_docs": self.n_docs, "avg_doc_len": self.avg_doc_len, "df": self.df}

    def save(self, path: Path) -> str:
        """Write atomically with the content hash inside; returns the hash."""
        payload = self._payload()
        digest = sha256_json(payload)
        atomic_write_json(Path(path), {**payload, "sha256": digest})
        return digest

    @classmethod
    def load(cls, path: Path) -> IdfTable:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise IdfTableError(f"cannot read IDF table {path} ({exc}); rebuild it with the blender training") from exc
        stored = data.pop("sha256", None)
        if data.get("format") != FORMAT_VERSION:
            raise IdfTableError(f"{path} has IDF format {data.get('format')!r}, expected {FORMAT_VERSION}; rebuild it")
        if stored != sha256_json(data):
            raise IdfTableError(f"{path} does not match its recorded hash (damaged or edited); rebuild it")
        return cls(n_docs=int(data["n_docs"]), df={k: int(v) for k, v in data["df"].items()},
                   avg_doc_len=float(data["avg_doc_len"]))
