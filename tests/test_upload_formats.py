"""Uploads beyond DICOM: ECAT makes PET sessions, volumes go into resources with
their header summary, and damaged files are quarantined with their reason."""
from __future__ import annotations

import gzip
from pathlib import Path

import nrrd
import numpy as np
from nibabel import ecat as nib_ecat
from nibabel.testing import data_path
from sqlalchemy import select

from models import File, ImagingSession, PrearchiveSession, Resource, Scan, db
from tests.dicomgen import make_study, zip_bytes
from tests.test_upload_flow import upload

DATA = Path(data_path)


def pet_bytes(tmp_path, name=b"DOE^JANE", pid=b"PET042") -> bytes:
    img = nib_ecat.load(DATA / "tinypet.v")
    img.header["patient_name"] = name
    img.header["patient_id"] = pid
    path = tmp_path / "pet.v"
    img.to_filename(str(path))
    return path.read_bytes()


def nrrd_pair(tmp_path) -> dict[str, bytes]:
    nrrd.write(str(tmp_path / "seg.nhdr"), np.ones((3, 4), dtype=np.uint8),
               {"encoding": "raw"}, detached_header=True)
    return {"seg.nhdr": (tmp_path / "seg.nhdr").read_bytes(),
            "seg.raw": (tmp_path / "seg.raw").read_bytes()}


def finished(client, run_jobs, res) -> dict:
    assert res.status_code == 202, res.get_data(as_text=True)
    run_jobs()
    return client.get(f"/api/uploads/{res.get_json()['id']}").get_json()


def archive_all(client, run_jobs, app) -> None:
    with app.app_context():
        ids = list(db.session.scalars(select(PrearchiveSession.id)))
    for ps_id in ids:
        assert client.post(f"/prearchive/{ps_id}/archive").status_code == 303
    run_jobs()


def test_an_ecat_file_makes_a_pet_session_with_its_scan(app, client, run_jobs, make_project,
                                                        tmp_path):
    make_project("study1")
    report = finished(client, run_jobs, upload(client, pet_bytes(tmp_path), name="pet.v"))
    assert report["status"] == "DONE", report
    assert (report["stored"], report["quarantined"]) == (1, 0)
    with app.app_context():
        ps = db.session.scalar(select(PrearchiveSession))
        assert (ps.project, ps.subject, ps.session) == ("study1", "DOE_JANE", "PET042")
        assert ps.scans[0]["modality"] == "PT"
    archive_all(client, run_jobs, app)
    with app.app_context():
        session = db.session.scalar(select(ImagingSession))
        assert (session.label, session.modality) == ("PET042", "PT")
        assert session.session_date.isoformat() == "2010-11-18"
        [row] = db.session.scalars(select(File)).all()
        assert (row.resource.label, row.format, row.path) == ("ECAT", "ECAT", "pet.v")
        assert row.header["dimensions"] == [10, 10, 3, 1]
        assert row.header["patient_name"] == "DOE^JANE"
    data = Path(app.config["DATA_DIR"]) / "archive/study1/DOE_JANE/PET042/SCANS/1/ECAT/pet.v"
    assert data.read_bytes() == pet_bytes(tmp_path)


def test_a_zip_of_dicom_and_nifti_files_the_nifti_in_the_named_scan(app, client, run_jobs,
                                                                    make_project):
    make_project("study1")
    _, dicom = make_study(series=1, per_series=2, patient_id="S1")
    nifti = (DATA / "anatomical.nii").read_bytes()
    entries = {"dicom/1.dcm": dicom[0], "dicom/2.dcm": dicom[1], "nifti/t1.nii": nifti}
    report = finished(client, run_jobs, upload(client, zip_bytes(entries), scan="1"))
    assert (report["status"], report["stored"], report["quarantined"]) == ("DONE", 3, 0)
    archive_all(client, run_jobs, app)
    with app.app_context():
        scan = db.session.scalar(select(Scan))
        labels = sorted(r.label for r in db.session.scalars(
            select(Resource).filter_by(scan_id=scan.id)))
        assert labels == ["DICOM", "NIFTI", "SNAPSHOTS"]
        row = db.session.scalar(select(File).filter_by(format="NIFTI"))
        assert row.path == "nifti/t1.nii"
        assert row.header["dimensions"] == [33, 41, 25]
        assert row.header["orientation"] == "LAS"
    stored = Path(app.config["DATA_DIR"]) / "archive/study1/DOE_JOHN/S1/SCANS/1/NIFTI/nifti/t1.nii"
    assert stored.read_bytes() == nifti
    page = client.get("/projects/study1/sessions/S1/scans/1")
    assert b"t1.nii" in page.data


