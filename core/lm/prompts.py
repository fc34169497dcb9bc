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

from dataclasses import dataclass

from core.text import normalize_text
from core.types import Context

END_OF_TURN = "\n"


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


FORMATS: dict[str, PromptFormat] = {
    "ru": PromptFormat("ru", "Собеседник", "Ты"),
    "en": PromptFormat("en", "User", "Bot"),
    "uk": PromptFormat("uk", "Співрозмовник", "Ти"),
}


def prompt_format(language: str) -> PromptFormat:
    """Unknown languages fall back to English labels rather than failing a request."""
    return FORMATS.get(language, FORMATS["en"])
