"""Any file as a resource of a project, subject, session or scan: upload with
format, content and tags, list, download, header summaries, delete."""
from __future__ import annotations

import io
from pathlib import Path

import nibabel
import numpy as np
import pytest
from nibabel.testing import data_path
from sqlalchemy import select

from models import File, ImagingSession, Resource, Scan, Subject, db
from tests.dicomgen import zip_bytes

DATA = Path(data_path)
JSON = {"Accept": "application/json"}
SESSION_URL = "/projects/study1/sessions/MR1"
SCAN_URL = SESSION_URL + "/scans/2"


@pytest.fixture
def archived(app, make_project):
    """An archived session MR1 of subject SUB1 in project study1, with scan 2."""
    make_project("study1")
    with app.app_context():
        from models import Project

        project = db.session.scalar(select(Project).filter_by(label="study1"))
        subject = Subject(project_id=project.id, label="SUB1")
        db.session.add(subject)
        db.session.flush()
        session = ImagingSession(project_id=project.id, subject_id=subject.id, label="MR1")
        db.session.add(session)
        db.session.flush()
        db.session.add(Scan(session_id=session.id, scan_id="2"))
        db.session.commit()
    return Path(app.config["DATA_DIR"]) / "archive" / "study1"


def send(client, url, files: dict[str, bytes], resource="BEHAVIOUR", **fields):
    form = {"resource": resource, **fields,
            "files": [(io.BytesIO(data), name) for name, data in files.items()]}
    return client.post(url + "/resources", data=form, content_type="multipart/form-data",
                       headers=JSON)


def test_files_uploaded_with_tags_are_listed_downloaded_and_deleted(app, client, archived):
    res = send(client, SESSION_URL, {"run1.csv": b"trial,rt\n1,0.4\n", "run2.csv": b"x"},
               format="CSV", content="task responses", tags="nback, day1")
    assert res.status_code == 201, res.get_data(as_text=True)
    assert res.get_json() == {"resource": "BEHAVIOUR", "files": ["run1.csv", "run2.csv"],
                              "problems": []}
    folder = archived / "SUB1/MR1/RESOURCES/BEHAVIOUR"
    assert (folder / "run1.csv").read_bytes() == b"trial,rt\n1,0.4\n"
    with app.app_context():
        resource = db.session.scalar(select(Resource))
        assert (resource.format, resource.content, resource.tags) == (
            "CSV", "task responses", "nback, day1")
        assert resource.session_id is not None and resource.scan_id is None
        assert [f.tags for f in resource.files] == ["nback, day1"] * 2
    page = client.get(SESSION_URL + "/resources")
    assert b"run1.csv" in page.data and b"nback, day1" in page.data
    got = client.get(SESSION_URL + "/resources/BEHAVIOUR/files/run1.csv")
    assert got.status_code == 200 and got.data == b"trial,rt\n1,0.4\n"

    assert client.post(SESSION_URL + "/resources/BEHAVIOUR/files/run1.csv/delete").status_code \
        == 303
    assert not (folder / "run1.csv").exists()
    assert client.get(SESSION_URL + "/resources/BEHAVIOUR/files/run1.csv").status_code == 404
    assert client.post(SESSION_URL + "/resources/BEHAVIOUR/delete").status_code == 303
    assert not folder.exists()
    with app.app_context():
        assert db.session.scalar(select(Resource)) is None
        assert db.session.scalar(select(File)) is None


@pytest.mark.parametrize(("url", "folder"), [
    ("/projects/study1", "RESOURCES/REPORTS"),
    ("/projects/study1/subjects/SUB1", "SUB1/RESOURCES/REPORTS"),
    (SESSION_URL, "SUB1/MR1/RESOURCES/REPORTS"),
    (SCAN_URL, "SUB1/MR1/SCANS/2/REPORTS"),
])
def test_a_zip_is_unpacked_into_the_owners_resource_folder(client, archived, url, folder):
    data = zip_bytes({"notes/a.txt": b"first", "b.pdf": b"%PDF-1.4"})
    res = send(client, url, {"reports.zip": data}, resource="REPORTS", unpack="1")
    assert res.status_code == 201, res.get_data(as_text=True)
    assert sorted(res.get_json()["files"]) == ["b.pdf", "notes/a.txt"]
    assert (archived / folder / "notes/a.txt").read_bytes() == b"first"
    assert client.get(url + "/resources/REPORTS/files/notes/a.txt").data == b"first"


