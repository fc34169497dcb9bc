"""Scoring demonstrations with the frozen LM: the supervision of UPRISE-style prompt retrieval.

For each training example (a context and the reply a human gave) L candidate demonstrations are drawn
from the pool (same language, never from the example's own conversation, which would show the answer),
and each is scored by the LM's mean log-probability of the gold reply given that demonstration and then
the context. The zero-shot score (no demonstration) is kept beside them as the reference.

The LM is the slow part (a 270M model on a shared CPU), so scores are cached by content: the key hashes
the LM id, the exact prompt and the reply, so a rerun after a kill, or with more examples or a larger L,
scores only what is new, and a change of LM, pool text or prompt format can never reuse a stale number.
The cache file is rewritten atomically after every chunk.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from core.atomic import atomic_write_json
from core.corpora import ContextPair
from core.executor import BatchFn, Executor, LocalExecutor, WorkerFactory
from core.lm.prompts import fit_prompt, prompt_format
from core.lm.scoring import LMScore, score_continuations
from core.lm.wrapper import AnyLM, DecoderLM, LMOptions, LMSpec, NullLM
from core.types import Context
from retriever.prompt_pool import Demonstration, PromptPool

SCORES_DIR = "prompt-scores"  # under <home>/artifacts: one cache file per LM id


@dataclass
class ScoringConfig:
    # L candidate demonstrations per example. UPRISE used 50; a shared 2-core CPU scores well under one
    # prompt a second under load, so 6 (docs/benchmarks.md).
    candidates: int = 6
    context_turns: int = 2
    # Whole prompt (demonstrations + dialogue) budget in tokens; fitted by whole turns.
    max_prompt_tokens: int = 320
    batch_size: int = 8
    chunk: int = 16  # sequences scored between cache saves
    seed: int = 0

    def validate(self) -> None:
        for name in ("candidates", "context_turns", "max_prompt_tokens", "batch_size", "chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"prompt scoring {name} must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class ExampleScores:
    """One example's candidates (pool ids) and the gold reply's mean log-probability after each."""

    example_id: str
    language: str
    candidates: tuple[int, ...]
    scores: tuple[float, ...]
    zero_shot: float

    @property
    def best(self) -> int:
        return self.candidates[max(range(len(self.scores)), key=lambda i: self.scores[i])]


class ScoreCache:
    """``key -> [sum_logprob, mean_logprob, n_tokens]`` in one JSON file, saved atomically."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.rows: dict[str, list[float]] = {}
        if self.path.is_file():
            try:
                raw = json.loads(self.path.read_text(encoding="utf-8"))
                self.rows = {str(k): [float(x) for x in v] for k, v in raw["rows"].items()}
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ValueError(f"{self.path} is not a prompt-score cache ({exc}); delete it to rescore") from exc

    def save(self) -> None:
        atomic_write_json(self.path, {"format": 1, "rows": self.rows})


def cache_path(artifacts_dir: Path, lm_id: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in lm_id)
    return Path(artifacts_dir) / SCORES_DIR / f"{safe}.json"


def load_lm(models_dir: Path, name: str, threads: int) -> DecoderLM:
    """The scoring LM at full precision (fp32: scores are compared across prompts and runs)."""
    if not name or name == "none":
        raise ValueError("prompt scoring needs a decoder LM; give --lm gemma-3-270m or set [lm] name")
    return DecoderLM.from_cache(name, models_dir, LMOptions(dtype="fp32", threads=threads))


def cache_key(lm_id: str, prompt: str, continuation: str) -> str:
    return hashlib.sha256("\x00".join((lm_id, prompt, continuation)).encode("utf-8")).hexdigest()[:32]


def candidate_ids(pool: PromptPool, example: ContextPair, count: int, seed: int) -> list[int]:
    """``count`` pool ids of the example's language, none from its own conversation; stable per example."""
    usable = [d.id for d in pool.demonstrations
              if d.language == example.language and d.conversation_id != example.conversation_id]
    rng = random.Random(f"{seed}:{example.context_id}")
    return rng.sample(usable, min(count, len(usable)))


