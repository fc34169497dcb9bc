"""The editor's pages: search and pagination, validation that names the field and keeps the input,
edits with history, the review workflow, edit conflicts, escaping and size limits."""

from __future__ import annotations

import re

import pytest

from core.bank.store import PhraseBank

from editor_helpers import as_user, make_bank


@pytest.fixture
def bank(tmp_path) -> PhraseBank:
    bank = make_bank(tmp_path)
    rows = [(f"Phrase number {i} about {'cats' if i % 3 == 0 else 'dogs'}.", "en", ["pets"] if i % 2 else [],
             "approved" if i % 4 else "draft", "editor" if i % 5 else "import") for i in range(120)]
    for text, language, tags, status, source in rows:
        bank.add(text, language, tags=tags, status=status, source=source)
    bank.add("Привет, как дела?", "ru", tags=["greeting"])
    return bank


def _ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'<td><a href="/phrases/(\d+)">#', html)]


def test_browse_is_paginated_newest_first(bank: PhraseBank) -> None:
    test_client, _ = as_user(bank, "viewer")
    first = test_client.get("/phrases")
    assert first.status_code == 200 and "121 matching" in first.text and "page 1 of 3" in first.text
    assert _ids(first.text) == list(range(121, 71, -1))
    last = test_client.get("/phrases?page=3")
    assert _ids(last.text) == list(range(21, 0, -1)) and 'rel="next"' not in last.text
    assert _ids(test_client.get("/phrases?page=0").text) == _ids(first.text)


def test_filters_combine_text_language_status_source_and_tag(bank: PhraseBank) -> None:
    test_client, _ = as_user(bank, "viewer")
    cats = test_client.get("/phrases?q=CATS")
    expected = [p.id for p in bank.phrases() if "cats" in p.text]
    assert sorted(_ids(cats.text)) == sorted(expected) and f"{len(expected)} matching" in cats.text
    assert _ids(test_client.get("/phrases?language=ru").text) == [121]
    assert _ids(test_client.get("/phrases?tag=greeting").text) == [121]
    drafts = test_client.get("/phrases?status=draft&source=import&tag=pets&q=dogs").text
    assert sorted(_ids(drafts)) == sorted(p.id for p in bank.phrases(status="draft") if p.source == "import"
                                          and "pets" in p.tags and "dogs" in p.text)
    assert "0 matching" in test_client.get("/phrases?q=%25").text  # LIKE wildcards are literal
    meaning = test_client.get("/phrases?meaning=dogs")
    assert "needs the workspace" in meaning.text and "0 matching" not in meaning.text


def test_store_search_pages_and_counts(bank: PhraseBank) -> None:
    page, total = bank.search(text="about cats", offset=10, limit=10)
    assert total == 40 and len(page) == 10
    ordered, total = bank.search(ids=[5, 3, 99999, 4])
    assert [p.id for p in ordered] == [5, 3, 4] and total == 3
    assert bank.search(ids=[]) == ([], 0)


def test_new_phrase_with_bad_field_is_refused_naming_it_and_keeping_the_input(bank: PhraseBank) -> None:
    test_client, csrf = as_user(bank, "editor")
    before = bank.stats()["total"]
    response = test_client.post("/phrases/new", data={"csrf_token": csrf, "text": "Мой кот спит весь день.",
                                                      "language": "klingon", "tags": "cats, sleep"})
    assert response.status_code == 422 and "unknown language" in response.text
    assert "Мой кот спит весь день." in response.text and "cats, sleep" in response.text
    response = test_client.post("/phrases/new", data={"csrf_token": csrf, "text": "x" * 1001, "language": "en"})
    assert response.status_code == 422 and "the limit is 1000" in response.text
    dup = test_client.post("/phrases/new", data={"csrf_token": csrf, "text": "Привет, как дела?", "language": "ru"})
    assert dup.status_code == 422 and "already says this" in dup.text
    assert bank.stats()["total"] == before


