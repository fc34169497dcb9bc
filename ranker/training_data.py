"""The ranking data a blender was trained on, saved beside it (``<blender dir>-data``).

RL tuning reads it as π_ref's training distribution, evaluation reads its contexts, and
`repliq train blender --reuse-data` refits on it without the encoding-bound rebuild.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from core.atomic import atomic_directory, atomic_write_text
from core.corpora import ContextPair
from core.types import Context, Turn
from ranker.blender import IDF_NAME
from ranker.dataset import RankingDataset
from ranker.idf import IdfTable

DATA_SUFFIX = "-data"


def data_dir_of(blender_dir: Path) -> Path:
    """Where the training data of the blender in ``blender_dir`` lives."""
    return blender_dir.with_name(blender_dir.name + DATA_SUFFIX)


def save_training_data(directory: Path, dataset: RankingDataset, pairs: Sequence[ContextPair],
                       idf: IdfTable | None = None) -> None:
    """The ranking data, its contexts and IDF table, kept beside the blender: RL tuning, evaluation and
    `train blender --reuse-data` read them."""
    wanted = set(dataset.context_ids)
    rows = [{"context_id": p.context_id, "language": p.language, "response": p.response,
             "turns": [{"speaker": t.speaker, "text": t.text} for t in p.context.turns]}
            for p in pairs if p.context_id in wanted]
    with atomic_directory(directory) as scratch:
        dataset.save(scratch / "dataset.npz")
        if idf is not None:
            idf.save(scratch / IDF_NAME)
        atomic_write_text(scratch / "contexts.jsonl",
                          "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def load_training_data(directory: Path) -> tuple[RankingDataset, dict[str, Context], dict[str, str]]:
    """The saved ranking data, contexts by id and each context's language."""
    dataset = RankingDataset.load(directory / "dataset.npz")
    contexts: dict[str, Context] = {}
    languages: dict[str, str] = {}
    for line in (directory / "contexts.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        contexts[row["context_id"]] = Context(tuple(Turn(t["speaker"], t["text"]) for t in row["turns"]))
        languages[row["context_id"]] = row["language"]
    return dataset, contexts, languages


def concat_datasets(parts: list[RankingDataset]) -> RankingDataset:
    """One dataset of several built apart (chunks of a resumable build, or pools with and without generation)."""
    first = parts[0]
    return replace(first, X=np.vstack([p.X for p in parts]), y=np.concatenate([p.y for p in parts]),
                   group_sizes=np.concatenate([p.group_sizes for p in parts]),
                   context_ids=[c for p in parts for c in p.context_ids],
                   conversation_ids=[c for p in parts for c in p.conversation_ids],
                   splits=[s for p in parts for s in p.splits], texts=[t for p in parts for t in p.texts],
                   origins=[o for p in parts for o in p.origins])
