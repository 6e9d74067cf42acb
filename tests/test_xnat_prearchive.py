"""The prearchive services: list, show, delete, archive and move prearchive
sessions as XNAT's REST API does."""
from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import select

from models import ImagingSession, PrearchiveSession, db
from tests.dicomgen import make_study, zip_bytes
from workers import prearchive


@pytest.fixture
def lab(app, make_project, make_user, api_headers, worker):
    """Projects p1 and p2, an owner of both, a collaborator of p1, and one READY
    prearchive session in p1 (two series) made by the import service."""
    make_project("p1")
    make_project("p2")
    make_user("boss", project="p1", role="owner")
    make_user("guest", project="p1", role="collaborator")
    with app.app_context():
        from models import Membership, Project, User
        boss = db.session.scalar(select(User).filter_by(username="boss"))
        p2 = db.session.scalar(select(Project).filter_by(label="p2"))
        db.session.add(Membership(project_id=p2.id, user_id=boss.id, role="owner"))
        db.session.commit()
    client, headers = app.test_client(), api_headers("boss")

    def call(method, url, **kw):
        return client.open(url, method=method, headers={**headers, **kw.pop("headers", {})},
                           **kw)
    uri = new_session(call)
    return call, uri


def new_session(call, patient_id="PRE1") -> str:
    _, files = make_study(series=2, per_series=2, patient_id=patient_id)
    res = call("POST", "/data/services/import?project=p1",
               data=zip_bytes({f"{n}.dcm": d for n, d in enumerate(files)}),
               headers={"Content-Type": "application/zip"})
    assert res.status_code == 200, res.data
    return res.get_data(as_text=True).strip()


def test_the_prearchive_lists_sessions_with_xnat_fields(lab):
    call, uri = lab
    project, timestamp, folder = uri.split("/")[4:]
    res = call("GET", "/data/prearchive/projects?format=json")
    assert res.status_code == 200
    (row,) = res.get_json()["ResultSet"]["Result"]
    assert row.pop("tag").startswith("1.2.826.0.1.3680043")
    assert row.pop("uploaded") and row.pop("lastmod")
    assert row == {"project": "p1", "timestamp": timestamp, "name": folder,
                   "folderName": folder, "subject": "DOE_JOHN", "session": "PRE1",
                   "status": "READY", "url": f"/prearchive/projects/p1/{timestamp}/{folder}",
                   "scan_date": "2024-01-15", "scan_time": "", "autoarchive": "None",
                   "prevent_anon": "false", "prevent_auto_commit": "false", "SOURCE": "rest"}
    assert call("GET", "/data/prearchive/projects/p1").get_json()["ResultSet"][
        "totalRecords"] == "1"
    assert call("GET", "/data/prearchive/projects/p2").get_json()["ResultSet"][
        "totalRecords"] == "0"
    table = call("GET", "/data/prearchive/projects?format=csv&columns=name,status")
    assert list(csv.DictReader(io.StringIO(table.get_data(as_text=True)))) == [
        {"name": "PRE1", "status": "READY"}]


def test_one_prearchive_session_is_shown_and_zipped(lab):
    call, uri = lab
    (item,) = call("GET", uri).get_json()["items"]
    assert item["data_fields"]["session"] == "PRE1"
    (scans,) = item["children"]
    assert [(s["data_fields"]["id"], s["data_fields"]["files"]) for s in scans["items"]] == [
        ("1", 2), ("2", 2)]
    res = call("GET", uri + "?format=zip")
    with zipfile.ZipFile(io.BytesIO(res.data)) as zf:
        names = zf.namelist()
    dicom = [n for n in names if "/DICOM/" in n]  # the scans' snapshots may come too
    assert len(dicom) == 4 and all(n.startswith("PRE1/SCANS/") for n in names)


def test_deleting_a_prearchive_session_removes_it(app, lab):
    call, uri = lab
    res = call("DELETE", uri)
    assert res.status_code == 200 and res.get_data(as_text=True).strip() == uri
    assert call("GET", uri).status_code == 404
    second = new_session(call, "PRE2")
    res = call("POST", f"/data/services/prearchive/delete?src={second}")
    assert res.status_code == 200
    with app.app_context():
        assert not db.session.scalars(select(PrearchiveSession)).all()
    assert not list((Path(app.config["DATA_DIR"]) / "prearchive").rglob("*.dcm"))


