"""Anonymization, header pages and snapshots through the whole path: upload,
the jobs (a real queue and worker), the prearchive, archiving, the pages."""
from __future__ import annotations

import io
from pathlib import Path

import pydicom
from PIL import Image
from sqlalchemy import select

from models import (
    AuditEvent,
    File,
    ImagingSession,
    PrearchiveSession,
    Project,
    Resource,
    Upload,
    db,
)
from tests.dicomgen import make_study, zip_bytes
from workers import anonymization

BIRTH_DATE = "19510317"


def upload(client, files: list[bytes], **fields):
    form = {"project": "study1", "subject": "S01", "session": "S01_MR1", "session_date": "",
            "date_unknown": "1", **fields}
    form["file"] = (io.BytesIO(zip_bytes({f"{n}.dcm": d for n, d in enumerate(files)})),
                    "study.zip")
    res = client.post("/upload", data=form, content_type="multipart/form-data",
                      headers={"Accept": "application/json"})
    assert res.status_code == 202, res.get_data(as_text=True)
    return res.get_json()["id"]


def study(**kw) -> tuple[str, list[bytes]]:
    return make_study(series=1, per_series=3, patient_name="DOE^JOHN", patient_id="MRN123",
                      PatientBirthDate=BIRTH_DATE, **kw)


def set_script(app, scope_of, text: str, enabled: bool = True):
    with app.app_context():
        scope = scope_of() if callable(scope_of) else scope_of
        anonymization.save_script(scope, text, enabled, "tester")
        db.session.commit()


def project_scope(label):
    return lambda: anonymization.project_scope(
        db.session.scalar(select(Project).filter_by(label=label)))


def only_prearchive_session(app) -> PrearchiveSession:
    with app.app_context():
        rows = db.session.scalars(select(PrearchiveSession)).all()
        assert len(rows) == 1, rows
        return rows[0]


def archived_files(app) -> list[Path]:
    return sorted((Path(app.config["DATA_DIR"]) / "archive").rglob("*.dcm"))


def test_project_script_runs_when_archiving_and_no_original_header_reaches_the_archive(
        app, client, run_jobs, make_project):
    make_project("study1")
    set_script(app, project_scope("study1"), "-(0010,0030)\nPatientName := subject\n")
    _uid, files = study()
    upload(client, files)
    run_jobs()
    ps = only_prearchive_session(app)
    prearchived = list((Path(app.config["DATA_DIR"]) / "prearchive").rglob("*.dcm"))
    # The site script (XNAT's default) ran before READY: the birth date is still there.
    assert all(pydicom.dcmread(p).PatientBirthDate == BIRTH_DATE for p in prearchived)

    assert client.post(f"/prearchive/{ps.id}/archive").status_code == 303
    run_jobs()

    paths = archived_files(app)
    assert len(paths) == 3
    for path in paths:
        ds = pydicom.dcmread(path)
        assert "PatientBirthDate" not in ds
        assert ds.PatientName == "S01" and ds.PatientID == "S01_MR1"
        assert ds.StudyDescription == "study1"
        raw = path.read_bytes()
        assert b"DOE^JOHN" not in raw and b"MRN123" not in raw and BIRTH_DATE.encode() not in raw
    with app.app_context():
        rows = db.session.scalars(select(File).join(Resource).filter(Resource.label == "DICOM"))
        for row in rows:
            path = next(p for p in paths if p.name == row.path)
            assert len(path.read_bytes()) == row.size  # the index describes the rewritten file


def test_a_file_the_site_script_rejects_is_quarantined_with_the_reason(
        app, client, run_jobs, make_project):
    make_project("study1")
    set_script(app, anonymization.SITE, 'PatientName := subject\nreject if InstanceNumber = "2"')
    _uid, files = study()
    upload_id = upload(client, files)
    run_jobs()

    report = client.get(f"/api/uploads/{upload_id}").get_json()
    assert (report["stored"], report["quarantined"]) == (2, 1)
    reason = report["quarantined_files"][0]["reason"]
    assert "site anonymization script" in reason and "line 2" in reason
    quarantine = Path(app.config["DATA_DIR"]) / "quarantine" / upload_id
    assert pydicom.dcmread(next(quarantine.glob("*.dcm"))).InstanceNumber == 2
    assert only_prearchive_session(app).file_count == 2


