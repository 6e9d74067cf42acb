"""Bad uploads get a clear message, and nothing already stored changes."""
from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import func, select

from models import PrearchiveSession, Upload, db
from tests.dicomgen import make_study, zip_bytes
from tests.test_upload_flow import upload


def _stored_files(app) -> set[Path]:
    data = Path(app.config["DATA_DIR"])
    return {p for sub in ("prearchive", "archive") for p in (data / sub).rglob("*") if p.is_file()}


@pytest.fixture
def with_one_session(app, client, run_jobs, make_project):
    """A project with one good prearchive session already stored."""
    make_project("study1")
    _, files = make_study(series=1, per_series=2)
    upload(client, zip_bytes({f"{n}.dcm": d for n, d in enumerate(files)}))
    run_jobs()
    return _stored_files(app)


def _failed_upload(app, client, run_jobs, data, name="bad.zip"):
    res = upload(client, data, name=name)
    assert res.status_code == 202, res.get_data(as_text=True)
    run_jobs()
    report = client.get(res.get_json()["api"]).get_json()
    return report


def _zip_with(name: str, data: bytes = b"x") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(zipfile.ZipInfo(name), data)
    return buf.getvalue()


@pytest.mark.parametrize("name, expected", [
    ("../../evil.dcm", "outside"),
    ("/etc/evil.dcm", "outside"),
])
def test_zip_slip_is_refused(app, client, run_jobs, with_one_session, name, expected):
    report = _failed_upload(app, client, run_jobs, _zip_with(name))
    assert report["status"] == "FAILED"
    assert expected in report["error"]
    assert _stored_files(app) == with_one_session
    assert not (Path(app.config["DATA_DIR"]).parent / "evil.dcm").exists()


def test_zip_bomb_is_refused(app, client, run_jobs, with_one_session):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.dcm", b"\0" * (64 << 20))
    report = _failed_upload(app, client, run_jobs, buf.getvalue())
    assert report["status"] == "FAILED"
    assert "zip bomb" in report["error"]
    assert _stored_files(app) == with_one_session


def test_truncated_zip_is_reported_as_damaged(app, client, run_jobs, with_one_session):
    _, files = make_study(series=1, per_series=5)
    data = zip_bytes({f"{n}.dcm": d for n, d in enumerate(files)})
    report = _failed_upload(app, client, run_jobs, data[: len(data) // 2])
    assert report["status"] == "FAILED"
    assert report["error"]
    assert _stored_files(app) == with_one_session


def test_tar_with_a_symlink_is_refused(app, client, run_jobs, with_one_session):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("link.dcm")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tf.addfile(info)
    report = _failed_upload(app, client, run_jobs, buf.getvalue(), name="x.tar.gz")
    assert report["status"] == "FAILED"
    assert "link" in report["error"]
    assert _stored_files(app) == with_one_session


def test_junk_named_dcm_is_quarantined_with_its_reason(app, client, run_jobs, make_project):
    make_project("study1")
    _, files = make_study(series=1, per_series=3)
    entries = {f"{n}.dcm": d for n, d in enumerate(files)}
    entries["junk.dcm"] = b"this is not DICOM" * 20
    entries["notes.txt"] = b"scanner notes"
    report = _failed_upload(app, client, run_jobs, zip_bytes(entries))
    assert report["status"] == "DONE"
    assert report["stored"] == 3 and report["quarantined"] == 2
    assert report["stored"] + report["duplicates"] + report["quarantined"] == 5
    reasons = {q["name"]: q["reason"] for q in report["quarantined_files"]}
    assert set(reasons) == {"junk.dcm", "notes.txt"}
    assert all("DICOM" in r for r in reasons.values())
    quarantine = Path(app.config["DATA_DIR"]) / "quarantine" / report["id"]
    assert (quarantine / "junk.dcm").read_bytes() == entries["junk.dcm"]


def test_zip_without_dicom_fails_and_keeps_the_files_in_quarantine(app, client, run_jobs,
                                                                   with_one_session):
    report = _failed_upload(app, client, run_jobs,
                            zip_bytes({"a.txt": b"hello", "b.bin": b"\x01\x02"}))
    assert report["status"] == "FAILED"
    assert "No DICOM" in report["error"]
    assert report["quarantined"] == 2
    assert _stored_files(app) == with_one_session


def test_same_file_twice_in_one_zip_is_a_duplicate(app, client, run_jobs, make_project):
    make_project("study1")
    _, files = make_study(series=1, per_series=2)
    entries = {"a/1.dcm": files[0], "b/1.dcm": files[0], "a/2.dcm": files[1]}
    report = _failed_upload(app, client, run_jobs, zip_bytes(entries))
    assert (report["stored"], report["duplicates"], report["quarantined"]) == (2, 1, 0)


def test_form_without_a_project_is_refused(app, client, make_project):
    make_project("study1")
    _, files = make_study(series=1, per_series=1)
    res = upload(client, zip_bytes({"1.dcm": files[0]}), project="")
    assert res.status_code == 400
    assert "Choose a project" in res.get_json()["error"]
    assert not any((Path(app.config["DATA_DIR"]) / "uploads").iterdir())
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Upload)) == 0


