"""Editor accounts, sessions, roles and CSRF: who may do what, and forged or stale forms are refused."""

from __future__ import annotations

import pytest

from core.bank.schema import BankError
from dialog.editor.users import Users, hash_password, verify_password

from editor_helpers import PASSWORD, as_user, client, csrf_of, make_bank


def test_password_hash_is_salted_scrypt_and_verifies_only_the_right_password() -> None:
    first, second = hash_password("s3cret-pass"), hash_password("s3cret-pass")
    assert first.startswith("scrypt$") and first != second and "s3cret" not in first
    assert verify_password("s3cret-pass", first) and verify_password("s3cret-pass", second)
    assert not verify_password("s3cret-pasS", first)
    assert not verify_password("s3cret-pass", "garbage") and not verify_password("x", "bcrypt$1$2$3$aa$bb")


def test_users_validate_input_and_refuse_duplicates(tmp_path) -> None:
    users = Users(make_bank(tmp_path))
    with pytest.raises(BankError, match="shorter than 8"):
        users.add("newbie", "short", "editor")
    with pytest.raises(BankError, match="unknown role 'boss'"):
        users.add("newbie", PASSWORD, "boss")
    with pytest.raises(BankError, match="already exists"):
        users.add("editor", PASSWORD, "editor")
    with pytest.raises(BankError, match="without <>"):
        users.add("<script>", PASSWORD, "editor")
    assert [u.name for u in users.list()] == ["admin", "editor", "reviewer", "viewer"]
    assert users.has_admin()


