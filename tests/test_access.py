"""Every route of every blueprint, walked as each kind of user.

The table below says what each role gets from each route. A route that the
table does not name fails `test_every_route_has_a_rule`, so a new page or
endpoint cannot ship without its access rule.
"""
from __future__ import annotations

import io

import pytest
from sqlalchemy import select

from models import ApiToken, File, ImagingSession, PrearchiveSession, Resource, Upload, User, db
from tests.conftest import _backends, jobs_runner, login, make_app, project_maker, user_maker
from tests.dicomgen import make_study, zip_bytes

ROLES = ("anon", "other", "collab", "member", "owner", "admin")
OK = "ok"  # any answer that is not a refusal (2xx, 3xx but not to /login, 400, 409)

# who may: the roles allowed; everyone else gets the refusal that fits them:
# anonymous -> login (pages) or 401 (scripts); a user who cannot see the
# project -> 404; a user who sees it but may not do this -> 403.
EVERYONE = ROLES[1:]
READERS = ("collab", "member", "owner", "admin")
EDITORS = ("member", "owner", "admin")
OWNERS = ("owner", "admin")
ADMINS = ("admin",)

# endpoint: (method, url, who may, refusal for users who see the project but
# may not act, form data)
ROUTES = {
    "archive.index": ("GET", "/", EVERYONE, None, None),
    "archive.new_project": ("GET", "/projects/new", EVERYONE, None, None),
    "archive.project": ("GET", "/projects/p1", READERS, None, None),
    "archive.new_subject": ("POST", "/projects/p1/subjects", EDITORS, 403,
                            {"label": "NEW_{role}"}),
    "archive.subject": ("GET", "/projects/p1/subjects/S1", READERS, None, None),
    "archive.session": ("GET", "/projects/p1/sessions/A_member", READERS, None, None),
    "archive.scan": ("GET", "/projects/p1/sessions/A_member/scans/1", READERS, None, None),
    "archive.download_session": ("GET", "/projects/p1/sessions/A_member/download",
                                 READERS, None, None),
    "archive.download_scan": ("GET", "/projects/p1/sessions/A_member/scans/1/download",
                              READERS, None, None),
    "archive.confirm_delete_session": ("GET", "/projects/p1/sessions/A_member/delete",
                                       OWNERS, 403, None),
    "archive.delete_session": ("POST", "/projects/p1/sessions/D_{role}/delete", OWNERS, 403,
                               {}),
    "archive.search": ("GET", "/search?q=A_", EVERYONE, None, None),
    "archive.relabel_session": ("POST", "/projects/p1/sessions/R_{role}/relabel", EDITORS, 403,
                                {"label": "R2_{role}", "subject": "S2"}),
    "upload.form": ("GET", "/upload", EVERYONE, None, None),
    "upload.create": ("POST", "/upload", EDITORS, 403, "upload"),
    "upload.status": ("GET", "/uploads/{upload}", EDITORS, 404, None),
    "upload.index": ("GET", "/uploads", EVERYONE, None, None),
    "prearchive.index": ("GET", "/prearchive/", EVERYONE, None, None),
    "prearchive.detail": ("GET", "/prearchive/{ps_member}", EDITORS, 404, None),
    "prearchive.edit_labels": ("POST", "/prearchive/{label_role}/labels", EDITORS, 404,
                               {"project": "p1", "subject": "S1", "session": "L_{role}"}),
    "prearchive.archive": ("POST", "/prearchive/{archive_role}/archive", EDITORS, 404, {}),
    "prearchive.confirm_delete": ("GET", "/prearchive/{ps_member}/delete", EDITORS, 404,
                                  None),
    "prearchive.delete": ("POST", "/prearchive/{delete_role}/delete", EDITORS, 404, {}),
    "prearchive.merge": ("POST", "/prearchive/{merge_role}/merge", EDITORS, 404,
                         {"into": "{ps_member}"}),
    "prearchive.reset": ("POST", "/prearchive/{ps_member}/reset", EDITORS, 404, {}),
    "prearchive.rebuild": ("POST", "/prearchive/{ps_member}/rebuild", EDITORS, 404, {}),
    "prearchive.rebuild_all": ("POST", "/prearchive/rebuild", ADMINS, 403, {}),
    "api.upload_status": ("GET", "/api/uploads/{upload}", EDITORS, 404, None),
    "api.subjects": ("GET", "/api/projects/p1/subjects", READERS, None, None),
    "auth.login": ("GET", "/login", ROLES, None, None),
    "auth.logout": ("POST", "/logout", EVERYONE, None, {}),
    "auth.profile": ("GET", "/profile", EVERYONE, None, None),
    "auth.create_token": ("POST", "/profile/tokens", EVERYONE, None, {"name": "t"}),
    "auth.revoke_token": ("POST", "/profile/tokens/{token_role}/revoke", EVERYONE, None, {}),
    "auth.jsession": ("GET", "/data/JSESSION", EVERYONE, None, None),
    "auth.end_jsession": ("DELETE", "/data/JSESSION", EVERYONE, None, None),
    "members.index": ("GET", "/projects/p1/members", OWNERS, 403, None),
    "members.add": ("POST", "/projects/p1/members", OWNERS, 403,
                    {"username": "extra_{role}", "role": "collaborator"}),
    "members.change_role": ("POST", "/projects/p1/members/{collab_id}/role", OWNERS, 403,
                            {"role": "collaborator"}),
    "members.remove": ("POST", "/projects/p1/members/{victim_role}/remove", OWNERS, 403, {}),
    "members.settings": ("GET", "/projects/p1/settings", OWNERS, 403, None),
    "admin.users": ("GET", "/admin/users", ADMINS, 403, None),
    "admin.create_user": ("POST", "/admin/users", ADMINS, 403,
                          {"username": "new_{role}", "password": "long enough pw"}),
    "admin.set_enabled": ("POST", "/admin/users/{victim_role}/enabled", ADMINS, 403,
                          {"enabled": "1"}),
    "attention.index": ("GET", "/attention", EVERYONE, None, None),
    "audit.index": ("GET", "/audit", ("other", "owner", "admin"), 403, None),
    "resources.index": ("GET", "/projects/p1/resources", READERS, None, None),
    "headers.prearchive_header": ("GET", "/prearchive/{ps_member}/scans/1/header", EDITORS, 404,
                                  None),
    "headers.prearchive_preview": ("GET", "/prearchive/{ps_member}/scans/1/preview", EDITORS,
                                   404, None),
    "headers.prearchive_json": (
        "GET", "/api/prearchive/{ps_member}/scans/1/files/{file_ps}/dicom.json", EDITORS, 404,
        None),
    "headers.prearchive_snapshot": ("GET", "/prearchive/{ps_member}/scans/1/snapshot.png",
                                    EDITORS, 404, None),
    "headers.archive_header": (
        "GET", "/projects/p1/sessions/A_member/scans/1/files/{file_a}/header", READERS, None,
        None),
    "headers.archive_json": (
        "GET", "/data/projects/p1/experiments/A_member/scans/1/files/{file_a}/dicom.json",
        READERS, None, None),
    "headers.archive_snapshot": ("GET", "/projects/p1/sessions/A_member/scans/1/snapshot.png",
                                 READERS, None, None),
    "anonymization.site_script": ("GET", "/admin/anonymization", ADMINS, 403, None),
    "dicom.receivers": ("GET", "/admin/dicom/", ADMINS, 403, None),
    "dicom.new_receiver": ("GET", "/admin/dicom/receivers/new", ADMINS, 403, None),
    "dicom.edit_receiver": ("POST", "/admin/dicom/receivers/{receiver_edit}", ADMINS, 403,
                            {"ae_title": "EDITED", "enabled": "1"}),
    "dicom.confirm_delete_receiver": ("GET", "/admin/dicom/receivers/{receiver_delete}/delete",
                                      ADMINS, 403, None),
    "dicom.delete_receiver": ("POST", "/admin/dicom/receivers/{receiver_delete}/delete",
                              ADMINS, 403, {}),
    "dicom.rules": ("GET", "/admin/dicom/rules", ADMINS, 403, None),
    "dicom.add_rule": ("POST", "/admin/dicom/rules", ADMINS, 403,
                       {"field": "subject", "rule": "(0010,0020):(.*)"}),
    "dicom.edit_rule": ("POST", "/admin/dicom/rules/{rule_edit}", ADMINS, 403,
                        {"field": "subject", "rule": "(0010,0010):(.*)"}),
    "dicom.delete_rule": ("POST", "/admin/dicom/rules/{rule_delete}/delete", ADMINS, 403, {}),
    "dicom.associations": ("GET", "/admin/dicom/associations", ADMINS, 403, None),
    "anonymization.project_script": ("GET", "/projects/p1/anonymization", OWNERS, 403, None),
    "resources.upload": ("POST", "/projects/p1/resources", EDITORS, 403, "resource"),
    "resources.download": ("GET", "/projects/p1/resources/NOTES/files/a.txt", READERS, None,
                           None),
    "resources.details": ("GET", "/projects/p1/resources/NOTES/details/a.txt", READERS, None,
                          None),
    "resources.delete_file": ("POST", "/projects/p1/resources/DF_{role}/files/a.txt/delete",
                              EDITORS, 403, {}),
    "resources.delete_resource": ("POST", "/projects/p1/resources/DR_{role}/delete", EDITORS,
                                  403, {}),
    "xnat.read": ("GET", "/data/projects/p1/subjects/S1/experiments/A_member?format=json",
                  READERS, None, None),
    "xnat.write": ("PUT", "/data/projects/p1/subjects/X_{role}", EDITORS, 403, None),
    "xnat.remove": ("DELETE", "/data/projects/p1/subjects/XD_{role}?removeFiles=true", OWNERS,
                    403, None),
    "xnat.prearchive_list": ("GET", "/data/prearchive/projects", EVERYONE, None, None),
    "xnat.prearchive_code": ("GET", "/data/projects/p1/prearchive_code", READERS, 403, None),
    "xnat.set_prearchive_code": ("PUT", "/data/projects/p1/prearchive_code/0", OWNERS, 403,
                                 None),
    "xnat.prearchive_project": ("GET", "/data/prearchive/projects/p1", EDITORS, 403, None),
    "xnat.prearchive_session": ("GET", "/data/prearchive/projects/{ps_path}", EDITORS, 404,
                                None),
    "xnat.prearchive_delete": ("DELETE", "/data/prearchive/projects/{xdelete_role}", EDITORS,
                               404, None),
    "xnat.prearchive_action": ("POST", "/data/prearchive/projects/{xcommit_role}"
                               "?action=commit", EDITORS, 404, None),
    "xnat.archive_service": ("POST", "/data/services/archive?src=/prearchive/projects/"
                             "{xarchive_role}", EDITORS, 404, None),
    "xnat.prearchive_service": ("POST", "/data/services/prearchive/delete?src=/prearchive/"
                                "projects/{xpdelete_role}", EDITORS, 404, None),
    "xnat.import_service": ("POST", "/data/services/import?dest=/prearchive/projects/p1",
                            EDITORS, 403, "import"),
}


