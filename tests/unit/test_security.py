"""Privacy of logs and files: no user text in the server log, and workspace databases and keys owner-only."""

from __future__ import annotations

import io
import logging
import os
import stat
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from core.bank.store import PhraseBank
from core.config import ServerConfig
from core.types import Candidate, Context
from dialog.labeling import LabelStore
from dialog.serving.client import ChatClient
from dialog.serving.logs import JsonFormatter
from dialog.serving.pipeline import Pipeline
from dialog.serving.server import start_server

SECRET = "Zebra-7391 мой пароль"  # what a user might type; it must not reach the server log


class Echo:
    name = "bank"

    def candidates(self, context: Context, language: str, k: int, deadline: float) -> list[Candidate]:
        return [Candidate(text="a reply", source="bank", language=language, phrase_id=1, score=1.0)]


def test_user_text_never_reaches_the_server_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every Respond outcome (ok, each kind of rejection) at INFO and DEBUG: the log holds ids and codes only."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("repliq")
    monkeypatch.setattr(logger, "handlers", [handler])
    level = logger.level
    logger.setLevel(logging.DEBUG)  # setLevel, not an attribute: it also clears the loggers' level caches
    monkeypatch.setattr(logging.getLogger("repliq.server"), "disabled", False)
    running = start_server(Pipeline([Echo()], pool_k=5), replace(ServerConfig(), port=0, max_turn_chars=100), 3)
    client = ChatClient("127.0.0.1", running.port, timeout_s=5.0)
    try:
        client.respond([("user", SECRET)], session_id="s-1")
        client.respond([(SECRET, "hello"), ("user", SECRET)], explain=True, generate=True)
        rejected = [dict(turns=[("user", SECRET)], language=SECRET),  # the language hint echoes user input
                    dict(turns=[("user", SECRET * 20)]), dict(turns=[("user", SECRET), ("user", " ")]),
                    dict(turns=[("user", SECRET)], top_k=-1)]
        for request in rejected:
            turns = request.pop("turns")
            with pytest.raises(grpc.RpcError) as info:
                client.respond(turns, **request)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        client.close()
        running.stop(grace=0.5)
        logger.setLevel(level)
    log = stream.getvalue()
    assert log.count('"rejected"') == 4 and log.count('"ok"') == 2, log  # the log was captured
    for fragment in (SECRET, "Zebra", "пароль", "7391"):
        assert fragment not in log, f"user text {fragment!r} in the server log:\n{log}"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_workspace_databases_are_created_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)  # the usual umask, which would make new files world-readable
    try:
        with PhraseBank(tmp_path / "bank.sqlite") as bank:
            bank.add("Hello.", "en")
        with LabelStore(tmp_path / "labels.sqlite") as labels:
            labels.count()
        from dialog.serving.decision_log import DecisionLog

        log = DecisionLog(tmp_path / "decisions")
        log.close()
    finally:
        os.umask(old)
    private = [tmp_path / "bank.sqlite", tmp_path / "labels.sqlite",
               *[p for p in (tmp_path / "bank.sqlite-wal", tmp_path / "labels.sqlite-wal") if p.exists()],
               *[p for p in (tmp_path / "decisions").iterdir() if p.is_file()]]
    assert any("salt" in p.name for p in private), "the decision log's secret salt was not created"
    assert {p.name: oct(_mode(p)) for p in private} == {p.name: oct(0o600) for p in private}
    with PhraseBank(tmp_path / "bank.sqlite"):  # an existing database keeps the owner's choice
        pass
    assert _mode(tmp_path / "bank.sqlite") == 0o600
