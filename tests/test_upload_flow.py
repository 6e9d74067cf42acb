"""The whole path: upload a zip in the browser form, the jobs read it into the
prearchive, a person archives it, then browses and downloads it."""
from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pydicom
from sqlalchemy import select

from models import File, ImagingSession, PrearchiveSession, Resource, Scan, Upload, db
from tests.dicomgen import make_study, zip_bytes


def upload(client, data: bytes, name="study.zip", **fields):
    form = {"project": "study1", "subject": "", "session": "", "session_date": "",
            "date_unknown": "1", **fields}
    form["file"] = (io.BytesIO(data), name)
    return client.post("/upload", data=form, content_type="multipart/form-data",
                       headers={"Accept": "application/json"})


def two_studies():
    uid_a, files_a = make_study(series=2, per_series=3, patient_id="SUBJ_A",
                                patient_name="ALPHA^ANN")
    uid_b, files_b = make_study(series=1, per_series=4, patient_id="SUBJ_B",
                                patient_name="BETA^BOB")
    files = {f"a/{n}.dcm": d for n, d in enumerate(files_a)}
    files.update({f"b/{n}.dcm": d for n, d in enumerate(files_b)})
    return (uid_a, files_a), (uid_b, files_b), files


def test_zip_with_two_studies_makes_two_sessions_that_archive_and_download(
        app, client, run_jobs, make_project):
    make_project("study1")
    (uid_a, files_a), (uid_b, files_b), files = two_studies()
    res = upload(client, zip_bytes(files))
    assert res.status_code == 202, res.get_data(as_text=True)
    upload_id = res.get_json()["id"]
    run_jobs()

    report = client.get(f"/api/uploads/{upload_id}").get_json()
    assert report["status"] == "DONE", report
    assert report["files_total"] == 10
    assert report["stored"] == 10 and report["duplicates"] == 0 and report["quarantined"] == 0
    assert len(report["sessions"]) == 2
    assert all(s["url"].startswith("/prearchive/") for s in report["sessions"])

    with app.app_context():
        rows = db.session.scalars(select(PrearchiveSession)).all()
        by_uid = {ps.study_uid: ps for ps in rows}
        assert set(by_uid) == {uid_a, uid_b}
        ps_a = by_uid[uid_a]
        assert ps_a.status == "READY" and ps_a.project == "study1"
        assert ps_a.subject == "ALPHA_ANN" and ps_a.session == "SUBJ_A"
        assert [s["id"] for s in ps_a.scans] == ["1", "2"]
        assert [s["files"] for s in ps_a.scans] == [3, 3]
        assert by_uid[uid_b].file_count == 4
        ps_id = ps_a.id

    assert client.get("/prearchive/").status_code == 200
    assert b"SUBJ_A" in client.get(f"/prearchive/{ps_id}").data

    res = client.post(f"/prearchive/{ps_id}/archive")
    assert res.status_code == 303
    run_jobs()

    data_dir = Path(app.config["DATA_DIR"])
    with app.app_context():
        assert db.session.get(PrearchiveSession, ps_id) is None
        session = db.session.scalar(select(ImagingSession).filter_by(label="SUBJ_A"))
        assert session.study_uid == uid_a and session.subject.label == "ALPHA_ANN"
        scans = db.session.scalars(select(Scan).filter_by(session_id=session.id)).all()
        assert sorted(s.scan_id for s in scans) == ["1", "2"]
        assert all(s.series_description and s.modality == "MR" for s in scans)
        rows = db.session.scalars(
            select(File).join(Resource).filter(Resource.label == "DICOM")).all()
        assert len(rows) == 6
        for row in rows:
            path = next((data_dir / "archive/study1/ALPHA_ANN/SUBJ_A/SCANS").glob(
                f"*/DICOM/{row.path}"))
            blob = path.read_bytes()
            assert hashlib.sha256(blob).hexdigest() == row.sha256
            assert len(blob) == row.size
        archived = {hashlib.sha256(r.read_bytes()).hexdigest()
                    for r in (data_dir / "archive").rglob("*.dcm")}
        # The site script (XNAT's default) rewrote the headers, not the images.
        uploaded = {pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID: d for d in files_a}
        for path in (data_dir / "archive").rglob("*.dcm"):
            ds = pydicom.dcmread(path)
            original = pydicom.dcmread(io.BytesIO(uploaded.pop(ds.SOPInstanceUID)))
            assert ds.PixelData == original.PixelData
            assert (ds.StudyDescription, ds.PatientName, ds.PatientID) == \
                ("study1", "ALPHA_ANN", "SUBJ_A")
        assert not uploaded
    assert not list((data_dir / "prearchive/study1").glob("*/SUBJ_A*"))

    res = client.get("/projects/study1/sessions/SUBJ_A/download")
    assert res.status_code == 200
    with zipfile.ZipFile(io.BytesIO(res.data)) as zf:
        downloaded = {hashlib.sha256(zf.read(n)).hexdigest() for n in zf.namelist()
                      if "/DICOM/" in n}
        assert sum("/SNAPSHOTS/" in n for n in zf.namelist()) == 4  # 2 scans, 2 images each
    assert downloaded == archived

    page = client.get("/projects/study1/sessions/SUBJ_A")
    assert page.status_code == 200 and b"series 1" in page.data
    assert b"SUBJ_A" in client.get("/search?q=" + uid_a).data


