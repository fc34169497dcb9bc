"""The sensibleness judge's scores kept by content, so judging many policies pays once per (context, reply).

A cross-encoder pass costs ~90 ms per pair on one CPU thread and the policies of an RL sweep mostly choose
the same replies, so every pair is scored once and kept in a JSONL file keyed by a hash of the judge's
identity, the context as the judge reads it and the reply. The file is rewritten atomically every
``save_every_s`` seconds and at the end, so a killed run keeps what it scored. A value read back is the
value first computed (JSON keeps floats exactly), so a rerun reports the very same numbers.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import atomic_write_text, sha256_json
from core.types import Context

log = logging.getLogger("repliq.rl")
ScoreFn = Callable[[Sequence[Context], Sequence[str]], np.ndarray]


def judge_identity(judge: Any) -> str:
    """What the cache keys on: the judge artifact's identity (a retrained judge never reads old scores)."""
    manifest = getattr(judge, "manifest", None) or {}
    identity = manifest.get("identity")
    if not identity:
        raise ValueError("the sensibleness judge has no manifest identity; load it with rl.judge.load_judge")
    return str(identity)


class CachedJudge:
    """``(contexts, replies) -> P(sensible)``, each distinct pair scored once by ``score`` and kept in ``path``."""

    def __init__(self, score: ScoreFn, identity: str, context_text: Callable[[Context], str],
                 path: Path | None = None, chunk: int = 256, save_every_s: float = 30.0) -> None:
        self.score, self.identity, self.context_text = score, identity, context_text
        self.path, self.chunk, self.save_every_s = path, chunk, save_every_s
        self.rows: dict[str, float] = {}
        self.scored = 0  # pairs this process scored (the rest came from the file)
        if path is not None and Path(path).exists():
            for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
                try:
                    row = json.loads(line)
                    self.rows[str(row["key"])] = float(row["p"])
                except (ValueError, KeyError, TypeError) as exc:
                    raise ValueError(f"{path}:{number}: not a judge-cache row ({exc}); delete the file to rescore"
                                     ) from exc

    @classmethod
    def of(cls, judge: Any, path: Path | None) -> CachedJudge:
        """A loaded ``rl.judge.SensiblenessJudge`` behind the cache."""
        return cls(judge.score, judge_identity(judge), judge.context_text, path)

    def key(self, context: Context, reply: str) -> str:
        return sha256_json([self.identity, self.context_text(context), reply])

    def save(self) -> None:
        if self.path is not None:
            atomic_write_text(Path(self.path), "".join(json.dumps({"key": k, "p": p}) + "\n"
                                                        for k, p in self.rows.items()))

    def __call__(self, contexts: Sequence[Context], replies: Sequence[str]) -> np.ndarray:
        if len(contexts) != len(replies):
            raise ValueError(f"got {len(contexts)} contexts for {len(replies)} replies")
        keys = [self.key(c, r) for c, r in zip(contexts, replies, strict=True)]
        first = {key: i for i, key in reversed(list(enumerate(keys)))}
        todo = [first[key] for key in dict.fromkeys(keys) if key not in self.rows]
        saved_at, unsaved = time.monotonic(), False
        try:
            for start in range(0, len(todo), self.chunk):
                part = todo[start:start + self.chunk]
                values = np.asarray(self.score([contexts[i] for i in part], [replies[i] for i in part]), np.float64)
                if values.shape != (len(part),) or not np.isfinite(values).all():
                    raise ValueError(f"the judge returned {values.shape} values (or NaN) for {len(part)} pairs")
                self.rows.update((keys[i], float(v)) for i, v in zip(part, values, strict=True))
                self.scored, unsaved = self.scored + len(part), True
                log.info("sensibleness judge: %d of %d new pairs scored", start + len(part), len(todo))
                if time.monotonic() - saved_at >= self.save_every_s:
                    self.save()
                    saved_at, unsaved = time.monotonic(), False
        finally:
            if unsaved:
                self.save()
        return np.array([self.rows[key] for key in keys], dtype=np.float64)

