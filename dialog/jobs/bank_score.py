"""`repliq bank score`: unconditional LM log-probabilities for every approved phrase, stored in the bank.

Resumable: each batch is committed, and a rerun scores only phrases whose version has no score for this LM.
With ``--executor ray`` the batches run on a pool of Ray actors, each holding the LM once; the driver never
loads it and commits every batch as it comes back, so a killed Ray run resumes the same way.
"""

from __future__ import annotations

from core.config import Settings
from core.executor import make_executor
from core.job_configs import BankScoreConfig
from core.lm.bank_scores import BankScoreReport, score_bank
from core.lm.wrapper import DecoderLM, LMOptions, LMSpec
from dialog.jobs.common import open_bank


def bank_score(settings: Settings, config: BankScoreConfig, progress: bool = True) -> BankScoreReport:
    if config.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {config.batch_size}")
    options = LMOptions(dtype=config.dtype or settings.lm.dtype, threads=config.threads or None)
    name = config.lm or settings.lm.name
    with make_executor(config.executor) as executor:
        local = executor.name == "local"
        lm = DecoderLM.from_cache(name, settings.models_dir, options) if local else LMSpec.of(
            name, settings.models_dir, options)
        with open_bank(settings) as bank:
            return score_bank(bank, lm, batch_size=config.batch_size, progress=progress, executor=executor)