def test_new_phrase_is_a_draft_with_its_author_in_the_history(bank: PhraseBank) -> None:
    test_client, csrf = as_user(bank, "editor")
    response = test_client.post("/phrases/new", data={"csrf_token": csrf, "text": "Cats purr when happy.",
                                                      "language": "en", "tags": "cats, Facts", "why": "new fact"},
                                follow_redirects=False)
    phrase_id = int(response.headers["location"].split("/")[2].split("?")[0])
    phrase = bank.get(phrase_id)
    assert (phrase.status, phrase.tags, phrase.source) == ("draft", ("cats", "facts"), "editor")
    assert [(h.who, h.why) for h in bank.history(phrase_id)] == [("editor", "new fact")]


def test_edit_records_history_and_shows_it(bank: PhraseBank) -> None:
    test_client, csrf = as_user(bank, "reviewer")
    response = test_client.post("/phrases/1", data={"csrf_token": csrf, "text": "A better phrase.", "language": "en",
                                                    "tags": "pets", "source": "editor", "version": "1",
                                                    "why": "clearer"}, follow_redirects=True)
    assert response.status_code == 200 and "Saved." in response.text
    assert bank.get(1).text == "A better phrase." and bank.get(1).version == 2
    entry = bank.history(1)[-1]
    assert (entry.who, entry.why, entry.before["text"], entry.after["text"]) == (
        "reviewer", "clearer", "Phrase number 0 about cats.", "A better phrase.")
    assert "<del>Phrase number 0 about cats.</del>" in response.text


def test_editor_changing_a_live_phrase_sends_it_back_to_review(bank: PhraseBank) -> None:
    test_client, csrf = as_user(bank, "editor")
    assert bank.get(2).status == "approved"
    test_client.post("/phrases/2", data={"csrf_token": csrf, "text": "Changed by an editor.", "language": "en",
                                         "tags": "pets", "version": "1"})
    assert bank.get(2).status == "in_review"
    test_client.post("/phrases/3", data={"csrf_token": csrf, "text": bank.get(3).text, "language": "en",
                                         "tags": "new-tag", "version": "1"})
    assert bank.get(3).status == "approved" and bank.get(3).tags == ("new-tag",)


def test_second_save_of_the_same_version_is_refused_with_who_and_when(bank: PhraseBank) -> None:
    first, csrf_a = as_user(bank, "editor")
    second, csrf_b = as_user(bank, "reviewer")
    form = {"language": "en", "tags": "", "version": "1"}
    assert first.post("/phrases/5", data={**form, "csrf_token": csrf_a, "text": "First save."},
                      follow_redirects=False).status_code == 303
    response = second.post("/phrases/5", data={**form, "csrf_token": csrf_b, "text": "Second save."})
    assert response.status_code == 409 and "changed by editor at" in response.text and "reload" in response.text
    assert "Second save." in response.text  # the losing edit is still in the form, not lost
    assert bank.get(5).text == "First save."


def test_bad_version_field_is_named(bank: PhraseBank) -> None:
    test_client, csrf = as_user(bank, "editor")
    response = test_client.post("/phrases/5", data={"csrf_token": csrf, "text": "x.", "language": "en",
                                                    "version": "abc"})
    assert response.status_code == 422 and "version: expected a whole number" in response.text


