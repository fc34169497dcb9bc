"""`repliq bank score`: unconditional LM log-probabilities for every approved phrase, stored in the bank.

Resumable: each batch is committed, and a rerun scores only phrases whose version has no score for this LM.
"""

from __future__ import annotations

from core.config import Settings
from core.job_configs import BankScoreConfig
from core.lm.bank_scores import BankScoreReport, score_bank
from core.lm.wrapper import DecoderLM, LMOptions
from dialog.jobs.common import open_bank


def bank_score(settings: Settings, config: BankScoreConfig, progress: bool = True) -> BankScoreReport:
    if config.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {config.batch_size}")
    options = LMOptions(dtype=config.dtype or settings.lm.dtype, threads=config.threads or None)
    lm = DecoderLM.from_cache(config.lm or settings.lm.name, settings.models_dir, options)
    with open_bank(settings) as bank:
        return score_bank(bank, lm, batch_size=config.batch_size, progress=progress)
