"""Search by meaning: the query is encoded and looked up in the bank index (approved phrases only).

The index is brought up to date incrementally before a search when the bank has moved on (only the
changed phrases are re-encoded), so editors search what is approved now, not at the last build. The
encoder loads on the first search: browsing by text never pays for it.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from core.bank.store import PhraseBank

if TYPE_CHECKING:
    from core.config import Settings
    from retriever.bank_index import BankIndex
    from retriever.encoder import Encoder

MAX_RESULTS = 200


class MeaningSearch:
    def __init__(self, settings: Settings, bank: PhraseBank) -> None:
        self.settings = settings
        self.bank = bank
        self._encoder: Encoder | None = None
        self._index: BankIndex | None = None
        self._lock = threading.Lock()

    @property
    def encoder(self) -> Encoder:
        from retriever.encoder import Encoder

        with self._lock:
            if self._encoder is None:
                self._encoder = Encoder.from_config(self.settings)
            return self._encoder

    def index(self) -> BankIndex:
        """The index at the bank's current revision (caught up incrementally when the bank changed)."""
        from retriever.bank_index import load_index, update_index

        encoder = self.encoder
        with self._lock:
            if self._index is None or self._index.manifest.bank_revision != self.bank.revision:
                update_index(self.bank, encoder, self.settings)
                self._index = load_index(self.settings, encoder, self.bank)
            return self._index

    def search(self, query: str, language: str = "", k: int = MAX_RESULTS) -> list[tuple[int, float]]:
        """Approved phrase ids closest to ``query`` (all languages unless one is given), best first."""
        index = self.index()
        vector = self.encoder.encode_queries([query])
        languages = [language] if language else list(index.languages)
        hits = [hit for lang in languages for hit in index.search(vector, lang, k)[0]]
        return sorted(hits, key=lambda hit: -hit[1])[:k]
