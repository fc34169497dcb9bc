"""Text normalization and language detection shared by the bank, the retriever and the pipeline."""

from __future__ import annotations

import re
import unicodedata

SUPPORTED_LANGUAGES = ("ru", "en", "uk")

_WHITESPACE = re.compile(r"\s+")
_CYRILLIC = re.compile("[\u0400-\u04ff]")
_LATIN = re.compile("[A-Za-z]")  # what ``ch.isascii() and ch.isalpha()`` accepts
_UKRAINIAN_ONLY = re.compile("[іїєґІЇЄҐ]")
_RUSSIAN_ONLY = re.compile("[ыэъёЫЭЪЁ]")


def normalize_text(text: str) -> str:
    """NFC and collapsed whitespace: two phrases that look the same must compare equal."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


def detect_language(text: str, default: str = "en") -> str:
    """Script-based guess between ru, uk and en.

    A script count is enough for the three languages the product serves and costs microseconds on
    the request path; a statistical detector would add a dependency for no gain here. The counts are
    regex scans rather than a per-character Python loop (it ran for every candidate of every pool);
    ``tests/unit/test_feature_speed.py`` holds them to the loop's answers.
    """
    if text.isascii():
        return "en" if _LATIN.search(text) else default
    cyrillic, latin = len(_CYRILLIC.findall(text)), len(_LATIN.findall(text))
    if cyrillic == 0 and latin == 0:
        return default
    if cyrillic > latin:
        return "uk" if len(_UKRAINIAN_ONLY.findall(text)) > len(_RUSSIAN_ONLY.findall(text)) else "ru"
    return "en"


def word_tokens(text: str) -> list[str]:
    """Lower-cased word tokens for lexical features (BM25, overlap, IDF)."""
    return re.findall(r"\w+", text.lower())
