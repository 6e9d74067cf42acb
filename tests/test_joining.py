"""Uploads of a study that waits in the prearchive join its session: the web
and the DICOM receiver fill one session, duplicates are stored once, and an
instance with other bytes is a conflict unless the upload says overwrite."""
from __future__ import annotations

import io
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from models import File, ImagingSession, PrearchiveSession, db
from tests.dicomgen import make_series, write_files, zip_bytes
from tests.scpnet import send
from tests.test_scp_receiving import scp, settle  # noqa: F401  (the receiver fixture)


def upload(client, files: list[bytes], **fields) -> dict:
    res = client.post("/upload", headers={"Accept": "application/json"},
                      content_type="multipart/form-data", data={
                          "project": "p1", "subject": "S1", "session": "MR1",
                          "date_unknown": "1", **fields, "file": (io.BytesIO(zip_bytes(
                              {f"{n}.dcm": d for n, d in enumerate(files)})), "x.zip")})
    assert res.status_code == 202
    return res.get_json()


def report(client, res) -> dict:
    return client.get(res["api"]).get_json()


def sessions(app):
    with app.app_context():
        return db.session.scalars(select(PrearchiveSession)).all()


def test_the_same_zip_twice_reports_all_duplicates_and_stores_nothing_new(
        app, client, run_jobs, make_project):
    make_project("p1")
    files = make_series(generate_uid(), 4) + make_series("1.2.3", 0)
    upload(client, files)
    run_jobs()
    second = upload(client, files)
    run_jobs()
    got = report(client, second)
    assert (got["status"], got["stored"], got["duplicates"], got["quarantined"]) == \
        ("DONE", 0, 4, 0)
    (ps,) = sessions(app)
    assert ps.file_count == 4 and ps.status == "READY"
    assert len(list((Path(app.config["DATA_DIR"]) / "prearchive").rglob("*.dcm"))) == 4


def _other_bytes(data: bytes) -> bytes:
    ds = dcmread(io.BytesIO(data))
    ds.ImageComments = "reprocessed"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_an_instance_with_other_bytes_is_a_conflict_and_overwrite_replaces_it(
        app, client, run_jobs, make_project):
    make_project("p1")
    files = make_series(generate_uid(), 3)
    upload(client, files)
    run_jobs()
    changed = _other_bytes(files[0])
    res = upload(client, [changed])
    run_jobs()
    got = report(client, res)
    assert got["quarantined"] == 1 and "other bytes" in got["quarantined_files"][0]["reason"]
    (ps,) = sessions(app)
    assert ps.status == "CONFLICT" and "upload it again with overwrite" in ps.message
    page = client.get(f"/prearchive/{ps.id}")
    assert b"Conflicts" in page.data
    got = upload(client, [changed], overwrite="1")
    run_jobs()
    assert report(client, got)["stored"] == 1
    stored = sorted((Path(app.config["DATA_DIR"]) / "prearchive").rglob("*.dcm"))
    assert len(stored) == 3
    assert sum(dcmread(p).get("ImageComments") == "reprocessed" for p in stored) == 1


def test_half_a_study_from_the_web_and_half_from_the_receiver_make_one_archived_session(
        app, client, run_jobs, make_project, scp, tmp_path):  # noqa: F811
    make_project("p1")
    uid = generate_uid()
    web_half = make_series(uid, 4, series_number=1, StudyDescription="p1")
    scp_half = make_series(uid, 4, series_number=2, StudyDescription="p1")
    upload(client, web_half)
    run_jobs()
    paths = write_files(tmp_path / "send", scp_half + web_half[:1])  # one instance twice
    assert send(scp.port, paths) == [0] * 5
    settle(app, scp, run_jobs)
    (ps,) = sessions(app)
    assert ps.file_count == 8 and ps.status == "READY", (ps.status, ps.message)
    client.post(f"/prearchive/{ps.id}/archive")
    run_jobs()
    with app.app_context():
        session = db.session.scalar(select(ImagingSession))
        assert sorted((s.scan_id, s.instance_count) for s in session.scans) == \
            [("1", 4), ("2", 4)]
        uids = db.session.scalars(select(File.sop_instance_uid).filter_by(format="DICOM")).all()
        assert len(uids) == 8 and len(set(uids)) == 8
