"""Decoder language model: loading, prompt formats, scoring and bank score jobs."""

from core.lm.scoring import ContextScorer, LMScore, ReplyScore, score_pairs, score_replies, score_texts
from core.lm.wrapper import AnyLM, DecoderLM, LMOptions, LMUnavailable, NullLM

__all__ = [
    "AnyLM",
    "ContextScorer",
    "DecoderLM",
    "LMOptions",
    "LMScore",
    "LMUnavailable",
    "NullLM",
    "ReplyScore",
    "score_pairs",
    "score_replies",
    "score_texts",
]
