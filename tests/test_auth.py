"""Accounts, roles, tokens, CSRF and the audit log."""
from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from sqlalchemy import func, select

from models import AuditEvent, Membership, Upload, User, db
from tests.conftest import PASSWORD, login
from tests.dicomgen import make_study, zip_bytes


def basic(username, password=PASSWORD):
    return {"Authorization": "Basic " + base64.b64encode(
        f"{username}:{password}".encode()).decode()}


def test_fresh_install_login_page_tells_how_to_create_the_first_admin(anon_client):
    page = anon_client.get("/login")
    assert page.status_code == 200
    assert b"create-user" in page.data and b"--admin" in page.data


def test_pages_send_anonymous_users_to_the_login_page(anon_client):
    res = anon_client.get("/projects/new")
    assert res.status_code == 302 and "/login?next=" in res.headers["Location"]


def create_app_default_method() -> str:
    from app import DEFAULTS

    return DEFAULTS["PASSWORD_HASH_METHOD"]


def test_passwords_are_hashed_with_scrypt_by_default():
    assert create_app_default_method() == "scrypt"


def test_api_calls_answer_401_never_a_login_page(anon_client):
    res = anon_client.get("/api/uploads/abc")
    assert res.status_code == 401 and res.is_json
    res = anon_client.get("/data/JSESSION")
    assert res.status_code == 401 and "Basic" in res.headers["WWW-Authenticate"]


def test_create_user_reads_the_password_from_standard_input(app, runner, anon_client):
    result = runner.invoke(args=["create-user", "alice", "--admin"], input="s3cret-pass\n")
    assert result.exit_code == 0, result.output
    with app.app_context():
        user = db.session.scalar(select(User).filter_by(username="alice"))
        assert user.is_admin and user.password_hash.startswith("pbkdf2:sha256:")
    assert login(anon_client, "alice", "s3cret-pass").status_code == 303
    again = runner.invoke(args=["create-user", "alice"], input="s3cret-pass\n")
    assert again.exit_code != 0 and "already exists" in again.output
    short = runner.invoke(args=["create-user", "bob"], input="short\n")
    assert short.exit_code != 0


def test_repeated_failed_logins_lock_the_account(app, anon_client, make_user):
    make_user("carol")
    for _ in range(5):
        assert login(anon_client, "carol", "wrong").status_code == 401
    assert login(anon_client, "carol").status_code == 401  # locked, even with the password
    assert anon_client.get("/data/JSESSION", headers=basic("carol")).status_code == 401
    with app.app_context():
        assert db.session.scalar(select(User).filter_by(username="carol")).locked_until


def test_admin_disables_and_reenables_a_user(app, client, anon_client, make_user):
    make_user("dave")
    with app.app_context():
        dave = db.session.scalar(select(User.id).filter_by(username="dave"))
    assert client.post(f"/admin/users/{dave}/enabled", data={"enabled": "0"}).status_code == 303
    assert login(anon_client, "dave").status_code == 401
    assert client.post(f"/admin/users/{dave}/enabled", data={"enabled": "1"}).status_code == 303
    assert login(anon_client, "dave").status_code == 303
    res = client.post("/admin/users", data={"username": "erin", "password": "long password"})
    assert res.status_code == 303
    assert client.post("/admin/users", data={"username": "erin",
                                             "password": "long password"}).status_code == 409
    assert client.post("/admin/users", data={"username": "../x",
                                             "password": "long password"}).status_code == 400


def test_forms_without_a_csrf_token_are_refused(app, make_user):
    app.config["WTF_CSRF_ENABLED"] = True
    make_user("frank", admin=True)
    client = app.test_client()
    page = client.get("/login")
    token = page.data.split(b'name="csrf_token" value="')[1].split(b'"')[0].decode()
    assert client.post("/login", data={"username": "frank",
                                       "password": PASSWORD}).status_code == 400
    res = client.post("/login", data={"username": "frank", "password": PASSWORD,
                                      "csrf_token": token})
    assert res.status_code == 303
    assert client.post("/projects/new", data={"label": "nocsrf"}).status_code == 400
    assert client.post("/projects/new", data={"label": "withcsrf",
                                              "csrf_token": token}).status_code == 303


def test_tokens_are_shown_once_stored_hashed_and_can_be_revoked(app, client, anon_client):
    page = client.post("/profile/tokens", data={"name": "pipeline"})
    token = page.data.split(b'id="new-token">')[1].split(b"<")[0].decode()
    assert token.startswith("sy_")
    assert token.encode() not in client.get("/profile").data
    with app.app_context():
        from models import ApiToken

        row = db.session.scalar(select(ApiToken))
        assert row.token_hash != token and len(row.token_hash) == 64
        token_id = row.id
    bearer = {"Authorization": f"Bearer {token}"}
    assert anon_client.get("/data/JSESSION", headers=bearer).status_code == 200
    assert anon_client.get("/data/JSESSION", headers=basic("admin", token)).status_code == 200
    assert anon_client.get("/data/JSESSION", headers=basic("other", token)).status_code == 401
    assert client.post(f"/profile/tokens/{token_id}/revoke").status_code == 303
    assert anon_client.get("/data/JSESSION", headers=bearer).status_code == 401


def test_jsession_authorizes_later_calls(app, make_user):
    make_user("gina")
    script = app.test_client()
    sid = script.get("/data/JSESSION", headers=basic("gina")).get_data(as_text=True)
    fresh = app.test_client()
    fresh.set_cookie("JSESSIONID", sid)
    assert fresh.get("/api/projects/none/subjects").status_code == 404  # authenticated
    fresh.set_cookie("JSESSIONID", sid + "x")
    assert fresh.get("/api/projects/none/subjects").status_code == 401