def test_a_disabled_site_script_leaves_the_files_as_they_came(app, client, run_jobs,
                                                              make_project):
    make_project("study1")
    set_script(app, anonymization.SITE, "PatientName := subject", enabled=False)
    _uid, files = study()
    upload(client, files)
    run_jobs()
    stored = {p.read_bytes() for p in (Path(app.config["DATA_DIR"]) / "prearchive").rglob("*.dcm")}
    assert stored == set(files)


def test_new_uids_are_the_same_for_two_uploads_of_one_study(app, client, run_jobs, make_project):
    make_project("study1")
    set_script(app, anonymization.SITE, "basic-profile\nPatientName := subject")
    uid, files = study()
    upload(client, files)
    run_jobs()
    upload(client, files)
    run_jobs()

    with app.app_context():
        # The second upload maps to the same new UIDs, so it joins the first
        # session, and its instances are recognised as the ones held already.
        rows = db.session.scalars(select(PrearchiveSession)).all()
        assert len(rows) == 1 and rows[0].study_uid != uid
        second = db.session.scalars(select(Upload).order_by(Upload.created.desc())).first()
        assert (second.stored, second.duplicates) == (0, 3)
    datasets = [pydicom.dcmread(p) for p in
                (Path(app.config["DATA_DIR"]) / "prearchive").rglob("*.dcm")]
    assert {ds.StudyInstanceUID for ds in datasets} == {rows[0].study_uid}
    assert len({ds.SOPInstanceUID for ds in datasets}) == 3 == len(datasets)
    assert all(ds.PatientIdentityRemoved == "YES" and "PatientBirthDate" in ds
               and not ds.PatientBirthDate for ds in datasets)


# --- the pages ---------------------------------------------------------------------

def test_site_script_page_shows_the_default_and_refuses_a_mistake_with_its_line(app, client):
    page = client.get("/admin/anonymization")
    assert page.status_code == 200 and b"(0010,0010) := subject" in page.data

    res = client.post("/admin/anonymization",
                      data={"text": "PatientName := subject\nPatientNme := \"x\"", "enabled": "on"})
    assert res.status_code == 400
    assert b"line 2: unknown DICOM keyword" in res.data
    with app.app_context():
        assert anonymization.stored_script(anonymization.SITE) is None


def test_saving_a_script_keeps_old_and_new_text_in_the_audit_log(app, client, make_project):
    make_project("study1")
    res = client.post("/projects/study1/anonymization",
                      data={"text": "basic-profile retain-uids\n", "enabled": "on"})
    assert res.status_code == 303
    res = client.post("/projects/study1/anonymization", data={"text": "remove private\n"})
    assert res.status_code == 303
    assert b"remove private" in client.get("/projects/study1/anonymization").data
    with app.app_context():
        events = db.session.scalars(select(AuditEvent).filter_by(
            kind="anonymization_script").order_by(AuditEvent.id)).all()
        first, second = "basic-profile retain-uids\n", "remove private\n"
        assert [(e.detail["old"], e.detail["new"]) for e in events] == [
            ("", first), (first, second)]
        assert events[1].detail["enabled"] is False and events[1].project == "study1"
    assert client.get("/projects/nope/anonymization").status_code == 404


def test_header_page_escapes_markup_and_json_gives_the_dicom_model(
        app, client, run_jobs, make_project):
    make_project("study1")
    set_script(app, anonymization.SITE, "", enabled=False)
    _uid, files = study(StudyDescription="<script>alert(1)</script>")
    upload(client, files, subject="", session="")
    run_jobs()
    ps = only_prearchive_session(app)
    scan_id = ps.scans[0]["id"]

    page = client.get(f"/prearchive/{ps.id}/scans/{scan_id}/header")

    assert page.status_code == 200
    assert b"<script>alert(1)</script>" not in page.data
    assert b"&lt;script&gt;alert(1)&lt;/script&gt;" in page.data
    assert b"DOE^JOHN" in page.data
    name = next((Path(app.config["DATA_DIR"]) / "prearchive").rglob("*.dcm")).name
    model = client.get(f"/api/prearchive/{ps.id}/scans/{scan_id}/files/{name}/dicom.json"
                       ).get_json()
    assert model["00081030"]["Value"] == ["<script>alert(1)</script>"]
    assert "7FE00010" not in model
    assert client.get(f"/prearchive/{ps.id}/scans/{scan_id}/files/..%2F..%2Fx/header"
                      ).status_code == 404