def test_review_workflow_with_comments(bank: PhraseBank) -> None:
    editor, e_csrf = as_user(bank, "editor")
    reviewer, r_csrf = as_user(bank, "reviewer")
    pid = 5  # i = 4: a draft
    assert bank.get(pid).status == "draft"

    def act(test_client, csrf, action, comment="", back=""):
        version = bank.get(pid).version
        return test_client.post(f"/phrases/{pid}/review", data={"csrf_token": csrf, "action": action,
                                "comment": comment, "version": str(version), "back": back}, follow_redirects=False)

    assert act(editor, e_csrf, "submit").status_code == 303 and bank.get(pid).status == "in_review"
    assert f"#{pid}</a>" in reviewer.get("/review").text
    missing = act(reviewer, r_csrf, "reject")
    assert missing.status_code == 422 and "needs a comment" in missing.text and bank.get(pid).status == "in_review"
    assert act(reviewer, r_csrf, "reject", "too vague: name the dog").status_code == 303
    assert bank.get(pid).status == "rejected"
    queue = reviewer.get("/review").text
    assert "too vague: name the dog" in queue
    assert act(editor, e_csrf, "approve").status_code == 422
    assert act(editor, e_csrf, "submit").status_code == 303
    response = act(reviewer, r_csrf, "approve", "fine now", back="/review")
    assert response.headers["location"] == "/review" and bank.get(pid).status == "approved"
    trail = [(h.who, h.why, h.after["status"]) for h in bank.history(pid)[1:]]
    assert trail == [("editor", "submit", "in_review"), ("reviewer", "reject: too vague: name the dog", "rejected"),
                     ("editor", "submit", "in_review"), ("reviewer", "approve: fine now", "approved")]
    stale = reviewer.post(f"/phrases/{pid}/review", data={"csrf_token": r_csrf, "action": "retire", "version": "1"})
    assert stale.status_code == 409 and bank.get(pid).status == "approved"


def test_html_in_a_phrase_is_escaped_everywhere(bank: PhraseBank) -> None:
    bad = bank.add('<script>alert("x")</script> <img src=x onerror=alert(1)>', "en", status="in_review")
    test_client, _ = as_user(bank, "viewer")
    for page in ("/phrases", f"/phrases/{bad.id}", "/review", "/phrases?q=script"):
        html = test_client.get(page).text
        assert "<script>alert" not in html and "<img src=x" not in html, page
        assert "&lt;script&gt;" in html, page


def test_oversized_request_is_refused_before_reading(bank: PhraseBank) -> None:
    test_client, csrf = as_user(bank, "editor")
    response = test_client.post("/phrases/new", data={"csrf_token": csrf, "text": "x" * 70_000, "language": "en"})
    assert response.status_code == 413 and bank.stats()["total"] == 121


def test_unknown_phrase_is_a_404_with_a_hint(bank: PhraseBank) -> None:
    test_client, _ = as_user(bank, "viewer")
    response = test_client.get("/phrases/9999")
    assert response.status_code == 404 and "no phrase #9999" in response.text


def test_lint_page_reruns_the_text_rules_and_the_phrase_page_shows_them_inline(bank: PhraseBank) -> None:
    odd = bank.add("Bonjour *waves* TODO", "en", status="draft")
    test_client, csrf = as_user(bank, "editor")
    assert "No report yet" in test_client.get("/lint").text
    page = test_client.post("/lint", data={"csrf_token": csrf}, follow_redirects=True).text
    assert "narration: 1" in page and "blocklisted: 1" in page and "near-duplicate" in page  # skipped, with why
    assert "no workspace settings" in page
    only = test_client.get("/lint?rule=blocklisted").text
    assert f"/phrases/{odd.id}" in only and "narration</span>" not in only
    inline = test_client.get(f"/phrases/{odd.id}").text
    assert "lint-narration" in inline and "lint-blocklisted" in inline and "keep only the spoken words" in inline


def test_missing_models_are_explained_on_the_page_not_a_crash(bank: PhraseBank, tmp_path) -> None:
    from editor_helpers import client, login, tiny_settings

    test_client = client(bank, settings=tiny_settings(tmp_path, tmp_path / "no-such-encoder"))
    csrf = login(test_client, "viewer")
    page = test_client.get("/phrases?meaning=weather&page=x")
    assert page.status_code == 200 and "Search by meaning is unavailable" in page.text and "page 1 of" in page.text
    tried = test_client.post("/try", data={"csrf_token": csrf, "dialogue": "Hi there"})
    assert tried.status_code == 422 and "no-such-encoder" in tried.text
