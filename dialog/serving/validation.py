"""Request validation: every rule a Respond request must pass before any work is done."""

from __future__ import annotations

from core.config import ServerConfig
from core.text import SUPPORTED_LANGUAGES, normalize_text
from core.types import Context, Turn
from repliq.v1 import chat_pb2


class InvalidRequest(ValueError):
    """Maps to gRPC INVALID_ARGUMENT; the message is shown to the caller as is. ``loggable`` is the same
    without anything the caller typed (the server log never holds user text)."""

    def __init__(self, message: str, loggable: str | None = None) -> None:
        super().__init__(message)
        self.loggable = message if loggable is None else loggable


def validate_request(request: chat_pb2.RespondRequest, limits: ServerConfig) -> Context:
    if not request.turns:
        raise InvalidRequest("turns is empty: send at least one turn with the user's text")
    if len(request.turns) > limits.max_turns:
        raise InvalidRequest(f"too many turns ({len(request.turns)}); the limit is {limits.max_turns}")
    turns = []
    for i, turn in enumerate(request.turns):
        text = normalize_text(turn.text)
        if not text:
            raise InvalidRequest(f"turns[{i}].text is empty")
        if len(text) > limits.max_turn_chars:
            raise InvalidRequest(
                f"turns[{i}].text has {len(text)} characters; the limit is {limits.max_turn_chars}"
            )
        turns.append(Turn(speaker=turn.speaker.strip() or "user", text=text))
    if request.top_k < 0 or request.top_k > limits.max_top_k:
        raise InvalidRequest(f"top_k must be between 0 (server default) and {limits.max_top_k}")
    if request.language and request.language not in SUPPORTED_LANGUAGES:
        advice = f"use one of {', '.join(SUPPORTED_LANGUAGES)} or leave it empty to detect"
        raise InvalidRequest(f"language {request.language!r} is not supported; {advice}",
                             f"language hint ({len(request.language)} characters) is not supported; {advice}")
    return Context(tuple(turns))
