"""Dialogue prompt formats for conditional scoring and generation, one per language.

The format is a plain transcript that a base (non-chat) model continues naturally::

    Собеседник: Привет! Как дела?        User: Hi! How are you?
    Ты: Отлично, спасибо.                Bot: Great, thanks.
    Собеседник: Куда пойдём?             User: Where shall we go?
    Ты:                                  Bot:

* One turn per line; the end of a turn is a newline, so generation stops at the first ``\\n``.
* Labels alternate backwards from the last turn, which is always the interlocutor's: speaker labels
  in requests are free-form, so the position in the dialogue is the only reliable role signal.
* The prompt ends with the bot label and a colon but *no* space; the reply follows as
  ``" " + reply``. Subword tokenizers attach a space to the word after it, so this gives the
  reply the tokens the model saw in training; ending the prompt with a space would put a lone
  space token in front of every reply.
* Newlines inside a turn are collapsed to spaces, otherwise they would read as a turn boundary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from core.text import normalize_text
from core.types import Context

END_OF_TURN = "\n"
# Between demonstrations (each ends with END_OF_TURN): a blank line, the way transcripts are separated.
DEMO_SEPARATOR = "\n"


@dataclass(frozen=True)
class PromptFormat:
    language: str
    user_label: str
    bot_label: str

    def dialogue_prompt(self, context: Context, max_turns: int = 0) -> str:
        """The transcript up to and including the bot label that invites the reply."""
        turns = context.window(max_turns).turns
        lines: list[str] = []
        for back, turn in enumerate(reversed(turns)):
            label = self.user_label if back % 2 == 0 else self.bot_label
            lines.append(f"{label}: {normalize_text(turn.text)}{END_OF_TURN}")
        return "".join(reversed(lines)) + f"{self.bot_label}:"

    @staticmethod
    def reply_continuation(reply: str) -> str:
        """What follows the prompt when a reply is scored or generated."""
        return " " + normalize_text(reply)

    def demonstration_text(self, context: Context, reply: str) -> str:
        """A demonstration as the model reads it: an excerpt in the same transcript format, ending a turn."""
        return self.dialogue_prompt(context) + self.reply_continuation(reply) + END_OF_TURN

    def prompt_with_demonstrations(self, demonstrations: Sequence[tuple[Context, str]], context: Context,
                                   max_turns: int = 0) -> str:
        """Demonstrations in the given order (the most useful last, nearest the dialogue), then the dialogue."""
        shown = "".join(self.demonstration_text(c, r) + DEMO_SEPARATOR for c, r in demonstrations)
        return shown + self.dialogue_prompt(context, max_turns)


FORMATS: dict[str, PromptFormat] = {
    "ru": PromptFormat("ru", "Собеседник", "Ты"),
    "en": PromptFormat("en", "User", "Bot"),
    "uk": PromptFormat("uk", "Співрозмовник", "Ти"),
}


def prompt_format(language: str) -> PromptFormat:
    """Unknown languages fall back to English labels rather than failing a request."""
    return FORMATS.get(language, FORMATS["en"])


@dataclass(frozen=True)
class FittedPrompt:
    text: str
    demonstrations: int  # how many of the given demonstrations are in ``text``
    turns: int  # how many context turns are in ``text``
    over_budget: bool  # still over the budget with no demonstration and one turn: the caller cuts whole tokens


def fit_prompt(fmt: PromptFormat, demonstrations: Sequence[tuple[Context, str]], context: Context, max_turns: int,
               max_tokens: int, count_tokens: Callable[[str], int]) -> FittedPrompt:
    """The longest prompt within ``max_tokens`` that is made of whole turns.

    Demonstrations go first, the first given (least useful) first, then the oldest dialogue turns; the
    turn being answered always stays. A turn is never cut in the middle, so the model never sees half a
    word or half a sentence presented as a whole turn.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    demos = list(demonstrations)
    window = context.window(max_turns)
    while True:
        text = fmt.prompt_with_demonstrations(demos, window)
        if count_tokens(text) <= max_tokens:
            return FittedPrompt(text, len(demos), len(window.turns), False)
        if demos:
            demos.pop(0)
        elif len(window.turns) > 1:
            window = Context(window.turns[1:])
        else:
            return FittedPrompt(text, 0, len(window.turns), True)