def build_prompt(lm: DecoderLM, demos: Sequence[Demonstration], context: Context, language: str,
                 config: ScoringConfig) -> str:
    """The scored prompt: ``demos`` (most useful last) then the context, fitted by whole turns to the budget."""
    fitted = fit_prompt(prompt_format(language), [(d.as_context(), d.reply) for d in demos], context,
                        config.context_turns, config.max_prompt_tokens, lambda text: len(lm.encode(text)))
    return fitted.text


def _continuations(lm: DecoderLM, items: list[tuple[str, str]], batch_size: int,
                   max_prompt_tokens: int) -> list[LMScore]:
    return score_continuations(lm, [p for p, _ in items], [c for _, c in items], batch_size=batch_size,
                               max_prompt_tokens=max_prompt_tokens)


@dataclass(frozen=True)
class ContinuationWorker:
    """Worker factory for ``core.executor``: each worker (a Ray actor) loads the scoring LM once."""

    spec: LMSpec
    batch_size: int
    max_prompt_tokens: int

    def __call__(self) -> BatchFn:
        return functools.partial(_continuations, self.spec.load(), batch_size=self.batch_size,
                                 max_prompt_tokens=self.max_prompt_tokens)


def score_prompts(lm: AnyLM, prompts: Sequence[str], replies: Sequence[str], languages: Sequence[str],
                  cache: ScoreCache | None, config: ScoringConfig, desc: str = "scoring prompts",
                  progress: bool = True, executor: Executor | None = None) -> list[float]:
    """Mean log-probability of each reply after its prompt, cached by content; NaN without an LM.

    With a Ray ``executor`` the chunks are scored on its actors and saved to the cache as they come back.
    """
    from tqdm import tqdm

    if isinstance(lm, NullLM):
        lm.require("prompt scoring")
    assert isinstance(lm, DecoderLM)
    continuations = [prompt_format(lang).reply_continuation(r) for r, lang in zip(replies, languages, strict=True)]
    keys = [cache_key(lm.lm_id, p, c) for p, c in zip(prompts, continuations, strict=True)]
    rows = cache.rows if cache is not None else {}
    todo = list({key: i for i, key in enumerate(keys) if key not in rows}.values())  # once per distinct key
    parts = [todo[start:start + config.chunk] for start in range(0, len(todo), config.chunk)]
    executor = executor or LocalExecutor()
    factory: WorkerFactory = (
        (lambda: functools.partial(_continuations, lm, batch_size=config.batch_size,
                                   max_prompt_tokens=config.max_prompt_tokens))
        if executor.name == "local" else ContinuationWorker(lm.spec(), config.batch_size, config.max_prompt_tokens))
    with tqdm(total=len(todo), desc=desc, unit="seq", disable=not progress) as bar:
        for index, scores in executor.map(factory, [[(prompts[i], continuations[i]) for i in part] for part in parts]):
            part = parts[index]
            for i, score in zip(part, scores, strict=True):
                rows[keys[i]] = [score.sum_logprob, score.mean_logprob, float(score.n_tokens)]
            if cache is not None:
                cache.save()
            bar.update(len(part))
    return [rows[key][1] for key in keys]


def score_examples(lm: DecoderLM, pool: PromptPool, examples: Sequence[ContextPair], config: ScoringConfig,
                   cache: ScoreCache | None, progress: bool = True,
                   executor: Executor | None = None) -> list[ExampleScores]:
    """Each example's L candidates scored one at a time (UPRISE's one-demonstration scoring), plus zero-shot."""
    config.validate()
    prompts: list[str] = []
    replies: list[str] = []
    languages: list[str] = []
    plan: list[tuple[ContextPair, list[int]]] = []
    for example in examples:
        ids = candidate_ids(pool, example, config.candidates, config.seed)
        if not ids:
            continue
        plan.append((example, ids))
        for demos in ([], *([pool.by_id(i)] for i in ids)):
            prompts.append(build_prompt(lm, demos, example.context, example.language, config))
            replies.append(example.response)
            languages.append(example.language)
    scores = score_prompts(lm, prompts, replies, languages, cache, config, "scoring demonstrations", progress,
                           executor)
    out: list[ExampleScores] = []
    offset = 0
    for example, ids in plan:
        zero, row = scores[offset], scores[offset + 1: offset + 1 + len(ids)]
        offset += 1 + len(ids)
        if all(math.isfinite(s) for s in (zero, *row)):
            out.append(ExampleScores(example.context_id, example.language, tuple(ids), tuple(row), zero))
    return out
