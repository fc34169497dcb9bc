"""What several jobs and commands share: opening the workspace's phrase bank with an error that says what to run."""

from __future__ import annotations

from core.bank.store import PhraseBank
from core.config import Settings


def open_bank(settings: Settings, create: bool = False) -> PhraseBank:
    """The workspace bank; refused with the command that creates it unless ``create``."""
    if not create and not settings.bank_path.exists():
        raise FileNotFoundError(f"no phrase bank at {settings.bank_path}; run `repliq bank init --default` first")
    settings.home.mkdir(parents=True, exist_ok=True)
    return PhraseBank(settings.bank_path)
