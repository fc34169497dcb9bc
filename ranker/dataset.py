"""Learning-to-rank data for the blender: one group of candidates per dialogue context.

A group holds the reply a human actually gave (the gold), the bank's top retrieved phrases, random bank
phrases and, optionally, generated replies. Gold is labelled 1 and the rest 0, unless human labels
exist for the context: then labels are graded 0..3 (an unlabelled gold counts as 3).

Human labels are JSONL, one judgement per line::

    {"context_id": "chitchat:a07e...#5", "response": "Sounds fun, where did you go?", "label": 2}

``context_id`` is ``core.corpora.ContextPair.context_id``; responses match after whitespace
normalization and lower-casing; a labelled response missing from the pool is added to it.

Splits come from :func:`core.corpora.split_of` on the conversation id, so a conversation never
appears in two splits.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from core.atomic import atomic_write_bytes
from core.corpora import ContextPair, split_of
from core.executor import Executor, LocalExecutor, WorkerFactory
from core.job_configs import BuilderConfig
from core.text import normalize_text
from core.types import SOURCE_BANK, Candidate, Context, QueryPassageEncoder
from ranker.annotators import Annotator, annotate_all, describe, feature_names
from ranker.features.pool import STATISTICS

log = logging.getLogger(__name__)

RetrieveFn = Callable[[list[Context], str, int], list[list[Candidate]]]
GenerateFn = Callable[[list[Context], str], list[list[Candidate]]]
# Cosine between each context's retrieval query and each text, the same score the retriever reports.
SimilarityFn = Callable[[list[Context], list[list[str]]], list[np.ndarray]]
HumanLabels = dict[str, dict[str, tuple[str, int]]]  # context_id -> normalized key -> (text, label)
Item = tuple[ContextPair, list[Candidate]]  # a context and the generated candidates its pool gets
MAX_LABEL = 3


class DatasetError(ValueError):
    """Input that cannot become a ranking dataset; the message says what to fix."""


@dataclass
class RankingDataset:
    X: np.ndarray  # float32 (rows, features), NaN = missing
    y: np.ndarray  # float32 (rows,)
    group_sizes: np.ndarray  # int64 (groups,)
    feature_names: list[str]
    context_ids: list[str]  # per group
    conversation_ids: list[str]  # per group
    splits: list[str]  # per group
    texts: list[str]  # per row
    origins: list[str]  # per row: gold / retrieved / random / corpus / generated / labelled
    annotators: list[dict] = field(default_factory=list)
    resources: dict[str, str] = field(default_factory=dict)

    @property
    def data_hash(self) -> str:
        digest = hashlib.sha256()
        for array in (self.X, self.y, self.group_sizes):
            digest.update(np.ascontiguousarray(array).tobytes())
        meta = [self.feature_names, self.context_ids, self.splits, self.texts, self.origins, self.annotators]
        digest.update(json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8"))
        return digest.hexdigest()

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.group_sizes)]).astype(np.int64)

    def subset(self, split: str) -> RankingDataset:
        keep = [g for g, s in enumerate(self.splits) if s == split]
        off = self.offsets
        rows = np.concatenate([np.arange(off[g], off[g + 1]) for g in keep]) if keep else np.empty(0, np.int64)
        return replace(
            self, X=self.X[rows], y=self.y[rows], group_sizes=self.group_sizes[keep],
            context_ids=[self.context_ids[g] for g in keep],
            conversation_ids=[self.conversation_ids[g] for g in keep], splits=[split] * len(keep),
            texts=[self.texts[r] for r in rows], origins=[self.origins[r] for r in rows],
        )

    def save(self, path: Path) -> str:
        """Write an .npz atomically; returns the data hash (also stored inside and checked on load)."""
        meta = {"feature_names": self.feature_names, "annotators": self.annotators,
                "resources": self.resources, "data_hash": self.data_hash}
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer, X=self.X, y=self.y, group_sizes=self.group_sizes,
            context_ids=np.array(self.context_ids, dtype=str),
            conversation_ids=np.array(self.conversation_ids, dtype=str),
            splits=np.array(self.splits, dtype=str), texts=np.array(self.texts, dtype=str),
            origins=np.array(self.origins, dtype=str), meta=np.array(json.dumps(meta, ensure_ascii=False)),
        )
        atomic_write_bytes(Path(path), buffer.getvalue())
        return meta["data_hash"]

    @classmethod
    def load(cls, path: Path) -> RankingDataset:
        with np.load(Path(path), allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]))
            data = cls(
                X=npz["X"], y=npz["y"], group_sizes=npz["group_sizes"], feature_names=meta["feature_names"],
                context_ids=npz["context_ids"].tolist(), conversation_ids=npz["conversation_ids"].tolist(),
                splits=npz["splits"].tolist(), texts=npz["texts"].tolist(), origins=npz["origins"].tolist(),
                annotators=meta["annotators"], resources=meta["resources"],
            )
        if data.data_hash != meta["data_hash"]:
            raise DatasetError(f"{path} does not match its recorded data hash; rebuild the dataset")
        return data


def _key(text: str) -> str:
    return normalize_text(text).lower()


def load_human_labels(path: Path) -> HumanLabels:
    """Read the JSONL label format in the module docstring; errors name the offending line."""
    labels: HumanLabels = {}
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                context_id, response, label = row["context_id"], row["response"], row["label"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DatasetError(f"{path}:{line_no}: expected {{\"context_id\", \"response\", \"label\"}}") from exc
            if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label <= MAX_LABEL:
                raise DatasetError(f"{path}:{line_no}: label must be an integer 0..{MAX_LABEL}, got {label!r}")
            labels.setdefault(str(context_id), {})[_key(str(response))] = (str(response), label)
    return labels


@dataclass
class _Group:
    pair: ContextPair
    pool: list[Candidate]
    origins: list[str]
    labels: list[float]


class PoolBuilder:
    """Each context's pool: gold, random and corpus negatives, retrieved and generated candidates, labels.

    Plain data (the bank's candidates, the corpus replies, the labels), so it pickles to executor workers;
    every draw is seeded by the context, so any worker builds any context's pool the same way.
    """

    def __init__(self, bank: Sequence[Candidate], config: BuilderConfig, human: HumanLabels | None,
                 pairs: Sequence[ContextPair] = ()) -> None:
        self.config, self.human = config, human or {}
        # (corpus, language, split) -> [(conversation id, reply)], the pool corpus negatives are drawn from.
        self.corpus: dict[tuple[str, str, str], list[tuple[str, str]]] = {}
        for pair in pairs:
            self.corpus.setdefault(self._corpus_key(pair), []).append((pair.conversation_id, pair.response))
        self.bank_by_lang: dict[str, list[Candidate]] = {}
        self.bank_ids: dict[str, int] = {}
        for cand in bank:
            self.bank_by_lang.setdefault(cand.language, []).append(cand)
            if cand.phrase_id is not None:
                self.bank_ids.setdefault(_key(cand.text), cand.phrase_id)

    def _corpus_key(self, pair: ContextPair) -> tuple[str, str, str]:
        corpus = pair.conversation_id.partition(":")[0] if ":" in pair.conversation_id else ""
        return corpus, pair.language, split_of(pair.conversation_id, self.config.dev_fraction,
                                               self.config.test_fraction)

    def _rng(self, pair: ContextPair, salt: int = 0) -> np.random.Generator:
        """Per-context randomness: the same context gets the same draw whatever the batch order."""
        seed = int(hashlib.sha1(pair.context_id.encode("utf-8")).hexdigest()[:12], 16)
        return np.random.default_rng([self.config.seed, seed, salt])

    def random_phrases(self, pair: ContextPair) -> list[Candidate]:
        phrases = self.bank_by_lang.get(pair.language, [])
        k = min(self.config.k_random * 2, len(phrases))
        picks = self._rng(pair).choice(len(phrases), size=k, replace=False)
        return [replace(phrases[i], stage_scores={}, features={}, contributions={}) for i in picks]

    def corpus_replies(self, pair: ContextPair) -> list[Candidate]:
        """Other conversations' replies from the same split (a dev reply never becomes a train negative)."""
        if self.config.k_corpus <= 0:
            return []
        pool = self.corpus.get(self._corpus_key(pair), [])
        k = min(self.config.k_corpus * 2, len(pool))
        picks = self._rng(pair, salt=2).choice(len(pool), size=k, replace=False) if k else []
        return [Candidate(pool[i][1], SOURCE_BANK, pair.language, phrase_id=self.bank_ids.get(_key(pool[i][1])))
                for i in picks if pool[i][0] != pair.conversation_id][:self.config.k_corpus]

    def group(self, pair: ContextPair, retrieved: list[Candidate], generated: list[Candidate]) -> _Group:
        gold_key = _key(pair.response)
        gold = Candidate(pair.response, SOURCE_BANK, pair.language, phrase_id=self.bank_ids.get(gold_key))
        group = _Group(pair, [gold], ["gold"], [1.0])
        seen = {gold_key}
        for cand in retrieved:
            if _key(cand.text) == gold_key:  # the gold itself was retrieved: keep its real scores
                gold.stage_scores.update(cand.stage_scores)
                gold.phrase_id = gold.phrase_id if gold.phrase_id is not None else cand.phrase_id
        n_random = 0
        sources = [("retrieved", c) for c in retrieved] + [("random", c) for c in self.random_phrases(pair)]
        sources += [("corpus", c) for c in self.corpus_replies(pair)]
        sources += [("generated", c) for c in generated]
        for origin, cand in sources:
            key = _key(cand.text)
            if key in seen or not key or (origin == "random" and n_random >= self.config.k_random):
                continue
            n_random += origin == "random"
            seen.add(key)
            group.pool.append(cand)
            group.origins.append(origin)
            group.labels.append(0.0)
        labelled = self.human.get(pair.context_id)
        if labelled:
            for key, (text, _) in labelled.items():
                if key not in seen:
                    seen.add(key)
                    group.pool.append(Candidate(text, SOURCE_BANK, pair.language, phrase_id=self.bank_ids.get(key)))
                    group.origins.append("labelled")
                    group.labels.append(0.0)
            keys = [_key(c.text) for c in group.pool]
            default = {"gold": MAX_LABEL}
            group.labels = [float(labelled[k][1]) if k in labelled else float(default.get(o, 0))
                            for k, o in zip(keys, group.origins, strict=True)]
        # Shuffled so that no learner or metric can profit from the gold sitting first when scores tie.
        order = self._rng(pair, salt=1).permutation(len(group.pool))
        group.pool = [group.pool[i] for i in order]
        group.origins = [group.origins[i] for i in order]
        group.labels = [group.labels[i] for i in order]
        return group


def _fill_similarity(groups: list[_Group], similarity: SimilarityFn) -> None:
    """Give non-retrieved bank candidates the retrieval cosine they would have had.

    Without it, gold and random phrases would be the only rows lacking a retrieval score, and the
    blender would learn "no score = gold" instead of anything about the reply. Ranks are not filled in:
    the retrieval annotator ranks cosines within the pool.
    """
    todo = [(g, [i for i, (c, o) in enumerate(zip(g.pool, g.origins, strict=True))
                 if o != "retrieved" and c.source == SOURCE_BANK and "retrieval" not in c.stage_scores])
            for g in groups]
    scores = similarity([g.pair.context for g, _ in todo], [[g.pool[i].text for i in idx] for g, idx in todo])
    for (g, idx), values in zip(todo, scores, strict=True):
        for i, value in zip(idx, values, strict=True):
            g.pool[i].stage_scores["retrieval"] = float(value)


def encoder_similarity(encoder: QueryPassageEncoder, context_turns: int) -> SimilarityFn:
    """The retriever's own score (query vs passage cosine) for texts it did not retrieve."""
    def similarity(contexts: list[Context], texts: list[list[str]]) -> list[np.ndarray]:
        queries = encoder.encode_queries([c.as_query_text(context_turns) for c in contexts])
        flat = [t for group in texts for t in group]
        passages = encoder.encode_passages(flat) if flat else np.empty((0, queries.shape[1]), np.float32)
        out, start = [], 0
        for i, group in enumerate(texts):
            out.append(passages[start:start + len(group)] @ queries[i])
            start += len(group)
        return out
    return similarity


@dataclass
class PoolFeaturizer:
    """A batch of contexts -> each one's group and feature rows (None: no negative); what an executor worker runs.

    A batch depends on its own contexts alone (the draws are seeded per context), so any worker given the same
    resources computes any batch the same way, and the driver only has to put the batches back in order.
    """

    builder: PoolBuilder
    annotators: Sequence[Annotator]
    retrieve: RetrieveFn | None = None
    similarity: SimilarityFn | None = None

    def __call__(self, items: list[Item]) -> list[tuple[_Group, np.ndarray] | None]:
        retrieved: dict[int, list[Candidate]] = {}
        k = self.builder.config.k_retrieved
        if self.retrieve is not None and k > 0:
            for lang in sorted({pair.language for pair, _ in items}):
                idx = [i for i, (pair, _) in enumerate(items) if pair.language == lang]
                retrieved.update(zip(idx, self.retrieve([items[i][0].context for i in idx], lang, k), strict=True))
        groups = [self.builder.group(pair, retrieved.get(i, []), generated)
                  for i, (pair, generated) in enumerate(items)]
        kept = [g for g in groups if len(g.pool) >= 2]
        if not kept:
            return [None] * len(groups)
        if self.similarity is not None:
            _fill_similarity(kept, self.similarity)
        blocks = iter(annotate_all(self.annotators, [g.pair.context for g in kept], [g.pool for g in kept]))
        return [(g, next(blocks)) if len(g.pool) >= 2 else None for g in groups]


def _with_generated(batch: list[ContextPair], generate: GenerateFn | None) -> list[Item]:
    """The batch's contexts with their generated candidates: drawn here, by the caller's generator and budget."""
    generated: dict[int, list[Candidate]] = {}
    for lang in sorted({p.language for p in batch}) if generate is not None else []:
        idx = [i for i, p in enumerate(batch) if p.language == lang]
        generated.update(zip(idx, generate([batch[i].context for i in idx], lang), strict=True))
    return [(pair, generated.get(i, [])) for i, pair in enumerate(batch)]


def build_ranking_dataset(
    pairs: Iterable[ContextPair], annotators: Sequence[Annotator], bank: Sequence[Candidate], *,
    retrieve: RetrieveFn | None = None, generate: GenerateFn | None = None, similarity: SimilarityFn | None = None,
    human_labels: HumanLabels | None = None, config: BuilderConfig | None = None,
    resources: dict[str, str] | None = None, progress: Callable[[int], None] | None = None,
    executor: Executor | None = None, worker: Callable[[PoolBuilder], WorkerFactory] | None = None,
) -> RankingDataset:
    """Candidates, labels and features for every pair; groups without a single negative are skipped.

    ``progress`` is called with the number of pairs done after each batch (encoding dominates the time).
    Pools and features are computed batch by batch on ``executor`` (default: this process) by ``worker(builder)``,
    a factory (picklable for Ray) that rebuilds the retriever, encoder and annotators in each worker; without it,
    by ``retrieve``, ``similarity`` and ``annotators`` as given, in this process. Generated candidates are drawn
    here first, by the caller's generator; the batches are put back in order whatever order they finish in.
    """
    config = config or BuilderConfig()
    pairs = list(pairs)
    builder = PoolBuilder(bank, config, human_labels, pairs)
    batches = [_with_generated(pairs[start:start + config.batch_size], generate)
               for start in range(0, len(pairs), config.batch_size)]
    executor = executor or LocalExecutor()
    if worker is not None:
        factory = worker(builder)
    elif executor.name == "local":
        factory = functools.partial(PoolFeaturizer, builder, annotators, retrieve, similarity)
    else:
        raise ValueError(f"the {executor.name} executor needs a worker factory that rebuilds the retriever, "
                         "encoder and annotators in each worker; or build with the local executor")
    done: dict[int, list[tuple[_Group, np.ndarray] | None]] = {}
    for index, built in executor.map(factory, batches):
        done[index] = built
        if progress is not None:
            progress(len(built))
    rows = [row for index in range(len(batches)) for row in done[index]]
    kept = [row for row in rows if row is not None]
    groups_out = [group for group, _ in kept]
    if not groups_out:
        raise DatasetError("no usable context: every pool had only the gold reply; give a bank or a retriever")
    if len(rows) > len(kept):
        log.warning("skipped %d contexts with no negative candidates (no bank phrases in their language?)",
                    len(rows) - len(kept))
    return RankingDataset(
        X=np.vstack([block for _, block in kept]).astype(np.float32),
        y=np.array([y for g in groups_out for y in g.labels], np.float32),
        group_sizes=np.array([len(g.pool) for g in groups_out], np.int64), feature_names=feature_names(annotators),
        context_ids=[g.pair.context_id for g in groups_out],
        conversation_ids=[g.pair.conversation_id for g in groups_out],
        splits=[split_of(g.pair.conversation_id, config.dev_fraction, config.test_fraction) for g in groups_out],
        texts=[c.text for g in groups_out for c in g.pool], origins=[o for g in groups_out for o in g.origins],
        annotators=describe(annotators), resources=dict(resources or {}),
    )


def restrict_origins(dataset: RankingDataset, keep: Collection[str], annotators: Sequence[Annotator]
                     ) -> RankingDataset:
    """The dataset with only the rows of ``keep`` origins (gold, retrieved, random, corpus, ...).

    Pool-relative columns (ranks, gaps, z-scores; each annotator's ``pool_relative``) are recomputed for
    the smaller pools, so the result equals building the smaller pools directly: one rich build can then
    answer "which negatives should the pools hold?" without re-encoding anything.
    """
    if dataset.annotators != describe(annotators):
        raise DatasetError("the annotators differ from the ones the dataset was built with; rebuild the dataset")
    col = {name: i for i, name in enumerate(dataset.feature_names)}
    derived = [(col[target], col[source], STATISTICS[stat])
               for a in annotators for target, source, stat in a.pool_relative]
    X, kept, sizes = dataset.X.copy(), [], []
    off = dataset.offsets
    for g in range(len(dataset.group_sizes)):
        rows = np.array([i for i in range(off[g], off[g + 1]) if dataset.origins[i] in keep], dtype=np.int64)
        for target, source, statistic in derived:
            X[rows, target] = statistic(X[rows, source])
        kept.append(rows)
        sizes.append(len(rows))
    index = np.concatenate(kept) if kept else np.empty(0, np.int64)
    return replace(dataset, X=X[index], y=dataset.y[index], group_sizes=np.asarray(sizes, np.int64),
                   texts=[dataset.texts[i] for i in index], origins=[dataset.origins[i] for i in index])


def missingness_gaps(dataset: RankingDataset, threshold: float = 0.5) -> dict[str, tuple[float, float]]:
    """Features whose NaN rate differs a lot between positive and negative rows: a leakage warning sign."""
    pos = dataset.y > 0
    gaps = {}
    for j, name in enumerate(dataset.feature_names):
        nan = np.isnan(dataset.X[:, j])
        rates = (float(nan[pos].mean()) if pos.any() else 0.0, float(nan[~pos].mean()) if (~pos).any() else 0.0)
        if abs(rates[0] - rates[1]) > threshold:
            gaps[name] = rates
    return gaps