def test_a_zip_not_unpacked_is_stored_as_one_file(client, archived):
    res = send(client, SESSION_URL, {"raw.zip": zip_bytes({"a": b"1"})})
    assert res.get_json()["files"] == ["raw.zip"]


def test_a_nifti_in_a_scan_resource_shows_its_header_summary_escaped(app, client, archived):
    img = nibabel.Nifti1Image(np.zeros((4, 5, 6), dtype=np.float32), np.diag([2, 2, 3, 1]))
    img.header["descrip"] = b"<script>alert(1)</script>"
    buf = io.BytesIO(img.to_bytes())
    res = send(client, SCAN_URL, {"t1.nii": buf.getvalue()}, resource="NIFTI")
    assert res.status_code == 201
    with app.app_context():
        row = db.session.scalar(select(File))
        assert (row.format, row.header["dimensions"]) == ("NIFTI", [4, 5, 6])
    page = client.get(SCAN_URL + "/resources/NIFTI/details/t1.nii").get_data(as_text=True)
    assert "4 × 5 × 6" in page and "2.0 × 2.0 × 3.0" in page and "RAS" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert" not in page
    scan_page = client.get(SCAN_URL).get_data(as_text=True)
    assert "/resources/NIFTI/details/t1.nii" in scan_page


def test_an_analyze_pair_keeps_together_and_a_lonely_header_is_stored_with_a_note(
        app, client, archived):
    hdr = (DATA / "analyze.hdr").read_bytes()
    res = send(client, SESSION_URL, {"a.hdr": hdr, "a.img": bytes(91 * 109 * 91),
                                     "b.hdr": hdr}, resource="ANALYZE")
    body = res.get_json()
    assert sorted(body["files"]) == ["a.hdr", "a.img", "b.hdr"]
    assert body["problems"] == [{"name": "b.hdr",
                                 "reason": 'The Analyze header "b.hdr" has no "b.img" beside '
                                           "it."}]
    with app.app_context():
        rows = {f.path: f for f in db.session.scalars(select(File))}
        assert rows["a.hdr"].header["dimensions"] == [91, 109, 91, 1]
        assert (rows["b.hdr"].format, rows["b.hdr"].header) == (None, None)


def test_a_name_already_in_the_resource_is_not_overwritten(client, archived):
    send(client, SESSION_URL, {"x.csv": b"old"})
    res = send(client, SESSION_URL, {"x.csv": b"new"})
    assert res.get_json()["problems"][0]["name"] == "x.csv"
    assert client.get(SESSION_URL + "/resources/BEHAVIOUR/files/x.csv").data == b"old"


@pytest.mark.parametrize(("resource", "files", "message"), [
    ("bad label!", {"x.csv": b"1"}, "Resource label"),
    ("SCANS", {"x.csv": b"1"}, "reserved"),
    ("PHYSIO", {}, "Choose one or more files"),
    ("PHYSIO", {"..": b"1"}, "cannot be stored"),
])
def test_bad_resource_uploads_are_refused_with_a_reason(app, client, archived, resource,
                                                         files, message):
    res = send(client, SESSION_URL, files, resource=resource)
    assert res.status_code == 400
    assert message in res.get_json()["error"]
    with app.app_context():
        assert db.session.scalar(select(Resource)) is None


def test_a_page_upload_error_is_shown_in_the_form(client, archived):
    res = client.post(SESSION_URL + "/resources", data={"resource": "a b"},
                      content_type="multipart/form-data")
    assert res.status_code == 400
    assert b"Choose one or more files to upload." in res.data
    assert b'value="a b"' in res.data  # the form keeps what was typed


def test_unknown_owners_and_files_are_404(client, archived):
    assert client.get("/projects/nope/resources").status_code == 404
    assert client.get(SESSION_URL + "/scans/99/resources").status_code == 404
    assert client.get(SESSION_URL + "/resources/NONE/files/x").status_code == 404