@pytest.fixture(scope="module", params=_backends())
def shared_app(request, tmp_path_factory, redis_url, postgres_url):
    """One app for the whole table: building its data takes a few seconds."""
    with make_app(request.param, tmp_path_factory.mktemp("access"), redis_url,
                  postgres_url) as app:
        yield app


def test_every_route_has_a_rule(shared_app):
    endpoints = {rule.endpoint for rule in shared_app.url_map.iter_rules()} - {"static"}
    missing = sorted(endpoints - set(ROUTES))
    assert not missing, f"routes without an access rule in this table: {missing}"


# Each role gets its own target for the routes that change or remove it, so
# that one role's success does not change what the next role finds.
PREARCHIVE_TARGETS = ("ps", "label", "archive", "delete", "merge")
# Targets of the XNAT-style services, named by their path project/timestamp/folder.
XNAT_TARGETS = ("xdelete", "xcommit", "xarchive", "xpdelete")
ARCHIVE_TARGETS = ("A", "D", "R")


@pytest.fixture(scope="module")
def world(shared_app):
    """Project p1 (private) with an owner, member and collaborator; p2 of another
    user; per role prearchive sessions, archived sessions and a token."""
    app = shared_app
    make_user, make_project, run_jobs = user_maker(app), project_maker(app), jobs_runner(app)
    make_project("p1")
    make_project("p2")
    make_user("admin", admin=True)
    make_user("owner", project="p1", role="owner")
    make_user("member", project="p1", role="member")
    make_user("collab", project="p1", role="collaborator")
    make_user("other", project="p2", role="owner")
    for role in ROLES:
        make_user(f"victim_{role}", project="p1", role="collaborator")
        make_user(f"extra_{role}")
    client = app.test_client()
    login(client, "admin")
    client.post("/projects/p1/subjects", data={"label": "S1"})
    targets = [(role, kind) for role in ROLES
               for kind in PREARCHIVE_TARGETS + ARCHIVE_TARGETS + XNAT_TARGETS]
    files = {}
    for n in range(len(targets)):
        _, study = make_study(series=1, per_series=1, patient_id=f"P{n:03d}")
        files[f"{n}.dcm"] = study[0]
    res = client.post("/upload", data={"project": "p1", "date_unknown": "1",
                                       "file": (io.BytesIO(zip_bytes(files)), "w.zip")},
                      content_type="multipart/form-data")
    assert res.status_code == 303
    run_jobs()
    ids = {}
    with app.app_context():
        rows = list(db.session.scalars(select(PrearchiveSession).order_by(
            PrearchiveSession.study_uid)))
    for (role, kind), ps in zip(targets, rows, strict=True):
        session = f"{kind}_{role}" if kind in ARCHIVE_TARGETS else f"E_{kind}_{role}"
        client.post(f"/prearchive/{ps.id}/labels",
                    data={"project": "p1", "subject": "S1", "session": session})
        if kind in ARCHIVE_TARGETS:
            client.post(f"/prearchive/{ps.id}/archive")
        elif kind in XNAT_TARGETS:
            ids[f"{kind}_{role}"] = ps.relpath
        else:
            ids[f"{kind}_{role}"] = ps.id
            ids[f"{kind}_{role}_path"] = ps.relpath
    run_jobs()
    ids["ps_path"] = ids["ps_member_path"]
    for role in ROLES:
        client.post("/projects/p1/subjects", data={"label": f"XD_{role}"})
    # The services answer at once (202) rather than wait for jobs no worker runs.
    app.config["IMPORT_WAIT_SECONDS"] = 0
    for resource in ["NOTES"] + [f"{kind}_{role}" for kind in ("DF", "DR") for role in ROLES]:
        res = client.post("/projects/p1/resources", content_type="multipart/form-data",
                          data={"resource": resource, "files": (io.BytesIO(b"notes"), "a.txt")})
        assert res.status_code < 400, res.data
    with app.app_context():
        assert db.session.scalar(select(ImagingSession).filter_by(label="A_member"))
        member = db.session.scalar(select(User).filter_by(username="member"))
        upload = Upload(id="ab" * 16, user_id=member.id, project="p1", original_name="x.zip",
                        status="DONE", params={})
        db.session.add(upload)
        for role in ROLES[1:]:
            user = db.session.scalar(select(User).filter_by(username=role))
            db.session.add(ApiToken(user_id=user.id, name="t", token_hash=f"h-{role}"))
        db.session.commit()
        ids["upload"] = upload.id
        from models import Receiver, RoutingRule

        for key in ("edit", "delete"):
            receiver = Receiver(ae_title=key.upper())
            rule = RoutingRule(field="session", rule="(0020,0010):(.*)")
            db.session.add_all([receiver, rule])
            db.session.flush()
            ids[f"receiver_{key}"], ids[f"rule_{key}"] = receiver.id, rule.id
        db.session.commit()
        ids["file_a"] = db.session.scalar(
            select(File.path).join(Resource).join(ImagingSession,
                                                  ImagingSession.id == Resource.session_id)
            .where(ImagingSession.label == "A_member", Resource.label == "DICOM"))
        ps = db.session.get(PrearchiveSession, ids["ps_member"])
        from workers import prearchive

        ids["file_ps"] = prearchive.load_record(ps)["scans"][0]["files"][0]["name"]
        ids["collab_id"] = db.session.scalar(select(User.id).filter_by(username="collab"))
        for role in ROLES:
            ids[f"victim_{role}"] = db.session.scalar(
                select(User.id).filter_by(username=f"victim_{role}"))
            token = db.session.scalar(select(ApiToken.id).join(User, User.id == ApiToken.user_id)
                                      .filter(User.username == role))
            ids[f"token_{role}"] = token or 0
    return ids


