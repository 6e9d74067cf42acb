"""The import service (POST /data/services/import) and ``flask import``: the same
pipeline as the web upload, answering when the import is done."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
import requests
from pydicom import dcmread
from sqlalchemy import select

from models import File, ImagingSession, PrearchiveSession, Upload, db
from tests.dicomgen import make_series, make_study, write_files, zip_bytes

ZIP = {"Content-Type": "application/zip"}


@pytest.fixture
def script(app, make_project, make_user, api_headers):
    """A script of project p1's member: a fresh client with the member's token."""
    make_project("p1")
    make_user("member", project="p1", role="member")
    client, headers = app.test_client(), api_headers("member")

    def post(url, **kw):
        return client.post(url, headers={**headers, **kw.pop("headers", {})}, **kw)

    def get(url):
        return client.get(url, headers=headers)
    post.get = get
    return post


def study_zip(patient_id="PAT1", series=2, per_series=2):
    uid, files = make_study(series=series, per_series=per_series, patient_id=patient_id)
    return uid, files, zip_bytes({f"{patient_id}/{n}.dcm": d for n, d in enumerate(files)})


def lines(res) -> list[str]:
    assert res.status_code == 200, res.data
    assert res.mimetype == "text/plain"
    return res.get_data(as_text=True).splitlines()


def test_a_zip_goes_to_the_prearchive_and_the_answer_lists_its_sessions(app, script, worker):
    uid_a, _, _ = study_zip()
    _, files_a = make_study(series=1, per_series=3, patient_id="PAT_A")
    _, files_b = make_study(series=2, per_series=1, patient_id="PAT_B")
    body = zip_bytes({**{f"a/{n}.dcm": d for n, d in enumerate(files_a)},
                      **{f"b/{n}.dcm": d for n, d in enumerate(files_b)}})
    res = script("/data/services/import?project=p1&import-handler=DICOM-zip", data=body,
                 headers=ZIP)
    uris = lines(res)
    assert len(uris) == 2
    for uri in uris:
        assert uri.startswith("/data/prearchive/projects/p1/")
        project, timestamp, folder = uri.split("/")[4:]
        assert project == "p1" and len(timestamp) == 18 and folder in ("PAT_A", "PAT_B")
        item = script.get(uri).get_json()["items"][0]
        assert item["data_fields"]["status"] == "READY"
    with app.app_context():
        upload = db.session.scalar(select(Upload))
        assert (upload.source, upload.stored, upload.status) == ("rest", 5, "DONE")
    report = script.get(f"/api/uploads/{upload.id}").get_json()
    for field in ("status", "files_total", "files_read", "stored", "duplicates",
                  "quarantined", "messages", "sessions", "error"):
        assert field in report, field
    assert report["status"] == "DONE" and report["files_total"] == report["files_read"] == 5
    assert report["progress"] == 1.0 and report["stored"] == 5 and report["error"] is None
    assert sorted(s["session"] for s in report["sessions"]) == ["PAT_A", "PAT_B"]
    assert sorted(s["uri"] for s in report["sessions"]) == sorted(uris)


def test_a_zip_with_dest_archive_lands_in_the_archive_under_the_given_labels(
        app, script, worker):
    uid, files, body = study_zip()
    res = script("/data/services/import?dest=/archive/projects/p1/subjects/SUBJ/"
                 "experiments/MR_1", data=body, headers=ZIP)
    assert lines(res) == ["/data/archive/projects/p1/subjects/SUBJ/experiments/MR_1"]
    item = script.get(lines(res)[0] + "?format=json").get_json()["items"][0]
    assert item["meta"]["xsi:type"] == "xnat:mrSessionData"
    assert item["data_fields"]["label"] == "MR_1" and item["data_fields"]["UID"] == uid
    with app.app_context():
        assert not db.session.scalars(select(PrearchiveSession)).all()
        stored = {r.sop_instance_uid for r in db.session.scalars(
            select(File).where(File.sop_instance_uid.isnot(None)))}
    # (the site's anonymization script rewrites the files; the instances stay)
    assert stored == {dcmread(io.BytesIO(d)).SOPInstanceUID for d in files}

    # The same label again is a conflict, unless asked to merge into it.
    again = script("/data/services/import?dest=/archive/projects/p1/subjects/SUBJ/"
                   "experiments/MR_1", data=body, headers=ZIP)
    assert again.status_code == 409 and "already exists" in again.get_json()["error"]
    _, more, body2 = study_zip(series=1, per_series=2)
    merged = script("/data/services/import?project=p1&subject=SUBJ&session=MR_1"
                    "&auto-archive=true&overwrite=append", data=body2, headers=ZIP)
    assert lines(merged) == ["/data/archive/projects/p1/subjects/SUBJ/experiments/MR_1"]
    with app.app_context():
        assert db.session.scalar(select(ImagingSession)).label == "MR_1"
        assert len(db.session.scalars(select(File).where(
            File.sop_instance_uid.isnot(None))).all()) == len(files) + len(more)


def test_auto_archive_uses_the_labels_from_the_headers(script, worker):
    _, _, body = study_zip(patient_id="HDR1")
    # As curl --data-binary sends it: labelled a form.
    res = script("/data/services/import?project=p1&AA=true", data=body,
                 content_type="application/x-www-form-urlencoded")
    assert lines(res) == ["/data/archive/projects/p1/subjects/DOE_JOHN/experiments/HDR1"]


def test_gradual_dicom_files_sent_one_by_one_join_one_receiving_session(app, script,
                                                                        worker):
    uid = "1.2.826.0.1.3680043.8.498.4242"
    first = make_series(uid, 3, series_number=1, patient_id="GRAD")
    second = make_series(uid, 2, series_number=2, patient_id="GRAD")
    answers = set()
    for data in first + second + first[:1]:  # the last one is sent twice
        res = script("/data/services/import?project=p1&subject=SUBJ&import-handler="
                     "gradual-DICOM", data=data, headers={"Content-Type": "application/dicom"})
        answers.update(lines(res))
    assert len(answers) == 1
    (uri,) = answers
    assert uri.startswith("/data/prearchive/projects/p1/") and uri.endswith("/GRAD")
    with app.app_context():
        (ps,) = db.session.scalars(select(PrearchiveSession)).all()
        assert (ps.status, ps.source, ps.subject, ps.file_count) == ("RECEIVING", "rest",
                                                                     "SUBJ", 5)
        assert not db.session.scalars(select(Upload)).all()  # filed as the receiver files
    folder = Path(app.config["DATA_DIR"]) / "prearchive" / uri.split("/prearchive/projects/")[1]
    assert len(list(folder.rglob("*.dcm"))) == 5

    # Once no file came for SCANYARD_SESSION_IDLE_SECONDS, the session is built.
    with app.app_context():
        from workers.receiving import build_idle_sessions

        assert build_idle_sessions(0) == [ps.id]
    item = _settled(script, uri)
    assert item["data_fields"]["status"] == "READY"
    assert [(s["data_fields"]["id"], s["data_fields"]["files"])
            for s in item["children"][0]["items"]] == [("1", 3), ("2", 2)]


def _settled(script, uri: str, seconds: float = 30) -> dict:
    """Return the prearchive session at `uri` once no job holds it."""
    import time

    deadline = time.monotonic() + seconds
    while True:
        (item,) = script.get(uri).get_json()["items"]
        if item["data_fields"]["status"] in ("READY", "CONFLICT", "ERROR") \
                or time.monotonic() > deadline:
            return item
        time.sleep(0.1)


def test_a_gradual_body_that_is_not_dicom_is_refused_and_kept_in_quarantine(app, script):
    res = script("/data/services/import?project=p1&import-handler=gradual-DICOM",
                 data=b"not an instance")
    assert res.status_code == 400 and "DICOM" in res.get_json()["error"]
    kept = list((Path(app.config["DATA_DIR"]) / "quarantine").rglob("instance.dcm"))
    assert [p.read_bytes() for p in kept] == [b"not an instance"]


def test_a_body_that_cannot_be_read_is_refused_with_a_reason(script, worker):
    res = script("/data/services/import?project=p1", data=b"just some text\n" * 10)
    assert res.status_code == 400
    assert "neither a zip or tar archive nor a DICOM" in res.get_json()["error"]
    empty = script("/data/services/import?project=p1", data=b"")
    assert empty.status_code == 400 and "no body" in empty.get_json()["error"]
    unreadable = script("/data/services/import?project=p1",
                        data=zip_bytes({"notes.txt": b"hello"}), headers=ZIP)
    assert unreadable.status_code == 400 and unreadable.is_json


def test_past_the_wait_the_answer_is_202_and_the_upload_to_follow(app, script, run_jobs):
    app.config["IMPORT_WAIT_SECONDS"] = 0  # and no worker runs: the job waits
    _, _, body = study_zip()
    res = script("/data/services/import?project=p1", data=body, headers=ZIP)
    assert res.status_code == 202
    follow = res.get_data(as_text=True).strip()
    assert follow.startswith("/api/uploads/") and res.headers["Location"] == follow
    waiting = script.get(follow).get_json()
    assert (waiting["status"], waiting["progress"], waiting["sessions"]) == ("QUEUED", 0.0, [])
    run_jobs()
    report = script.get(follow).get_json()
    assert report["status"] == "DONE" and report["stored"] == 4
    assert report["sessions"][0]["uri"].startswith("/data/prearchive/projects/p1/")


def test_import_parameters_are_checked_before_the_body_is_stored(app, script, make_user,
                                                                 api_headers):
    _, _, body = study_zip()
    for query, code in (("", 400),  # no project
                        ("project=p1&import-handler=magic", 400),
                        ("project=p1&overwrite=sometimes", 400),
                        ("project=p1&subject=bad%20label", 400),
                        ("dest=/elsewhere/p1", 400),
                        ("project=p1&import-handler=gradual-DICOM&auto-archive=true", 501),
                        ("project=nope", 404)):
        res = script(f"/data/services/import?{query}", data=body, headers=ZIP)
        assert res.status_code == code and res.is_json, (query, res.data)
    make_user("guest", project="p1", role="collaborator")
    guest = app.test_client().post("/data/services/import?project=p1", data=body,
                                   headers={**api_headers("guest"), **ZIP})
    assert guest.status_code == 403
    assert app.test_client().post("/data/services/import?project=p1",
                                  data=body).status_code == 401
    assert not list((Path(app.config["DATA_DIR"]) / "uploads").iterdir())


def test_a_multipart_file_is_imported_too(script, worker):
    _, _, body = study_zip(patient_id="MULTI")
    res = script("/data/services/import?project=p1", content_type="multipart/form-data",
                 data={"file": (io.BytesIO(body), "study.zip")})
    assert [u.rsplit("/", 1)[1] for u in lines(res)] == ["MULTI"]


def test_xnatpy_style_import_against_a_live_server(live_server, app, make_project,
                                                   make_user, worker):
    """The HTTP call xnatpy's services.import_ makes: raw body, zip content type."""
    make_project("p1")
    make_user("lab", project="p1", role="owner")
    _, _, body = study_zip(patient_id="LIVE")
    from tests.conftest import PASSWORD

    res = requests.post(f"{live_server}/data/services/import",
                        params={"project": "p1", "subject": "S_LIVE", "session": "LIVE_1",
                                "import-handler": "DICOM-zip", "overwrite": "none"},
                        data=body, headers=ZIP, auth=("lab", PASSWORD), timeout=60)
    assert res.status_code == 200, res.text
    assert res.text.strip().startswith("/data/prearchive/projects/p1/")
    assert res.text.strip().endswith("/LIVE_1")


