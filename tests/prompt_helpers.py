"""Toy bilingual dialogues and a demonstration pool built from them, for the prompt-retrieval tests.

Import as ``from prompt_helpers import dialogues, make_pool`` (``tests/`` is on ``sys.path``).
"""

from __future__ import annotations

from core.corpora import Dialogue, DialogueTurn
from retriever.prompt_pool import PromptPool, build_pool, pool_entries

EN = ["Hello there, how are you today?", "I like green tea and long walks.", "What are you doing this weekend?",
      "Nothing much, maybe reading."]
RU = ["Привет! Как дела?", "Сегодня отличная погода, пойдём гулять.", "Я люблю читать книги вечером.", "А я нет."]


def dialogues(n: int = 120) -> list[Dialogue]:
    out = []
    for i in range(n):
        texts, language = (RU, "ru") if i % 2 else (EN, "en")
        turns = tuple(DialogueTurn("AB"[j % 2], f"{t} {i}") for j, t in enumerate(texts))
        out.append(Dialogue(f"toy:{i}", language, turns))
    return out


def make_pool(n: int = 120) -> PromptPool:
    items = dialogues(n)
    return build_pool([e for lang in ("en", "ru") for e in
                       pool_entries(f"toy-{lang}", [d for d in items if d.language == lang], 1000)])