def test_logged_out_user_is_redirected_to_login_with_the_page_to_return_to(tmp_path) -> None:
    test_client = client(make_bank(tmp_path))
    for page in ("/phrases?q=x", "/review", "/lint", "/try", "/phrases/1", "/users"):
        response = test_client.get(page, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"].startswith("/login?next=/")
    response = test_client.post("/phrases/new", data={"text": "x", "language": "en"}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"].startswith("/login")


def test_wrong_password_and_disabled_user_cannot_log_in(tmp_path) -> None:
    bank = make_bank(tmp_path)
    test_client = client(bank)
    token = csrf_of(test_client.get("/login").text)
    response = test_client.post("/login", data={"name": "editor", "password": "wrong-password", "csrf_token": token},
                                follow_redirects=True)
    assert response.status_code == 401 and "wrong name or password" in response.text
    Users(bank).disable("viewer")
    assert Users(bank).login("viewer", PASSWORD) is None
    assert Users(bank).login("nobody", PASSWORD) is None


def test_disabling_a_user_ends_their_session(tmp_path) -> None:
    bank = make_bank(tmp_path)
    test_client, _ = as_user(bank, "editor")
    assert test_client.get("/phrases", follow_redirects=False).status_code == 200
    Users(bank).disable("editor")
    assert test_client.get("/phrases", follow_redirects=False).status_code == 303


def test_login_form_without_its_csrf_token_is_refused(tmp_path) -> None:
    test_client = client(make_bank(tmp_path))
    test_client.get("/login")
    response = test_client.post("/login", data={"name": "admin", "password": PASSWORD, "csrf_token": "forged"})
    assert response.status_code == 403 and "CSRF" in response.text


def test_forms_without_or_with_a_wrong_csrf_token_change_nothing(tmp_path) -> None:
    bank = make_bank(tmp_path)
    phrase = bank.add("Hello there.", "en", status="draft")
    test_client, csrf = as_user(bank, "admin")
    for data in ({}, {"csrf_token": "not-the-token"}, {"csrf_token": csrf + "x"}):
        for url, fields in (("/phrases/new", {"text": "New one.", "language": "en"}),
                            (f"/phrases/{phrase.id}", {"text": "Changed.", "language": "en", "version": "1"}),
                            (f"/phrases/{phrase.id}/review", {"action": "submit", "version": "1"}),
                            ("/users", {"action": "add", "name": "eve", "password": PASSWORD, "role": "admin"})):
            response = test_client.post(url, data={**fields, **data})
            assert response.status_code == 403 and "CSRF" in response.text, url
    assert bank.stats()["total"] == 1 and bank.get(phrase.id).version == 1
    assert "eve" not in [u.name for u in Users(bank).list()]


def test_a_token_from_another_session_is_refused(tmp_path) -> None:
    bank = make_bank(tmp_path)
    _, other_csrf = as_user(bank, "editor")
    test_client, _ = as_user(bank, "editor")
    response = test_client.post("/phrases/new", data={"text": "Hi.", "language": "en", "csrf_token": other_csrf})
    assert response.status_code == 403 and bank.stats()["total"] == 0


def test_roles_viewer_cannot_edit_editor_cannot_approve_only_admin_manages_users(tmp_path) -> None:
    bank = make_bank(tmp_path)
    phrase = bank.add("Good morning!", "en", status="in_review")
    viewer, csrf = as_user(bank, "viewer")
    assert "Viewers cannot edit" in viewer.get(f"/phrases/{phrase.id}").text
    response = viewer.post(f"/phrases/{phrase.id}", data={"csrf_token": csrf, "text": "Evil.", "language": "en",
                                                          "version": "1"})
    assert response.status_code == 403 and "needs the editor role" in response.text
    assert viewer.post("/phrases/new", data={"csrf_token": csrf, "text": "x", "language": "en"}).status_code == 403
    editor, csrf = as_user(bank, "editor")
    assert "Approve" not in editor.get(f"/phrases/{phrase.id}").text
    response = editor.post(f"/phrases/{phrase.id}/review", data={"csrf_token": csrf, "action": "approve",
                                                                 "version": "1"})
    assert response.status_code == 422 and "needs the reviewer role" in response.text
    assert bank.get(phrase.id).status == "in_review"
    assert editor.get("/users").status_code == 403
    admin, csrf = as_user(bank, "admin")
    response = admin.post("/users", data={"csrf_token": csrf, "action": "add", "name": "zoe", "password": PASSWORD,
                                          "role": "reviewer"}, follow_redirects=True)
    assert response.status_code == 200 and "zoe" in response.text
    admin.post("/users", data={"csrf_token": csrf, "action": "disable", "name": "zoe"})
    assert Users(bank).audit()[:2] == [("admin", Users(bank).audit()[0][1], "disable user", "zoe", ""),
                                       ("admin", Users(bank).audit()[1][1], "add user", "zoe", "role reviewer")]
    refused = admin.post("/users", data={"csrf_token": csrf, "action": "disable", "name": "admin"})
    assert refused.status_code == 422 and "your own account" in refused.text and Users(bank).has_admin()


def test_logout_ends_the_session(tmp_path) -> None:
    test_client, csrf = as_user(make_bank(tmp_path), "viewer")
    assert test_client.post("/logout", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303
    assert test_client.get("/phrases", follow_redirects=False).status_code == 303


def test_insecure_local_mode_acts_as_local_admin_but_still_checks_csrf(tmp_path) -> None:
    bank = make_bank(tmp_path)
    test_client = client(bank, insecure_local=True)
    page = test_client.get("/phrases/new")
    assert page.status_code == 200 and "local" in page.text
    assert test_client.post("/phrases/new", data={"text": "Hi.", "language": "en"}).status_code == 403
    response = test_client.post("/phrases/new", data={"text": "Hi.", "language": "en",
                                                      "csrf_token": csrf_of(page.text)}, follow_redirects=False)
    assert response.status_code == 303 and bank.history()[-1].who == "local"


def test_session_cookie_is_httponly_and_samesite_strict(tmp_path) -> None:
    test_client = client(make_bank(tmp_path))
    token = csrf_of(test_client.get("/login").text)
    response = test_client.post("/login", data={"name": "admin", "password": PASSWORD, "csrf_token": token},
                                follow_redirects=False)
    cookie = next(v for k, v in response.headers.multi_items() if k == "set-cookie" and "repliq_session" in v)
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