def test_archiving_onto_an_existing_session_label_is_refused(app, client, run_jobs,
                                                             make_project):
    make_project("study1")
    _, files = make_study(series=1, per_series=2, patient_id="SAME")
    upload(client, zip_bytes({f"{n}.dcm": d for n, d in enumerate(files)}))
    _, files2 = make_study(series=1, per_series=2, patient_id="SAME")
    upload(client, zip_bytes({f"{n}.dcm": d for n, d in enumerate(files2)}))
    run_jobs()
    with app.app_context():
        first, second = db.session.scalars(select(PrearchiveSession)
                                           .order_by(PrearchiveSession.id)).all()
        first_id, second_id = first.id, second.id
    client.post(f"/prearchive/{first_id}/archive")
    run_jobs()
    res = client.post(f"/prearchive/{second_id}/archive")
    assert res.status_code == 409
    assert b"already exists" in res.data
    with app.app_context():
        assert db.session.get(PrearchiveSession, second_id).status == "READY"


def test_labels_can_be_edited_and_deleting_removes_the_session(app, client, run_jobs,
                                                               make_project):
    make_project("study1")
    make_project("other")
    _, files = make_study(series=1, per_series=2)
    upload(client, zip_bytes({f"{n}.dcm": d for n, d in enumerate(files)}))
    run_jobs()
    with app.app_context():
        ps = db.session.scalar(select(PrearchiveSession))
        ps_id, old_dir = ps.id, Path(app.config["DATA_DIR"]) / "prearchive" / ps.relpath
    res = client.post(f"/prearchive/{ps_id}/labels",
                      data={"project": "other", "subject": "S01", "session": "S01_MR1"})
    assert res.status_code == 303
    run_jobs()  # the move to the other project's prearchive is a job
    with app.app_context():
        ps = db.session.get(PrearchiveSession, ps_id)
        assert (ps.project, ps.subject, ps.session) == ("other", "S01", "S01_MR1")
        new_dir = Path(app.config["DATA_DIR"]) / "prearchive" / ps.relpath
    assert new_dir.is_dir() and not old_dir.exists()
    res = client.post(f"/prearchive/{ps_id}/labels", data={"subject": "../x"})
    assert res.status_code == 400
    assert client.get(f"/prearchive/{ps_id}/delete").status_code == 200
    assert client.post(f"/prearchive/{ps_id}/delete").status_code == 303
    run_jobs()
    with app.app_context():
        assert db.session.get(PrearchiveSession, ps_id) is None
    assert not new_dir.exists()


def test_upload_counts_and_progress_are_in_the_upload_row(app, client, run_jobs,
                                                          make_project):
    make_project("study1")
    _, files = make_study(series=3, per_series=10)
    res = upload(client, zip_bytes({f"{n}.dcm": d for n, d in enumerate(files)}))
    with app.app_context():
        row = db.session.get(Upload, res.get_json()["id"])
        assert row.status == "QUEUED"
    run_jobs()
    report = client.get(res.get_json()["api"]).get_json()
    assert report["files_read"] == report["files_total"] == 30
    assert report["stored"] == 30


def test_an_archive_interrupted_after_the_move_is_finished_by_the_reconciler(
        app, client, run_jobs, make_project):
    import datetime as dt

    from imaging import storage
    from workers import prearchive
    from workers.reconcile import reconcile

    make_project("study1")
    _, files = make_study(series=2, per_series=2, patient_id="CRASH")
    upload(client, zip_bytes({f"{n}.dcm": d for n, d in enumerate(files)}))
    run_jobs()
    with app.app_context():
        ps = db.session.scalar(select(PrearchiveSession))
        ps_id = ps.id
        # What the archive job had done when its worker died: the record says
        # where the session goes, the folder moved, no archive rows yet.
        record = prearchive.load_record(ps)
        record["archiving_to"] = {"project": "study1", "subject": ps.subject,
                                  "session": ps.session}
        prearchive.save_record(record)
        storage.move_into(prearchive.session_dir(ps), storage.archive_session_dir(
            app.config["DATA_DIR"], "study1", ps.subject, ps.session))
        ps.status = "ARCHIVING"
        ps.job_id = "lost-job"
        db.session.commit()
        requeued = reconcile(now=dt.datetime.now() + dt.timedelta(minutes=5))
        assert len(requeued) == 1
    run_jobs()
    with app.app_context():
        assert db.session.get(PrearchiveSession, ps_id) is None
        session = db.session.scalar(select(ImagingSession).filter_by(label="CRASH"))
        assert len(session.scans) == 2
        assert db.session.query(File).filter_by(format="DICOM").count() == 4
    data = Path(app.config["DATA_DIR"])
    assert len(list((data / "archive/study1").rglob("*.dcm"))) == 4
    assert not list((data / "prearchive").rglob("*.json"))


def test_an_archive_interrupted_before_the_move_is_done_again(app, client, run_jobs,
                                                              make_project):
    import datetime as dt

    from workers.reconcile import reconcile

    make_project("study1")
    _, files = make_study(series=1, per_series=3, patient_id="EARLY")
    upload(client, zip_bytes({f"{n}.dcm": d for n, d in enumerate(files)}))
    run_jobs()
    with app.app_context():
        ps = db.session.scalar(select(PrearchiveSession))
        ps.status = "QUEUED_ARCHIVING"  # its job vanished with Redis
        db.session.commit()
        assert reconcile(now=dt.datetime.now() + dt.timedelta(minutes=5))
    run_jobs()
    with app.app_context():
        assert db.session.scalar(select(ImagingSession).filter_by(label="EARLY"))
        assert db.session.query(PrearchiveSession).count() == 0