def test_form_in_a_browser_shows_the_error_on_the_page(app, client, make_project):
    make_project("study1")
    res = client.post("/upload", data={"project": "study1", "subject": "../etc",
                                       "date_unknown": "1",
                                       "file": (io.BytesIO(b"x"), "a.zip")},
                      content_type="multipart/form-data")
    assert res.status_code == 400
    assert b"may only contain" in res.data


@pytest.mark.parametrize("field", ["subject", "session"])
def test_label_with_dot_dot_is_refused(app, client, make_project, field):
    make_project("study1")
    res = upload(client, b"PK", **{field: "../x"})
    assert res.status_code == 400
    assert "may only contain" in res.get_json()["error"]


def test_unknown_project_is_refused(app, client):
    res = upload(client, b"PK", project="nope")
    assert res.status_code == 404


def test_missing_date_and_no_date_unknown_is_refused(app, client, make_project):
    make_project("study1")
    res = upload(client, b"PK", date_unknown="")
    assert res.status_code == 400
    assert "date" in res.get_json()["error"]


def test_missing_file_is_refused(app, client, make_project):
    make_project("study1")
    res = client.post("/upload", data={"project": "study1", "date_unknown": "1"},
                      headers={"Accept": "application/json"})
    assert res.status_code == 400


def test_session_date_that_differs_from_the_header_is_reported(app, client, run_jobs,
                                                               make_project):
    make_project("study1")
    _, files = make_study(series=1, per_series=1, study_date="20240115")
    res = upload(client, zip_bytes({"1.dcm": files[0]}), date_unknown="",
                 session_date="2024-02-01")
    run_jobs()
    report = client.get(res.get_json()["api"]).get_json()
    assert any("differs from the study date" in m for m in report["messages"])
    with app.app_context():
        ps = db.session.scalar(select(PrearchiveSession))
        assert str(ps.scan_date) == "2024-02-01"


def test_project_labels_are_checked(app, client):
    res = client.post("/projects/new", data={"label": "bad label/.."})
    assert res.status_code == 400
    assert b"may only contain" in res.data
    assert client.post("/projects/new", data={"label": "good"}).status_code == 303
    assert client.post("/projects/new", data={"label": "good"}).status_code == 409
    assert client.post("/projects/new", data={"label": "SCANS"}).status_code == 400


def test_unknown_pages_answer_404(app, client):
    assert client.get("/projects/none").status_code == 404
    assert client.get("/prearchive/999").status_code == 404
    assert client.get("/api/uploads/nope").status_code == 404
    assert client.get("/api/uploads/nope").get_json()["error"]
