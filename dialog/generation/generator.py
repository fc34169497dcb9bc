"""Sampled replies from the decoder LM, as a candidate source next to the phrase bank.

The request deadline is a hard wall: sampling runs on a worker thread in small batches, each batch
publishes its replies as soon as it finishes, and the caller takes whatever is there at the deadline
without waiting a moment longer. A clock check inside the sampling loop makes the worker stop at
the next token after the deadline, so abandoned work does not keep the CPU busy.

With a prompt retriever (UPRISE, ``retriever.prompt_retriever``) the prompt starts with K retrieved
demonstrations, the best one nearest the dialogue, fitted to the token budget by whole turns
(``core.lm.prompts.fit_prompt``). When none is usable (no retriever, an empty pool for the language)
the prompt is zero-shot and each candidate's ``stage_scores`` say so (``explain``).

Each kept reply carries the LM evidence the blender uses (``ranker.features.generation``):
``gen_logprob``, its mean log-probability given the prompt (free: sampling computed it), and
``gen_pmi``, that minus the reply's mean log-probability on its own (BOS + the same tokens,
``core.lm.scoring.score_token_ids``). The unconditional side is one padded forward pass over the kept
replies only, so PMI never needs a second model or a scorer at serving. It costs ~0.5 s for two short
replies on one CPU thread (Gemma's 262k-word output layer), so it runs only with ``[generation] pmi``, which
serving sets when the blender reads it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from core.config import GenerationConfig
from core.lm.prompts import END_OF_TURN, fit_prompt, prompt_format
from core.lm.scoring import score_token_ids
from core.lm.wrapper import AnyLM, DecoderLM, NullLM
from core.types import SOURCE_GENERATED, Candidate, Context
from dialog.generation.filters import ReplyFilter
from retriever.prompt_pool import Demonstration

log = logging.getLogger(__name__)

# Time kept back from the deadline for filtering and building candidates after the worker is left.
RETURN_MARGIN_S = 0.01

__all__ = ["DemonstrationSource", "GenerationConfig", "LMGenerator", "PromptPlan", "Sample"]


class DemonstrationSource(Protocol):
    """Retrieves demonstrations for a dialogue, best first (``retriever.prompt_retriever.PromptRetriever``)."""

    def retrieve(self, context: Context, language: str, k: int) -> list[Demonstration]: ...


@dataclass(frozen=True)
class PromptPlan:
    ids: list[int]  # BOS + prompt tokens
    demonstrations: int  # how many are in the prompt after fitting
    retrieved: int  # how many the retriever returned
    fallback: str  # why the prompt is zero-shot although demonstrations were asked for ("" if not)


def context_length(lm: DecoderLM) -> int | None:
    """The LM's maximum sequence length, when its config states one."""
    value = getattr(lm.model.config.get_text_config(), "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None


@dataclass(frozen=True)
class Sample:
    text: str
    mean_logprob: float
    finished: bool
    tokens: tuple[int, ...] = ()  # the scored reply tokens (end of turn included), for the unconditional pass


class _StopCriteria:
    """Per-row stop at end of turn (a token containing a newline), and for all rows at the deadline."""

    def __init__(self, lm: DecoderLM, deadline: float, cancel: threading.Event) -> None:
        self.lm, self.deadline, self.cancel = lm, deadline, cancel
        self._newline: dict[int, bool] = {}

    def is_newline(self, token: int) -> bool:
        if token not in self._newline:
            self._newline[token] = END_OF_TURN in self.lm.tokenizer.decode([token])
        return self._newline[token]

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        if self.cancel.is_set() or time.monotonic() >= self.deadline:
            return torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        last = input_ids[:, -1].tolist()
        return torch.tensor([self.is_newline(t) for t in last], dtype=torch.bool, device=input_ids.device)


class LMGenerator:
    name = SOURCE_GENERATED

    def __init__(self, lm: AnyLM, config: GenerationConfig | None = None,
                 reply_filter: ReplyFilter | None = None, prompts: DemonstrationSource | None = None,
                 prompts_ref: str = "") -> None:
        if isinstance(lm, NullLM):
            lm.require("reply generation")
        assert isinstance(lm, DecoderLM)
        self.lm = lm
        self.config = config or GenerationConfig()
        self.config.validate()
        self.filter = reply_filter or ReplyFilter()
        self.prompts, self.prompts_ref = prompts, prompts_ref

    @property
    def version(self) -> str:
        return f"{self.lm.lm_id}+{self.prompts_ref}" if self.prompts is not None and self.prompts_ref else self.lm.lm_id

    def prompt_budget(self) -> int:
        """Prompt tokens allowed: the configured budget, within the LM's length minus the reply's room."""
        limit = context_length(self.lm)
        budget = self.config.max_context_tokens
        return max(1, min(budget, limit - self.config.max_new_tokens - 1)) if limit else budget

    def plan(self, context: Context, language: str) -> PromptPlan:
        """The prompt: retrieved demonstrations (when asked for and found), then the dialogue."""
        k = self.config.demonstrations
        demos: list[Demonstration] = []
        fallback = ""
        if k > 0 and self.prompts is None:
            fallback = "no prompt retriever"
        elif k > 0:
            assert self.prompts is not None
            try:
                demos = self.prompts.retrieve(context, language, k)
                fallback = "" if demos else f"no demonstrations for language {language!r}"
            except Exception as exc:  # the request still gets a zero-shot reply and its bank candidates
                log.exception("prompt retrieval failed")
                fallback = f"prompt retrieval failed ({type(exc).__name__})"
        room = max(1, self.prompt_budget() - 1)  # one token goes to BOS
        fitted = fit_prompt(prompt_format(language), [(d.as_context(), d.reply) for d in reversed(demos)], context,
                            self.config.context_turns, room, lambda t: len(self.lm.encode(t)))
        if demos and not fitted.demonstrations:
            fallback = "demonstrations did not fit the prompt budget"
        # Over budget only when the one turn being answered is longer than the budget: keep its last tokens.
        ids = [self.lm.bos_id, *self.lm.encode(fitted.text)[-room:]]
        return PromptPlan(ids, fitted.demonstrations, len(demos), fallback)

    def candidates(self, context: Context, language: str, k: int, deadline: float) -> list[Candidate]:
        if k < 1 or time.monotonic() >= deadline - RETURN_MARGIN_S:
            return []
        plan = self.plan(context, language)
        if plan.fallback:
            log.info("generation prompt is zero-shot: %s", plan.fallback)
        samples = self.sample_prompt(plan.ids, deadline)
        verdict = self.filter.apply([s.text for s in samples], context, language)
        explain = {"demonstrations": float(plan.demonstrations), "zero_shot_fallback": float(bool(plan.fallback))}
        found = [
            Candidate(text=samples[i].text, source=SOURCE_GENERATED, language=language, phrase_id=None,
                      score=samples[i].mean_logprob, stage_scores={"gen_logprob": samples[i].mean_logprob, **explain})
            for i in verdict.kept
        ]
        if self.config.pmi:  # only when a reader asked for it: the extra pass costs the request's budget
            for candidate, value in zip(found, self.pmi([samples[i] for i in verdict.kept]), strict=True):
                candidate.stage_scores["gen_pmi"] = value
        if verdict.dropped:
            log.debug("dropped generated replies: %s", {samples[i].text: why for i, why in verdict.dropped.items()})
        return sorted(found, key=lambda c: c.score, reverse=True)[:k]

    def pmi(self, samples: list[Sample]) -> list[float]:
        """Each sample's conditional minus unconditional mean log-prob (NaN when that pass fails)."""
        try:
            uncond = [u.mean_logprob for u in score_token_ids(self.lm, [s.tokens for s in samples])]
        except Exception:  # the replies are still served, with a NaN feature the blender knows as missing
            log.exception("unconditional scoring of generated replies failed")
            return [math.nan] * len(samples)
        return [s.mean_logprob - u if math.isfinite(s.mean_logprob) else math.nan
                for s, u in zip(samples, uncond, strict=True)]

    def sample(self, context: Context, language: str, deadline: float) -> list[Sample]:
        """Usable samples finished before the deadline (unfinished ones only with ``keep_truncated``)."""
        return self.sample_prompt(self.plan(context, language).ids, deadline)

    def sample_prompt(self, prompt_ids: list[int], deadline: float) -> list[Sample]:
        results: list[Sample] = []
        lock, cancel = threading.Lock(), threading.Event()
        # Not a daemon: interpreter exit waits the one token step it takes the worker to see ``cancel``,
        # instead of tearing torch down under a running thread (which aborts the process).
        worker = threading.Thread(target=self._work, args=(prompt_ids, deadline, cancel, results, lock),
                                  name="lm-generate")
        worker.start()
        try:
            worker.join(timeout=max(0.0, deadline - RETURN_MARGIN_S - time.monotonic()))
        finally:
            cancel.set()
        with lock:
            done = list(results)
        return [s for s in done if s.text and (s.finished or self.config.keep_truncated)]

    def _work(self, prompt_ids: list[int], deadline: float, cancel: threading.Event,
              results: list[Sample], lock: threading.Lock) -> None:
        try:
            stop = _StopCriteria(self.lm, deadline, cancel)
            remaining = self.config.n_candidates
            while remaining > 0 and not cancel.is_set() and time.monotonic() < deadline:
                batch = min(remaining, self.config.samples_per_call)
                samples = self._sample_batch(prompt_ids, batch, stop)
                with lock:
                    if not cancel.is_set():
                        results.extend(samples)
                remaining -= batch
        except Exception:  # the request still gets its bank candidates
            log.exception("reply generation failed")

    def _sample_batch(self, prompt_ids: list[int], batch: int, stop: _StopCriteria) -> list[Sample]:
        import torch
        from transformers import StoppingCriteriaList

        cfg, lm = self.config, self.lm
        input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=lm.device)
        out = lm.model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=True,
            temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, max_new_tokens=cfg.max_new_tokens,
            num_return_sequences=batch, pad_token_id=lm.pad_id, eos_token_id=sorted(lm.eos_ids),
            stopping_criteria=StoppingCriteriaList([stop]), return_dict_in_generate=True, output_logits=True,
        )
        new_tokens = out.sequences[:, len(prompt_ids):].tolist()
        logprobs = torch.stack(out.logits, dim=1).float().log_softmax(-1) if out.logits else None
        samples = []
        for row, tokens in enumerate(new_tokens):
            end, finished = len(tokens), False
            for i, token in enumerate(tokens):
                if token in lm.eos_ids or stop.is_newline(token):
                    end, finished = i + 1, True
                    break
            text = lm.decode(tokens[:end]).split(END_OF_TURN, 1)[0].strip()
            if end == 0 or logprobs is None:
                continue
            # Mean over the reply tokens including the end-of-turn token: a confident stop is a good sign.
            chosen = logprobs[row, torch.arange(end), torch.tensor(tokens[:end])]
            mean = float(chosen.mean())
            samples.append(Sample(text, mean if math.isfinite(mean) else -math.inf, finished, tuple(tokens[:end])))
        return samples