def test_commit_archives_and_answers_the_archive_uri(app, lab):
    call, uri = lab
    res = call("POST", uri + "?action=commit&subject=S7&session=E7")
    assert res.status_code == 200, res.data
    assert res.get_data(as_text=True).strip() == \
        "/data/archive/projects/p1/subjects/S7/experiments/E7"
    with app.app_context():
        assert db.session.scalar(select(ImagingSession).filter_by(label="E7")).subject.label \
            == "S7"


def test_the_archive_service_archives_to_dest_and_merges_on_request(app, lab):
    call, uri = lab
    res = call("POST", f"/data/services/archive?src={uri}"
                       "&dest=/archive/projects/p2/subjects/S1/experiments/E1")
    assert res.get_data(as_text=True).strip() == \
        "/data/archive/projects/p2/subjects/S1/experiments/E1"
    second = new_session(call, "PRE2")
    refused = call("POST", f"/data/services/archive?src={second}&project=p2&subject=S1"
                           "&session=E1")
    assert refused.status_code == 409 and "already exists" in refused.get_json()["error"]
    merged = call("POST", f"/data/services/archive?src={second}&project=p2&subject=S1"
                          "&session=E1&overwrite=append")
    assert merged.status_code == 200, merged.data
    with app.app_context():
        session = db.session.scalar(select(ImagingSession).filter_by(label="E1"))
        assert session.project.label == "p2"
        assert sum(s.instance_count for s in session.scans) == 8


def test_move_sends_a_session_to_another_projects_prearchive(app, lab):
    call, uri = lab
    res = call("POST", f"/data/services/prearchive/move?src={uri}&newProject=p2")
    assert res.status_code == 200, res.data
    moved = res.get_data(as_text=True).strip()
    assert moved == uri.replace("/projects/p1/", "/projects/p2/")
    assert call("GET", moved).status_code == 200
    back = call("POST", moved + "?action=move&newProject=p1")
    assert back.get_data(as_text=True).strip() == uri, (back.status_code, _row_of(app, uri))


def _row_of(app, uri: str) -> dict:
    """The prearchive row of a session and its record's last log lines (to
    tell why a job left it where it was)."""
    with app.app_context():
        ps = db.session.scalar(select(PrearchiveSession).filter_by(
            folder=uri.rsplit("/", 1)[1]))
        record = prearchive.load_record(ps) if ps is not None else {}
        return {"status": ps and ps.status, "project": ps and ps.project,
                "log": record.get("log", [])[-3:], "message": record.get("message")}


def test_build_and_rebuild_read_the_folder_again(app, lab):
    call, uri = lab
    for res in (call("POST", uri + "?action=build"),
                call("POST", f"/data/services/prearchive/rebuild?src={uri}")):
        assert res.status_code == 200, res.data
        assert res.get_data(as_text=True).strip() == uri
        (item,) = call("GET", uri).get_json()["items"]
        assert item["data_fields"]["status"] == "READY"
        assert [s["data_fields"]["files"] for s in item["children"][0]["items"]] == [2, 2]


def test_prearchive_services_check_who_asks(app, lab, api_headers):
    call, uri = lab
    guest = app.test_client()
    headers = api_headers("guest")
    assert guest.get("/data/prearchive/projects", headers=headers).get_json()[
        "ResultSet"]["Result"] == []
    assert guest.get("/data/prearchive/projects/p1", headers=headers).status_code == 403
    assert guest.get(uri, headers=headers).status_code == 404
    assert guest.delete(uri, headers=headers).status_code == 404
    assert guest.get("/data/prearchive/projects/_unassigned", headers=headers).status_code \
        == 403
    res = call("POST", "/data/services/archive?src=/somewhere/else")
    assert res.status_code == 400 and res.is_json


def test_the_prearchive_code_is_set_through_rest_by_owners(app, make_project, make_user):
    import base64

    from models import Project

    make_project("coded")
    make_user("own", project="coded", role="owner")
    make_user("mem", project="coded", role="member")
    client = app.test_client()

    def auth(name):
        from tests.conftest import PASSWORD

        return {"Authorization": "Basic " + base64.b64encode(
            f"{name}:{PASSWORD}".encode()).decode()}

    assert client.put("/data/projects/coded/prearchive_code/4",
                      headers=auth("mem")).status_code == 403
    res = client.put("/data/projects/coded/prearchive_code/4", headers=auth("own"))
    assert res.status_code == 200 and res.get_data(as_text=True) == "4"
    assert client.put("/data/projects/coded/prearchive_code/3",
                      headers=auth("own")).status_code == 400
    assert client.get("/data/projects/coded/prearchive_code",
                      headers=auth("mem")).get_data(as_text=True) == "4"
    with app.app_context():
        assert db.session.scalar(select(Project.prearchive_code).filter_by(label="coded")) == 4
