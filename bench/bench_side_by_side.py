"""What users see: the previous fresh-install default (plain e5-small cosine, bank-first) beside the shipped
chain (query adapter + blender + hygiene), answering the same held-out contexts from the same bank.

Ranking metrics are a proxy; this prints the answers themselves, so a reader judges them. Contexts come
from the held-out splits only (Topical-Chat dev+test, Russian dev), drawn with a fixed seed.

    python -m bench.bench_side_by_side --home WORKSPACE --data ../shared/data [--per-language 20]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.report import markdown_table, write_results
from core.config import Settings, load_settings
from core.types import Context
from dialog.serving.assembly import build_pipeline
from dialog.serving.pipeline import PipelineRequest
from ranker.evaluation import russian_dataset, topicalchat_dataset


def contexts(data: Path, per_language: int) -> list[tuple[str, Context, str]]:
    english = topicalchat_dataset(data / "topicalchat_valid", n_contexts=per_language, bank_size=0)
    russian = russian_dataset(data / "ru" / "koziev_anekdot_dialogues.tar.xz", n_contexts=per_language, bank_size=0)
    return [(dataset.language, ex.context, ex.gold) for dataset in (english, russian) for ex in dataset.examples]


def answers(settings: Settings, items: list[tuple[str, Context, str]]) -> tuple[list[str], dict[str, str]]:
    assembled = build_pipeline(settings)
    try:
        out = []
        for language, context, _gold in items:
            request = PipelineRequest(context, top_k=1, deadline=time.monotonic() + 60, language_hint=language)
            result = assembled.pipeline.respond(request)
            out.append(result.candidates[0].text if result.candidates else "(no answer)")
        return out, dict(assembled.pipeline.versions)
    finally:
        assembled.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="workspace with the default bank and its index")
    parser.add_argument("--data", type=Path, required=True, help="folder with topicalchat_valid/ and ru/")
    parser.add_argument("--per-language", type=int, default=20)
    args = parser.parse_args(argv)
    settings = load_settings(environ={"REPLIQ_HOME": str(args.home)})
    before = replace(settings, encoder=replace(settings.encoder, adapter="none"),
                     ranker=replace(settings.ranker, blender="none"))
    items = contexts(args.data, args.per_language)
    old, old_versions = answers(before, items)
    new, new_versions = answers(settings, items)
    rows: list[list[Any]] = [[lang, context.turns[-1].text[:160], a[:120], b[:120]]
                             for (lang, context, _), a, b in zip(items, old, new, strict=True)]
    changed = sum(a != b for a, b in zip(old, new, strict=True))
    section = (f"## Side by side: previous default vs shipped chain — `bench/bench_side_by_side.py`\n\n"
               f"{len(items)} held-out contexts ({args.per_language} per language), the last user turn shown; "
               f"the shipped chain changed {changed} of {len(items)} answers. Before: ranker "
               f"`{old_versions.get('ranker')}`, adapter `{old_versions.get('adapter')}`; after: ranker "
               f"`{new_versions.get('ranker')}`, adapter `{new_versions.get('adapter')}`.\n\n"
               + markdown_table(["lang", "user", "previous default", "shipped chain"], rows))
    write_results("side_by_side", {"items": [{"language": lang, "turns": [t.text for t in ctx.turns], "gold": gold,
                                              "before": a, "after": b}
                                             for (lang, ctx, gold), a, b in zip(items, old, new, strict=True)],
                                   "versions": {"before": old_versions, "after": new_versions}}, section)


if __name__ == "__main__":
    main()
