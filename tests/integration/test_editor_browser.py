"""The editor in headless Chromium (Debian's package, driven by Playwright through ``executable_path``):
log in, search, add and edit a phrase, see its lint warning, move it through review, check the bank.

The app runs under uvicorn on a random loopback port against a temp workspace with a tiny random
encoder, so search by meaning and "Try it" run the real code paths in seconds; beside it runs the gRPC
server (with its Admin service) that the admin's Publish button makes serve the approved phrases. Set
``REPLIQ_SCREENSHOTS=DIR`` to keep a screenshot of each page (docs/editor.md uses them).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from core.bank.store import PhraseBank
from dialog.editor.app import create_app
from dialog.editor.users import Users

from editor_helpers import PASSWORD, tiny_settings
from tiny_models import build_tiny_encoder

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium package is not installed "
                                "(apt-get install chromium)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, PhraseBank]]:
    import uvicorn

    from dialog.serving.admin import admin_service
    from dialog.serving.assembly import build_pipeline
    from dialog.serving.server import start_server
    from retriever.bank_index import build_index
    from retriever.encoder import Encoder

    root = tmp_path_factory.mktemp("editor")
    settings = tiny_settings(root, build_tiny_encoder(root / "tiny-encoder"))
    bank = PhraseBank(settings.bank_path)
    users = Users(bank)
    for name in ("editor", "reviewer", "admin"):
        users.add(name, PASSWORD, name)
    for text, language in (("What a lovely weather today!", "en"), ("It will rain tomorrow, take an umbrella.", "en"),
                           ("Какая сегодня погода?", "ru"), ("Люблю кофе по утрам.", "ru"),
                           ("What a lovely weather today!!", "en"), ("Hello there *waves*", "en")):
        bank.add(text, language, tags=["weather"] if "weather" in text or "погода" in text else [])
    build_index(bank, Encoder.from_config(settings), settings)
    # The live bot: the gRPC server with its Admin service, which the editor's Publish button calls.
    assembled = build_pipeline(settings)
    grpc_server = start_server(assembled.pipeline, settings.server, 3, admin=admin_service(settings, assembled))
    settings = replace(settings, server=replace(settings.server, port=grpc_server.port))
    port = _free_port()
    app = create_app(bank, settings, secure_cookies=False)
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the editor did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", bank
    uv.should_exit = True
    thread.join(10)
    grpc_server.stop(grace=1.0)
    assembled.close()
    bank.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield launched
        launched.close()


def _shot(page: object, name: str) -> None:
    directory = os.environ.get("REPLIQ_SCREENSHOTS")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(directory) / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


def _login(browser: object, base: str, name: str) -> object:
    page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()  # type: ignore[attr-defined]
    page.goto(f"{base}/review")
    assert "/login?next=/review" in page.url  # logged out: redirected, and sent back after logging in
    _shot(page, "login")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/review")
    return page


def test_edit_and_review_a_phrase_in_the_browser(server: tuple[str, PhraseBank], browser: object) -> None:
    base, bank = server
    page = _login(browser, base, "editor")
    page.goto(f"{base}/phrases")
    page.fill("input[name=q]", "weather")
    page.click("form[role=search] button[type=submit]")
    assert page.inner_text("#count") == "2 matching" and "What a lovely weather today!" in page.content()
    page.fill("input[name=q]", "")
    page.fill("input[name=meaning]", "rainy weather")
    page.click("form[role=search] button[type=submit]")
    assert page.inner_text("#count") == "6 matching" and "cosine" in page.inner_text("table")
    _shot(page, "phrases")

    page.click("text=+ New phrase")
    page.fill("textarea[name=text]", "*улыбается* Завтра обещают солнце!")
    page.fill("input[name=language]", "ru")
    page.fill("input[name=tags]", "weather, forecast")
    page.click("#edit button[type=submit], form button[type=submit] >> text=Save draft")
    page.wait_for_url("**/phrases/*?saved=1")
    phrase_id = int(page.url.split("/phrases/")[1].split("?")[0])
    assert page.inner_text("#status") == "draft"
    assert "narration" in page.inner_text(".lint-narration")  # the inline lint warning
    _shot(page, "phrase-lint")
    page.fill("textarea[name=text]", "Завтра обещают солнце!")
    page.fill("input[name=why]", "no stage directions")
    page.click("#edit button[type=submit]")
    page.wait_for_url("**?saved=1")
    assert page.locator(".lint-narration").count() == 0
    assert "no stage directions" in page.inner_text("#history")
    page.click("#review button[value=submit]")
    page.wait_for_url(f"**/phrases/{phrase_id}")
    assert page.inner_text("#status") == "in_review" and page.locator("#review button[value=approve]").count() == 0
    _shot(page, "phrase")
    page.context.close()

    page = _login(browser, base, "reviewer")
    assert "Завтра обещают солнце!" in page.inner_text("#queue")
    _shot(page, "review")
    page.click(f"#queue a[href='/phrases/{phrase_id}'] >> nth=0")
    page.fill("#review textarea[name=comment]", "good, specific")
    page.click("#review button[value=approve]")
    page.wait_for_url(f"**/phrases/{phrase_id}")
    assert page.inner_text("#status") == "approved"
    assert "approve: good, specific" in page.inner_text("#history")

    draft = bank.add("Завтра будет дождь, возьми зонт.", "ru", status="in_review", who="editor")
    page.goto(f"{base}/try")
    page.fill("textarea[name=dialogue]", "Какая завтра погода?")
    page.click("form.card button[type=submit]")
    assert "Завтра обещают солнце!" in page.inner_text("#try-live")  # approved: served live now
    assert draft.text not in page.inner_text("#try-live") and draft.text in page.inner_text("#try-draft")
    assert "retrieval=" in page.inner_text("#try-draft")  # per-stage scores from the explain path
    _shot(page, "try")
    page.goto(f"{base}/lint")
    page.click("text=Re-run lint")
    page.wait_for_url(f"{base}/lint")
    table = page.inner_text("#warnings")
    assert "narration" in table and "near-duplicate" in table and "Hello there *waves*" in table
    _shot(page, "lint")
    page.context.close()

    phrase = bank.get(phrase_id)
    assert (phrase.text, phrase.language, phrase.status, phrase.tags) == (
        "Завтра обещают солнце!", "ru", "approved", ("weather", "forecast"))
    assert bank.get(draft.id).status == "in_review" and draft.id not in {p.id for p in bank.phrases(status="approved")}
    trail = [(h.who, h.after["status"], h.why) for h in bank.history(phrase_id)]
    assert trail == [("editor", "draft", ""), ("editor", "draft", "no stage directions"),
                     ("editor", "in_review", "submit"), ("reviewer", "approved", "approve: good, specific")]
    assert phrase_id in {p.id for p in bank.phrases(status="approved")}


def test_admin_sees_users_and_a_viewer_role_cannot_be_escalated_by_forms(server: tuple[str, PhraseBank],
                                                                        browser: object) -> None:
    base, _ = server
    page = _login(browser, base, "admin")
    page.goto(f"{base}/users")
    assert "reviewer" in page.inner_text("#users")
    _shot(page, "users")
    response = page.request.post(f"{base}/users", form={"action": "add", "name": "mallory", "password": PASSWORD,
                                                        "role": "admin"})
    assert response.status == 403  # no CSRF token: refused even for an admin's own session
    page.context.close()


def test_admin_publishes_and_the_live_bot_answers_with_the_phrase_under_load(server: tuple[str, PhraseBank],
                                                                            browser: object) -> None:
    from dialog.serving.client import ChatClient

    base, bank = server
    target = bank.find_text("Завтра обещают солнце!", "ru")
    if target is None or target.status != "approved":  # run alone (-k): approve it the command-line way
        target = bank.add("Завтра обещают солнце!", "ru", who="reviewer")
    page = _login(browser, base, "admin")
    page.goto(f"{base}/publish")
    grpc_port = int(page.inner_text("#publish code").rsplit(":", 1)[1])
    chat = ChatClient("127.0.0.1", grpc_port, timeout_s=10)
    # The tiny encoder carries no meaning, so "matching" is "among the Russian candidates" (all of them fit
    # in top_k); a context that repeats the phrase would be dropped as an echo by the hygiene filter.
    context = [("user", "Какая завтра погода?")]
    before = chat.respond(context, top_k=20, language="ru")
    assert target.id not in {c.phrase_id for c in before.candidates}  # approved, not yet live
    sent, failures, stop = [0], [], threading.Event()

    def load() -> None:  # the load generator: Respond in a loop, every failure counted
        client = ChatClient("127.0.0.1", grpc_port, timeout_s=10)
        while not stop.is_set():
            try:
                client.respond([("user", "Какая завтра погода?")], language="ru")
                sent[0] += 1
            except Exception as exc:
                failures.append(exc)
        client.close()

    workers = [threading.Thread(target=load) for _ in range(2)]
    for worker in workers:
        worker.start()
    time.sleep(0.3)
    page.click("#publish button[type=submit]")
    page.wait_for_selector("#publish-result")
    after = chat.respond(context, top_k=20, language="ru")
    time.sleep(0.3)
    stop.set()
    for worker in workers:
        worker.join(10)
    chat.close()
    assert "Published" in page.inner_text("#publish-result")
    assert page.inner_text("#after-bank") == after.versions.bank != before.versions.bank
    assert page.inner_text("#after-index") == after.versions.index != before.versions.index
    assert (target.id, target.text) in {(c.phrase_id, c.text) for c in after.candidates}
    assert not failures and sent[0] > 0, failures[:3]
    assert "live" in page.inner_text("#publishes")
    _shot(page, "publish")
    page.goto(f"{base}/gaps")
    assert page.locator("#generated").count() == 1
    _shot(page, "gaps")
    page.context.close()
