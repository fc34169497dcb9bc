"""Text normalization and language detection shared by the bank, the retriever and the pipeline."""

from __future__ import annotations

import re
import unicodedata

SUPPORTED_LANGUAGES = ("ru", "en", "uk")

_WHITESPACE = re.compile(r"\s+")
_UKRAINIAN_ONLY = set("іїєґІЇЄҐ")
_RUSSIAN_ONLY = set("ыэъёЫЭЪЁ")


def normalize_text(text: str) -> str:
    """NFC and collapsed whitespace: two phrases that look the same must compare equal."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


def detect_language(text: str, default: str = "en") -> str:
    """Script-based guess between ru, uk and en.

    A script count is enough for the three languages the product serves and costs microseconds on
    the request path; a statistical detector would add a dependency for no gain here.
    """
    cyrillic = latin = 0
    ukrainian = russian = 0
    for ch in text:
        if "\u0400" <= ch <= "\u04ff":
            cyrillic += 1
            ukrainian += ch in _UKRAINIAN_ONLY
            russian += ch in _RUSSIAN_ONLY
        elif ch.isascii() and ch.isalpha():
            latin += 1
    if cyrillic == 0 and latin == 0:
        return default
    if cyrillic > latin:
        return "uk" if ukrainian > russian else "ru"
    return "en"


def word_tokens(text: str) -> list[str]:
    """Lower-cased word tokens for lexical features (BM25, overlap, IDF)."""
    return re.findall(r"\w+", text.lower())