def _url(template: str, role: str, ids: dict) -> str:
    values = {**ids, "role": role}
    for key in ("ps", "victim", "token") + PREARCHIVE_TARGETS + XNAT_TARGETS:
        if f"{key}_{role}" in ids:
            values[f"{key}_role"] = ids[f"{key}_{role}"]
    return template.format(**values)


def _request(client, method, url, data, role):
    if data == "upload":
        _, files = make_study(series=1, per_series=1)
        data = {"project": "p1", "date_unknown": "1",
                "file": (io.BytesIO(zip_bytes({"1.dcm": files[0]})), "x.zip")}
        return client.post(url, data=data, content_type="multipart/form-data")
    if data == "resource":
        data = {"resource": f"UP_{role}", "files": (io.BytesIO(b"x"), "x.txt")}
        return client.post(url, data=data, content_type="multipart/form-data")
    headers = {}
    if url.startswith(("/api/", "/data/")) and role != "anon":
        # Scripts authenticate on each call (the login cookie alone does not
        # authorize them to change anything).
        headers["Authorization"] = _basic(role)
    if data == "import":
        _, files = make_study(series=1, per_series=1)
        return client.post(url, data=zip_bytes({"1.dcm": files[0]}),
                           headers={**headers, "Content-Type": "application/zip"})
    res = client.open(url, method=method, data=data, headers=headers)
    res.get_data()
    return res


