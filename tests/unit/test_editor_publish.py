"""Hot publish over real gRPC (tiny random encoder): authentication, an atomic index swap under load, a
corrupt snapshot refused while the old index keeps serving, and the editor's admin-only publish button."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.bank.store import PhraseBank
from dialog.serving.admin import TOKEN_FILE, TokenError, ensure_token, read_token
from dialog.serving.admin_client import AdminClient, PublishError
from dialog.serving.client import ChatClient

from editor_helpers import PASSWORD, csrf_of, tiny_settings
from tiny_models import build_tiny_encoder

SEED_PHRASES = (("What a lovely weather today!", "en"), ("It will rain tomorrow, take an umbrella.", "en"),
                ("I like coffee in the morning.", "en"), ("Какая сегодня погода?", "ru"))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, PhraseBank, int]]:
    from dialog.serving.admin import admin_service
    from dialog.serving.assembly import build_pipeline
    from dialog.serving.server import start_server
    from retriever.bank_index import build_index
    from retriever.encoder import Encoder

    root = tmp_path_factory.mktemp("admin")
    settings = tiny_settings(root, build_tiny_encoder(root / "tiny-encoder"))
    with PhraseBank(settings.bank_path) as bank:
        for text, language in SEED_PHRASES:
            bank.add(text, language)
        build_index(bank, Encoder.from_config(settings), settings)
    assembled = build_pipeline(settings)
    running = start_server(assembled.pipeline, settings.server, 3, admin=admin_service(settings, assembled))
    editor_bank = PhraseBank(settings.bank_path)  # the editor's own connection to the same bank
    yield settings, editor_bank, running.port
    running.stop(grace=1.0)
    assembled.close()
    editor_bank.close()


def _served(chat: ChatClient, text: str = "Any news about the weather?") -> tuple[set[str], object]:
    reply = chat.respond([("user", text)], top_k=50, language="en")
    return {c.text for c in reply.candidates}, reply.versions


def test_token_file_is_private_and_callers_without_it_are_unauthenticated(live, tmp_path: Path) -> None:
    settings, _, port = live
    path = settings.home / TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_token(settings.home) == read_token(path)  # made once, then reused
    for token in ("", "x" * 43, read_token(path) + "x"):
        client = AdminClient("127.0.0.1", port, token, timeout_s=10)
        with pytest.raises(PublishError) as refused:
            client.publish("mallory")
        client.close()
        assert refused.value.code == "UNAUTHENTICATED" and TOKEN_FILE in str(refused.value)
    loose = tmp_path / TOKEN_FILE
    loose.write_text("y" * 40)
    os.chmod(loose, 0o644)
    with pytest.raises(TokenError, match="chmod 600"):
        read_token(loose)
    os.chmod(loose, 0o600)
    loose.write_text("short")
    with pytest.raises(TokenError, match="too short"):
        read_token(loose)


def test_publish_swaps_the_index_under_load_without_a_failed_request(live) -> None:
    settings, bank, port = live
    chat = ChatClient("127.0.0.1", port, timeout_s=10)
    before_texts, before = _served(chat)
    new = bank.add("Sunglasses weather all week, enjoy the sun!", "en", who="reviewer")
    assert new.text not in before_texts  # approved in the bank, not yet live
    failures: list[BaseException] = []
    done = [0]
    stop = threading.Event()

    def load() -> None:
        worker = ChatClient("127.0.0.1", port, timeout_s=10)
        while not stop.is_set():
            try:
                worker.respond([("user", "Will it rain?")], top_k=5, language="en")
                done[0] += 1
            except Exception as exc:
                failures.append(exc)
        worker.close()

    threads = [threading.Thread(target=load) for _ in range(3)]
    for thread in threads:
        thread.start()
    admin = AdminClient.for_workspace("127.0.0.1", port, settings.home)
    published = admin.publish("admin")
    again = admin.publish("admin")
    stop.set()
    for thread in threads:
        thread.join(10)
    admin.close()
    after_texts, after = _served(chat)
    chat.close()
    assert not failures and done[0] > 0
    assert published.changed and published.added == 1 and published.phrases == len(SEED_PHRASES) + 1
    assert (published.before.bank, published.before.index) == (before.bank, before.index)
    assert (after.bank, after.index) == (published.after.bank, published.after.index) != (before.bank, before.index)
    assert int(after.bank) == bank.revision and new.text in after_texts
    assert not again.changed and again.after.index == after.index  # nothing new: nothing swapped


def test_a_corrupt_snapshot_is_refused_and_the_old_index_keeps_serving(live) -> None:
    from retriever.bank_index import index_root, update_index
    from retriever.encoder import Encoder

    settings, bank, port = live
    chat = ChatClient("127.0.0.1", port, timeout_s=10)
    texts, versions = _served(chat)
    added = bank.add("Snow is coming, wear a warm hat.", "en", who="reviewer")
    encoder = Encoder.from_config(settings)
    report = update_index(bank, encoder, settings)  # what the editor's search by meaning does
    shard = index_root(settings, encoder) / report.manifest.snapshot / "shards" / "en"
    victim = next(p for p in sorted(shard.iterdir()) if p.suffix == ".faiss")
    victim.write_bytes(victim.read_bytes()[:-8] + b"garbage!")
    admin = AdminClient.for_workspace("127.0.0.1", port, settings.home)
    with pytest.raises(PublishError) as refused:
        admin.publish("admin")
    admin.close()
    assert refused.value.code == "FAILED_PRECONDITION"
    assert "previous one keeps serving" in str(refused.value) and "repliq index build" in str(refused.value)
    still_texts, still = _served(chat)
    assert (still.bank, still.index) == (versions.bank, versions.index)
    assert still_texts == texts and added.text not in still_texts
    repaired = update_index(bank, encoder, settings)  # what `repliq index build` does with a broken snapshot
    assert repaired.full_rebuild and "checksum" in repaired.reason
    admin = AdminClient.for_workspace("127.0.0.1", port, settings.home)
    assert admin.publish("admin").changed
    admin.close()
    assert added.text in _served(chat)[0]
    chat.close()


def test_a_publish_too_big_for_the_serving_process_is_refused(live, monkeypatch: pytest.MonkeyPatch) -> None:
    from dialog.serving import admin as admin_module

    settings, bank, port = live
    monkeypatch.setattr(admin_module, "MAX_PUBLISH_ENCODE", 1)
    for text in ("Fog in the morning, sun by noon.", "A storm is coming tonight."):
        bank.add(text, "en", who="reviewer")
    client = AdminClient.for_workspace("127.0.0.1", port, settings.home)
    with pytest.raises(PublishError) as refused:
        client.publish("admin")
    assert refused.value.code == "FAILED_PRECONDITION" and "repliq index build` first" in str(refused.value)
    monkeypatch.setattr(admin_module, "MAX_PUBLISH_ENCODE", 5000)
    assert client.publish("admin").added == 2
    client.close()

def test_the_editor_publish_button_is_admin_only_needs_csrf_and_goes_live(live) -> None:
    from dataclasses import replace

    from fastapi.testclient import TestClient

    from dialog.editor.app import create_app
    from dialog.editor.users import Users

    settings, bank, port = live
    users = Users(bank)
    for role in ("editor", "admin"):
        if role not in {u.name for u in users.list()}:
            users.add(role, PASSWORD, role)
    app = create_app(bank, replace(settings, server=replace(settings.server, port=port)), secure_cookies=False)

    def logged_in(name: str) -> tuple[TestClient, str]:
        client = TestClient(app)
        token = csrf_of(client.get("/login").text)
        client.post("/login", data={"name": name, "password": PASSWORD, "csrf_token": token, "next": "/phrases"})
        return client, csrf_of(client.get("/phrases").text)

    editor, editor_csrf = logged_in("editor")
    assert editor.get("/publish").status_code == 403 and "/publish" not in editor.get("/phrases").text
    assert editor.post("/publish", data={"csrf_token": editor_csrf}).status_code == 403
    admin, csrf = logged_in("admin")
    assert admin.post("/publish", data={}).status_code == 403  # no CSRF token
    new = bank.add("Pack a raincoat, the forecast turned.", "en", who="reviewer")
    page = admin.post("/publish", data={"csrf_token": csrf})
    assert page.status_code == 200 and "Published" in page.text, page.text[-1500:]
    chat = ChatClient("127.0.0.1", port, timeout_s=10)
    texts, versions = _served(chat)
    chat.close()
    assert new.text in texts and f'id="after-bank">{versions.bank}<' in page.text
    assert any(row[:3] == ("admin", row[1], "publish") for row in users.audit())
    offline = create_app(bank, replace(settings, server=replace(settings.server, port=1)), secure_cookies=False)
    client = TestClient(offline)
    token = csrf_of(client.get("/login").text)
    client.post("/login", data={"name": "admin", "password": PASSWORD, "csrf_token": token, "next": "/phrases"})
    refused = client.post("/publish", data={"csrf_token": csrf_of(client.get("/publish").text)})
    assert refused.status_code == 502 and "UNAVAILABLE" in refused.text and "repliq serve" in refused.text
