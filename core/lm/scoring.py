"""Log-probabilities of texts and of replies given a dialogue, batched.

Conventions:

* Every sequence starts with the model's BOS token, so the first word is scored too.
* Unconditional score of a text: ``log p(text | BOS)`` of the whitespace-normalized text (the same
  normalization the conditional side applies).
* Conditional score of a reply: ``log p(" " + reply | BOS + dialogue prompt)`` over the reply tokens
  only (see ``core.lm.prompts`` for why the leading space). The prompt is cut from the left to
  ``max_context_tokens`` so one long turn cannot blow up memory; the reply is never cut.
* ``pmi_sum = conditional.sum - unconditional.sum``: how much the dialogue raised the reply's
  probability; generic replies ("ok", "I don't know") score near zero, replies specific to the
  dialogue score high. ``pmi_mean`` uses per-token means instead and so does not favour long
  replies; it differs from ``pmi_sum / n`` because the two sides may have different token counts
  (only the first word's leading space differs).
* With a ``NullLM`` every number is NaN and ``n_tokens`` is 0 (see ``core.lm.wrapper.NullLM``).

Batching sorts sequences by length, pads on the right with an attention mask and explicit
position ids, and projects onto the vocabulary only at scored positions; results equal
one-at-a-time scoring up to float rounding (tested at 1e-4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from core.lm.prompts import prompt_format
from core.lm.wrapper import AnyLM, DecoderLM
from core.text import detect_language, normalize_text
from core.types import Context

# Upper bound on logits held at once (float32 elements): 64M is 256 MB.
LOGITS_BUDGET = 64_000_000


@dataclass(frozen=True)
class LMScore:
    sum_logprob: float
    mean_logprob: float
    n_tokens: int


@dataclass(frozen=True)
class ReplyScore:
    conditional: LMScore
    unconditional: LMScore

    @property
    def pmi_sum(self) -> float:
        return self.conditional.sum_logprob - self.unconditional.sum_logprob

    @property
    def pmi_mean(self) -> float:
        return self.conditional.mean_logprob - self.unconditional.mean_logprob


NAN_SCORE = LMScore(math.nan, math.nan, 0)


@dataclass(frozen=True)
class _Item:
    ids: list[int]
    start: int  # index of the first scored token in ids


def _batches(items: list[_Item], order: list[int], batch_size: int, vocab: int) -> list[list[int]]:
    """Length-sorted batches whose padded scored positions fit the logits budget."""
    max_positions = max(1, LOGITS_BUDGET // max(vocab, 1))
    batches: list[list[int]] = []
    current: list[int] = []
    widest = 0
    for index in order:
        width = len(items[index].ids)
        if current and (len(current) >= batch_size or (len(current) + 1) * max(widest, width) > max_positions):
            batches.append(current)
            current, widest = [], 0
        current.append(index)
        widest = max(widest, width)
    if current:
        batches.append(current)
    return batches


def _score_batch(lm: DecoderLM, batch: list[_Item]) -> list[LMScore]:
    import torch

    width = max(len(item.ids) for item in batch)
    input_ids = torch.full((len(batch), width), lm.pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    keep = torch.zeros((len(batch), width), dtype=torch.bool)
    for row, item in enumerate(batch):
        input_ids[row, : len(item.ids)] = torch.tensor(item.ids)
        attention[row, : len(item.ids)] = 1
        keep[row, item.start - 1 : len(item.ids) - 1] = True  # position p predicts token p + 1
    targets = torch.zeros_like(input_ids)
    targets[:, :-1] = input_ids[:, 1:]
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    device = lm.device
    with torch.inference_mode():
        kwargs = {"logits_to_keep": keep.to(device)} if lm.accepts_logits_to_keep else {}
        logits = lm.model(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                          position_ids=positions.to(device), use_cache=False, **kwargs).logits
        if not lm.accepts_logits_to_keep:
            logits = logits[keep.to(device)]
        logits = logits.reshape(-1, logits.shape[-1]).float()
        chosen = logits.gather(-1, targets[keep].to(device).unsqueeze(-1)).squeeze(-1)
        token_logprobs = (chosen - torch.logsumexp(logits, dim=-1)).double().cpu()
    scores: list[LMScore] = []
    offset = 0
    for item in batch:
        n = len(item.ids) - item.start
        total = float(token_logprobs[offset : offset + n].sum())
        offset += n
        scores.append(LMScore(total, total / n, n))
    return scores


def _score_items(lm: DecoderLM, items: list[_Item], batch_size: int) -> list[LMScore]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = sorted(range(len(items)), key=lambda i: len(items[i].ids))
    results: list[LMScore | None] = [None] * len(items)
    for batch in _batches(items, order, batch_size, lm.vocab_size):
        for index, score in zip(batch, _score_batch(lm, [items[i] for i in batch]), strict=True):
            results[index] = score
    return [score for score in results if score is not None]


def score_token_ids(lm: DecoderLM, sequences: Sequence[Sequence[int]], batch_size: int = 16) -> list[LMScore]:
    """Each token sequence scored after BOS alone, exactly these tokens (no re-tokenization of a text);
    an empty sequence gets ``NAN_SCORE``. For replies the generator already holds as token ids."""
    items = [_Item([lm.bos_id, *seq], 1) for seq in sequences if len(seq)]
    scored = iter(_score_items(lm, items, batch_size)) if items else iter(())
    return [next(scored) if len(seq) else NAN_SCORE for seq in sequences]


def _check_texts(texts: Sequence[str], what: str) -> None:
    empty = [i for i, text in enumerate(texts) if not text.strip()]
    if empty:
        raise ValueError(f"cannot score empty {what} (positions {empty[:10]}); drop them before scoring")


def score_texts(lm: AnyLM, texts: Sequence[str], batch_size: int = 16) -> list[LMScore]:
    """Unconditional ``log p(text)`` for each text."""
    _check_texts(texts, "texts")
    if not isinstance(lm, DecoderLM):
        return [NAN_SCORE] * len(texts)
    items = [_Item([lm.bos_id, *lm.encode(normalize_text(text))], 1) for text in texts]
    return _score_items(lm, items, batch_size)


def score_pairs(
    lm: AnyLM,
    contexts: Sequence[Context],
    replies: Sequence[str],
    languages: Sequence[str],
    unconditional: Sequence[LMScore] | None = None,
    batch_size: int = 16,
    context_turns: int = 3,
    max_context_tokens: int = 256,
) -> list[ReplyScore]:
    """Conditional and unconditional scores of ``replies[i]`` after ``contexts[i]``.

    Pass ``unconditional`` (e.g. from ``load_bank_scores``) to skip recomputing them.
    """
    if not len(contexts) == len(replies) == len(languages):
        raise ValueError(
            f"contexts, replies and languages must have equal lengths "
            f"({len(contexts)}, {len(replies)}, {len(languages)})"
        )
    if unconditional is not None and len(unconditional) != len(replies):
        raise ValueError(f"got {len(unconditional)} unconditional scores for {len(replies)} replies")
    _check_texts(replies, "replies")
    if not isinstance(lm, DecoderLM):
        return [ReplyScore(NAN_SCORE, NAN_SCORE) for _ in replies]
    prompt_ids: dict[tuple[Context, str], list[int]] = {}
    items: list[_Item] = []
    for context, reply, language in zip(contexts, replies, languages, strict=True):
        fmt = prompt_format(language)
        key = (context, language)
        if key not in prompt_ids:
            prompt_ids[key] = lm.encode(fmt.dialogue_prompt(context, context_turns))[-max_context_tokens:]
        prefix = [lm.bos_id, *prompt_ids[key]]
        items.append(_Item([*prefix, *lm.encode(fmt.reply_continuation(reply))], len(prefix)))
    if unconditional is None:
        items.extend(_Item([lm.bos_id, *lm.encode(normalize_text(reply))], 1) for reply in replies)
    scores = _score_items(lm, items, batch_size)
    given = list(unconditional) if unconditional is not None else scores[len(replies):]
    return [ReplyScore(scores[i], given[i]) for i in range(len(replies))]


def score_continuations(lm: AnyLM, prompts: Sequence[str], continuations: Sequence[str], batch_size: int = 16,
                        max_prompt_tokens: int | None = None) -> list[LMScore]:
    """``log p(continuation | BOS + prompt)`` over the continuation tokens, for prompts the caller built
    (demonstrations before the dialogue, ``core.lm.prompts``). A prompt over ``max_prompt_tokens`` keeps
    its last whole tokens; fit it by whole turns first (``core.lm.prompts.fit_prompt``)."""
    if len(prompts) != len(continuations):
        raise ValueError(f"got {len(prompts)} prompts for {len(continuations)} continuations")
    _check_texts(continuations, "continuations")
    if not isinstance(lm, DecoderLM):
        return [NAN_SCORE] * len(prompts)
    encoded: dict[str, list[int]] = {}
    items: list[_Item] = []
    for prompt, continuation in zip(prompts, continuations, strict=True):
        if prompt not in encoded:
            ids = lm.encode(prompt)
            encoded[prompt] = ids[-max_prompt_tokens:] if max_prompt_tokens else ids
        prefix = [lm.bos_id, *encoded[prompt]]
        items.append(_Item([*prefix, *lm.encode(continuation)], len(prefix)))
    return _score_items(lm, items, batch_size)


def score_replies(
    lm: AnyLM, context: Context, replies: Sequence[str], language: str,
    unconditional: Sequence[LMScore] | None = None, batch_size: int = 16, context_turns: int = 3,
) -> list[ReplyScore]:
    """The request-time case: many candidate replies to one dialogue."""
    n = len(replies)
    return score_pairs(lm, [context] * n, replies, [language] * n, unconditional, batch_size, context_turns)


class ContextScorer:
    """The blender's LM scorer (``ranker.annotators.ResponseLMScorer``) on top of ``score_replies``.

    Keys are per-token means, so long and short replies compare fairly: ``cond_logprob``,
    ``uncond_logprob`` and ``pmi`` (their difference). The language comes from the last turn unless
    fixed here.
    """

    def __init__(self, lm: AnyLM, batch_size: int = 16, context_turns: int = 3, language: str | None = None):
        self.lm, self.batch_size, self.context_turns, self.language = lm, batch_size, context_turns, language

    def score(self, context: Context, responses: Sequence[str]) -> list[dict[str, float]]:
        language = self.language or detect_language(context.last_text)
        scores = score_replies(self.lm, context, responses, language, batch_size=self.batch_size,
                               context_turns=self.context_turns)
        return [{"cond_logprob": s.conditional.mean_logprob, "uncond_logprob": s.unconditional.mean_logprob,
                 "pmi": s.pmi_mean} for s in scores]