def test_the_login_cookie_alone_does_not_authorize_changes_through_the_api(client):
    assert client.get("/api/projects/none/subjects").status_code == 404  # reading is fine
    assert client.delete("/data/JSESSION").status_code == 401
    assert client.delete("/data/JSESSION", headers=basic("admin")).status_code == 200


def test_session_cookies_are_httponly_samesite_and_secure_over_https(app, make_user):
    make_user("hana")
    client = app.test_client()
    res = client.post("/login", data={"username": "hana", "password": PASSWORD},
                      base_url="https://localhost")
    cookie = res.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" in cookie
    res = app.test_client().post("/login", data={"username": "hana", "password": PASSWORD})
    assert "Secure" not in res.headers["Set-Cookie"]


def test_the_last_owner_cannot_be_removed_or_demoted(app, make_project, make_user):
    make_project("p1")
    make_user("owner", project="p1", role="owner")
    make_user("member", project="p1", role="member")
    client = app.test_client()
    login(client, "owner")
    with app.app_context():
        owner_id = db.session.scalar(select(User.id).filter_by(username="owner"))
        member_id = db.session.scalar(select(User.id).filter_by(username="member"))
    res = client.post(f"/projects/p1/members/{owner_id}/remove")
    assert res.status_code == 409 and b"last owner" in res.data
    assert client.post(f"/projects/p1/members/{owner_id}/role",
                       data={"role": "member"}).status_code == 409
    assert client.post(f"/projects/p1/members/{member_id}/role",
                       data={"role": "owner"}).status_code == 303
    assert client.post(f"/projects/p1/members/{owner_id}/remove").status_code == 303
    with app.app_context():
        roles = dict(db.session.execute(select(Membership.user_id, Membership.role)).all())
    assert roles == {member_id: "owner"}


def test_a_collaborator_cannot_upload_and_nothing_is_stored(app, make_project, make_user):
    make_project("p1")
    make_user("col", project="p1", role="collaborator")
    client = app.test_client()
    login(client, "col")
    _, files = make_study(series=1, per_series=2)
    res = client.post("/upload", data={"project": "p1", "date_unknown": "1",
                                       "file": (io.BytesIO(zip_bytes({"a.dcm": files[0]})),
                                                "a.zip")},
                      content_type="multipart/form-data", headers={"Accept": "application/json"})
    assert res.status_code == 403
    assert not any((Path(app.config["DATA_DIR"]) / "uploads").iterdir())
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Upload)) == 0


@pytest.mark.parametrize("accessibility, read, edit", [
    ("private", 404, 404), ("protected", 403, 403), ("public", 200, 403)])
def test_project_accessibility_decides_what_outsiders_see(app, make_project, make_user,
                                                          accessibility, read, edit):
    make_project("p1", accessibility=accessibility)
    make_user("outsider")
    admin = app.test_client()
    make_user("root", admin=True)
    login(admin, "root")
    admin.post("/projects/p1/subjects", data={"label": "S1"})
    client = app.test_client()
    login(client, "outsider")
    listed = b">p1</a>" in client.get("/").data  # not the CSRF token by chance
    assert listed == (accessibility != "private")
    page = client.get("/projects/p1")
    assert page.status_code == (404 if accessibility == "private" else 200)
    assert client.get("/projects/p1/subjects/S1").status_code == read
    assert client.post("/projects/p1/subjects", data={"label": "S2"}).status_code == edit


def test_the_audit_log_records_each_kind_of_event(app, client, run_jobs, make_project,
                                                  make_user, anon_client):
    make_project("p1")
    make_project("p2")
    make_user("ivy")
    login(anon_client, "ivy", "wrong")
    client.post("/profile/tokens", data={"name": "t"})
    client.post("/profile/tokens/1/revoke")
    client.post("/projects/p1/members", data={"username": "ivy", "role": "member"})
    _, files = make_study(series=1, per_series=1)
    _, files2 = make_study(series=1, per_series=1, patient_id="P2")
    client.post("/upload", data={"project": "p1", "date_unknown": "1", "file": (
        io.BytesIO(zip_bytes({"a.dcm": files[0], "b.dcm": files2[0]})), "a.zip")},
        content_type="multipart/form-data")
    run_jobs()
    from models import PrearchiveSession

    with app.app_context():
        first, second = [ps.id for ps in db.session.scalars(select(PrearchiveSession))]
    client.post(f"/prearchive/{first}/labels", data={"project": "p1", "subject": "S",
                                                     "session": "E1"})
    client.post(f"/prearchive/{second}/labels", data={"project": "p2", "subject": "S",
                                                      "session": "E2"})
    run_jobs()
    client.post(f"/prearchive/{first}/archive")
    client.post(f"/prearchive/{second}/delete")
    run_jobs()
    client.post("/projects/p1/sessions/E1/delete")
    with app.app_context():
        kinds = set(db.session.scalars(select(AuditEvent.kind)))
        event = db.session.scalar(select(AuditEvent).filter_by(kind="archive"))
        assert event.username == "admin" and event.project == "p1" and event.remote_addr
    assert {"login", "login_failed", "token_created", "token_revoked", "role_change",
            "upload", "label_edit", "move", "archive", "delete"} <= kinds
    page = client.get("/audit?kind=archive")
    assert page.status_code == 200
    assert b"<td>archive</td>" in page.data and b"<td>login_failed</td>" not in page.data


def test_first_admin_tells_how_to_create_one_when_it_cannot_ask(app, runner, make_user):
    result = runner.invoke(args=["first-admin"])
    assert result.exit_code == 0 and "create-user NAME --admin" in result.output
    make_user("someone")
    assert runner.invoke(args=["first-admin"]).output == ""