def test_a_nifti_alone_goes_into_a_resource_of_the_named_session(app, client, run_jobs,
                                                                 make_project):
    make_project("study1")
    data = (DATA / "example4d.nii.gz").read_bytes()
    report = finished(client, run_jobs, upload(client, data, name="bold.nii.gz",
                                               subject="SUB1", session="MR1",
                                               resource="FUNC"))
    assert (report["status"], report["stored"]) == ("DONE", 1), report
    archive_all(client, run_jobs, app)
    with app.app_context():
        resource = db.session.scalar(select(Resource))
        assert (resource.label, resource.scan_id) == ("FUNC", None)
        assert resource.files[0].header["frames"] == 2
    assert (Path(app.config["DATA_DIR"])
            / "archive/study1/SUB1/MR1/RESOURCES/FUNC/bold.nii.gz").exists()


def test_a_detached_nrrd_and_an_analyze_pair_keep_their_data_files(app, client, run_jobs,
                                                                   make_project, tmp_path):
    make_project("study1")
    entries = nrrd_pair(tmp_path)
    entries["a.hdr"] = (DATA / "analyze.hdr").read_bytes()
    entries["a.img"] = bytes(91 * 109 * 91)
    report = finished(client, run_jobs, upload(client, zip_bytes(entries), subject="SUB1",
                                               session="MR1"))
    assert (report["status"], report["stored"], report["quarantined"]) == ("DONE", 4, 0)
    archive_all(client, run_jobs, app)
    with app.app_context():
        rows = {f.path: f for f in db.session.scalars(select(File))}
        assert rows["seg.nhdr"].header["dimensions"] == [3, 4]
        assert rows["seg.raw"].header is None and rows["seg.raw"].format == "NRRD"
        assert rows["a.hdr"].resource.label == "ANALYZE"


def test_damaged_files_are_quarantined_with_their_reason(app, client, run_jobs, make_project,
                                                         tmp_path):
    make_project("study1")
    _, dicom = make_study(series=1, per_series=1)
    whole = (DATA / "anatomical.nii").read_bytes()
    entries = {"ok.dcm": dicom[0], "lonely.hdr": (DATA / "analyze.hdr").read_bytes(),
               "cut.nii": whole[:20000], "cut.nii.gz": gzip.compress(whole)[:5000],
               "broken.v": (DATA / "tinypet.v").read_bytes()[:600],
               "seg.nhdr": nrrd_pair(tmp_path)["seg.nhdr"]}
    report = finished(client, run_jobs, upload(client, zip_bytes(entries)))
    assert report["status"] == "DONE"
    assert (report["stored"], report["quarantined"]) == (1, 5)
    reasons = {q["name"]: q["reason"] for q in report["quarantined_files"]}
    assert 'has no "lonely.img" beside it' in reasons["lonely.hdr"]
    assert "is truncated" in reasons["cut.nii"]
    assert "cut short" in reasons["cut.nii.gz"]
    assert 'ECAT header of "broken.v" could not be read' in reasons["broken.v"]
    assert 'names the data file "seg.raw", which is missing' in reasons["seg.nhdr"]
    quarantine = Path(app.config["DATA_DIR"]) / "quarantine" / report["id"]
    assert (quarantine / "cut.nii").read_bytes() == whole[:20000]


def test_a_nifti_without_a_session_label_is_quarantined(app, client, run_jobs, make_project):
    make_project("study1")
    report = finished(client, run_jobs, upload(client, (DATA / "anatomical.nii").read_bytes(),
                                               name="t1.nii"))
    assert report["status"] == "FAILED"
    assert "give the session label" in report["quarantined_files"][0]["reason"]


def test_a_nifti_for_a_new_scan_makes_that_scan(app, client, run_jobs, make_project):
    make_project("study1")
    report = finished(client, run_jobs, upload(client, (DATA / "anatomical.nii").read_bytes(),
                                               name="t1.nii", subject="SUB1", session="MR1",
                                               scan="5"))
    assert report["status"] == "DONE", report
    with app.app_context():
        ps_id = db.session.scalar(select(PrearchiveSession.id))
    page = client.get(f"/prearchive/{ps_id}").get_data(as_text=True)
    assert "scan 5" in page and "t1.nii" in page and "33 × 41 × 25" in page
    archive_all(client, run_jobs, app)
    with app.app_context():
        scan = db.session.scalar(select(Scan))
        assert (scan.scan_id, scan.instance_count) == ("5", 0)
        [resource] = db.session.scalars(select(Resource)).all()
        assert (resource.label, resource.scan_id) == ("NIFTI", scan.id)
    assert client.get("/projects/study1/sessions/MR1/scans/5").status_code == 200
    details = client.get("/projects/study1/sessions/MR1/scans/5/resources/NIFTI/details/t1.nii")
    assert b"33 \xc3\x97 41 \xc3\x97 25" in details.data