def test_snapshots_are_made_after_the_build_and_archived_as_a_resource(
        app, client, run_jobs, make_project):
    make_project("study1")
    _uid, files = study()
    upload(client, files)
    run_jobs()
    ps = only_prearchive_session(app)
    scan_id = ps.scans[0]["id"]
    res = client.get(f"/prearchive/{ps.id}/scans/{scan_id}/snapshot.png")
    assert res.status_code == 200 and res.mimetype == "image/png"
    assert Image.open(io.BytesIO(res.data)).size == (512, 512)
    assert b"thumbnail.png" in client.get(f"/prearchive/{ps.id}").data

    client.post(f"/prearchive/{ps.id}/archive")
    run_jobs()

    with app.app_context():
        session = db.session.scalar(select(ImagingSession))
        resource = db.session.scalar(select(Resource).filter_by(label="SNAPSHOTS"))
        assert resource is not None and resource.session_id == session.id
        assert sorted(f.path for f in resource.files) == ["snapshot.png", "thumbnail.png"]
    base = f"/data/projects/study1/subjects/S01/experiments/S01_MR1/scans/{scan_id}"
    thumb = client.get(f"{base}/thumbnail")
    assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.data)).size == (128, 128)
    assert client.get(f"/data/projects/study1/experiments/S01_MR1/scans/{scan_id}/snapshot"
                      ).status_code == 200
    assert client.get("/data/projects/study1/subjects/OTHER/experiments/S01_MR1/scans/"
                      f"{scan_id}/snapshot").status_code == 404
    page = client.get("/projects/study1/sessions/S01_MR1")
    assert b"thumbnail.png" in page.data
    scan_page = client.get(f"/projects/study1/sessions/S01_MR1/scans/{scan_id}")
    assert b"/header" in scan_page.data
    header_link = f"/projects/study1/sessions/S01_MR1/scans/{scan_id}/files/"
    with app.app_context():
        name = db.session.scalar(select(File.path).join(Resource).filter(
            Resource.label == "DICOM"))
    header = client.get(f"{header_link}{name}/header")
    assert header.status_code == 200 and b"PatientName" in header.data
    assert client.get(f"/data/projects/study1/experiments/S01_MR1/scans/{scan_id}/files/"
                      f"{name}/dicom.json").get_json()["00100010"]["Value"] == [
                          {"Alphabetic": "S01"}]


def test_preview_shows_a_header_before_and_after_the_project_script_and_writes_nothing(
        app, client, run_jobs, make_project):
    make_project("study1")
    _uid, files = study()
    upload(client, files)
    run_jobs()
    ps = only_prearchive_session(app)
    scan_id = ps.scans[0]["id"]
    prearchived = (Path(app.config["DATA_DIR"]) / "prearchive").rglob("*.dcm")
    stored = {p: p.read_bytes() for p in prearchived}

    page = client.get(f"/prearchive/{ps.id}/scans/{scan_id}/preview")
    assert page.status_code == 200 and b"no enabled anonymization script" in page.data

    set_script(app, project_scope("study1"), '-(0010,0030)\nPatientName := "P_{subject}"')
    page = client.get(f"/prearchive/{ps.id}/scans/{scan_id}/preview")

    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert '<tr class="removed">' in html and BIRTH_DATE in html
    assert '<tr class="changed">' in html and "P_S01" in html
    assert b"preview" in client.get(f"/prearchive/{ps.id}").data
    assert {p: p.read_bytes() for p in stored} == stored

    set_script(app, project_scope("study1"), 'reject if Modality = "MR"')
    page = client.get(f"/prearchive/{ps.id}/scans/{scan_id}/preview")
    assert b"would reject this file" in page.data


def test_the_prearchive_record_and_the_archive_index_show_the_anonymized_header(
        app, client, run_jobs, make_project):
    make_project("study1")
    set_script(app, project_scope("study1"), "basic-profile\nPatientName := subject")
    _uid, files = study(AccessionNumber="ACC777", StudyDescription="Brain of John Doe")
    upload(client, files)
    run_jobs()
    ps = only_prearchive_session(app)
    page = client.get(f"/prearchive/{ps.id}").data
    assert b"MRN123" not in page and b"DOE^JOHN" not in page  # the site script ran
    client.post(f"/prearchive/{ps.id}/archive")
    run_jobs()
    with app.app_context():
        session = db.session.scalar(select(ImagingSession))
        assert session.accession in (None, "") and session.study_description is None
        assert all(scan.series_description is None for scan in session.scans)
    assert b"ACC777" not in client.get("/projects/study1/sessions/S01_MR1").data