def _basic(username: str) -> str:
    import base64

    from tests.conftest import PASSWORD

    return "Basic " + base64.b64encode(f"{username}:{PASSWORD}".encode()).decode()


def _expected(endpoint: str, role: str) -> str | int:
    _method, url, allowed, refusal, _data = ROUTES[endpoint]
    if role in allowed:
        return OK
    if role == "anon":
        return 401 if url.startswith(("/api/", "/data/")) else "login"
    if role == "other" and ("/p1" in url or refusal == 404 or endpoint == "upload.create"):
        return 404  # p1 is private: to a stranger it does not exist
    return refusal


@pytest.mark.parametrize("endpoint", sorted(ROUTES))
def test_route_answers_each_role_as_its_rule_says(shared_app, world, endpoint):
    app = shared_app
    method, template, _allowed, _refusal, data = ROUTES[endpoint]
    for role in ROLES:
        client = app.test_client()
        if role != "anon":
            assert login(client, role).status_code == 303, role
        url = _url(template, role, world)
        if isinstance(data, dict):
            form = {k: v.format(role=role, **world) for k, v in data.items()}
        else:
            form = data
        res = _request(client, method, url, form, role)
        expected = _expected(endpoint, role)
        got = res.status_code
        where = f"{method} {url} as {role}: {got}"
        if expected == OK:
            assert got < 500 and got not in (401, 403, 404), where
            if endpoint != "auth.logout":  # logging out ends on the login page
                assert "/login" not in res.headers.get("Location", ""), where
        elif expected == "login":
            assert got == 302 and "/login" in res.headers["Location"], where
        else:
            assert got == expected, where
            if url.startswith(("/api/", "/data/")):
                assert res.is_json, where