def test_flask_import_reads_a_folder_without_changing_it(app, runner, make_project, tmp_path):
    make_project("p1")
    _, files = make_study(series=2, per_series=2, patient_id="DISK1")
    source = tmp_path / "inbox"
    write_files(source / "dicom", files)
    (source / "notes.txt").write_text("not an image")
    before = {p: p.read_bytes() for p in source.rglob("*") if p.is_file()}
    result = runner.invoke(args=["import", str(source), "--project", "p1", "--subject", "SUB"])
    assert result.exit_code == 0, result.output
    assert "No worker is running" in result.output
    assert "Files: 5 read; 4 stored, 0 duplicate(s), 1 quarantined" in result.output
    assert "quarantined notes.txt" in result.output
    assert "/data/prearchive/projects/p1/" in result.output
    assert {p: p.read_bytes() for p in source.rglob("*") if p.is_file()} == before
    with app.app_context():
        (ps,) = db.session.scalars(select(PrearchiveSession)).all()
        assert (ps.subject, ps.session, ps.file_count, ps.source) == ("SUB", "DISK1", 4, "cli")


def test_flask_import_archives_an_archive_file(app, runner, make_project, tmp_path):
    make_project("p1")
    _, _, body = study_zip(patient_id="DISK2")
    archive = tmp_path / "study.zip"
    archive.write_bytes(body)
    result = runner.invoke(args=["import", str(archive), "--project", "p1", "--session",
                                 "S2", "--archive"])
    assert result.exit_code == 0, result.output
    assert "/data/archive/projects/p1/subjects/DOE_JOHN/experiments/S2" in result.output
    assert archive.read_bytes() == body
    bad = runner.invoke(args=["import", str(archive), "--project", "nope"])
    assert bad.exit_code != 0 and "No project 'nope'" in bad.output
