"""pyxnat, the PyPI package labs script XNAT with, against a live Scanyard on
loopback: the calls a processing pipeline makes, unchanged."""
from __future__ import annotations

import hashlib
import zipfile

import pytest
from sqlalchemy import select

from models import File, ImagingSession, Resource, db
from tests.conftest import PASSWORD
from tests.dicomgen import make_series

pyxnat = pytest.importorskip("pyxnat")


@pytest.fixture
def xnat(live_server, make_user):
    make_user("lab", admin=False)
    intf = pyxnat.Interface(server=live_server, user="lab", password=PASSWORD)
    yield intf
    intf._http.close()


def test_a_pipeline_creates_the_hierarchy_stores_a_file_and_reads_it_back(
        app, xnat, tmp_path):
    project = xnat.select.project("lab1")
    assert not project.exists()
    project.create()
    assert project.exists()

    experiment = project.subject("S1").experiment("MR1")
    experiment.create(experiments="xnat:mrSessionData")  # creates the subject first
    assert project.subject("S1").exists()
    assert experiment.exists()
    assert experiment.datatype() == "xnat:mrSessionData"

    scan = experiment.scan("1")
    scan.create(scans="xnat:mrScanData")
    resource = scan.resource("NIFTI")
    resource.create()
    assert resource.exists()

    blob = make_series("1.2.3", 1)[0]
    source = tmp_path / "image.dcm"
    source.write_bytes(blob)
    resource.file("image.dcm").insert(str(source), format="DICOM", content="T1",
                                      tags="raw")

    assert project.subjects().get() == [_subject_id(app, "lab1", "S1")]
    assert experiment.scans().get() == ["1"]
    assert resource.files().get() == ["image.dcm"]
    assert resource.file("image.dcm").size() == str(len(blob))
    assert resource.file("image.dcm").format() == "DICOM"

    copy = tmp_path / "copy.dcm"
    resource.file("image.dcm").get(str(copy))
    assert copy.read_bytes() == blob


def _subject_id(app, project, label):
    from models import Project, Subject

    with app.app_context():
        row = db.session.scalar(select(Subject).join(Project).filter(
            Project.label == project, Subject.label == label))
        return f"SCANYARD_S{row.id:05d}"


def test_a_zip_put_with_extract_unpacks_into_the_resource_and_downloads_again(
        app, xnat, tmp_path):
    xnat.select.project("lab1").create()
    assessor = xnat.select.project("lab1").subject("S1").experiment("E1").assessor("QC1")
    assessor.create(experiments="xnat:ctSessionData", assessors="xnat:qcAssessmentData")
    results = {"stats/volume.txt": b"1234\n", "report.json": b'{"ok": true}'}
    archive = tmp_path / "results.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in results.items():
            zf.writestr(name, data)

    out = assessor.out_resource("STATS")
    out.put_zip(str(archive), extract=True)
    # pyxnat lists a file by the last part of its path, as it does with XNAT.
    assert sorted(out.files().get()) == ["report.json", "volume.txt"]

    with app.app_context():
        rows = db.session.scalars(select(File).join(Resource).filter(
            Resource.label == "STATS")).all()
        assert {r.path: r.sha256 for r in rows} == {
            n: hashlib.sha256(d).hexdigest() for n, d in results.items()}
        session = db.session.scalar(select(ImagingSession).filter_by(label="E1"))
        assert session.xsi_type == "xnat:ctSessionData" and session.modality == "CT"

    (tmp_path / "dl").mkdir()
    downloaded = out.get(str(tmp_path / "dl"), extract=True)
    got = {p.split("/STATS/", 1)[1]: open(p, "rb").read() for p in downloaded}
    assert got == results
    stored = app.config["DATA_DIR"] + "/archive/lab1/S1/E1/ASSESSORS/QC1/STATS"
    assert open(stored + "/stats/volume.txt", "rb").read() == results["stats/volume.txt"]


def test_deleting_with_pyxnat_removes_rows_and_files(app, xnat, tmp_path):
    project = xnat.select.project("lab1")
    project.create()
    resource = project.subject("S1").experiment("E1").resource("NOTES")
    resource.create()
    note = tmp_path / "note.txt"
    note.write_bytes(b"hello")
    resource.file("note.txt").insert(str(note))
    folder = app.config["DATA_DIR"] + "/archive/lab1/S1/E1/RESOURCES/NOTES"
    assert open(folder + "/note.txt", "rb").read() == b"hello"

    resource.file("note.txt").delete()
    assert resource.files().get() == []
    project.subject("S1").delete()
    assert not project.subject("S1").exists()
    assert project.subjects().get() == []
    import os

    assert not os.path.exists(app.config["DATA_DIR"] + "/archive/lab1/S1")


def test_a_collaborator_cannot_create_through_pyxnat(app, live_server, make_user, make_project):
    make_project("shared")
    make_user("guest", project="shared", role="collaborator")
    intf = pyxnat.Interface(server=live_server, user="guest", password=PASSWORD)
    assert intf.select.project("shared").exists()
    with pytest.raises(Exception, match="403"):
        intf.select.project("shared").subject("S9").create()
    assert not intf.select.project("shared").subject("S9").exists()
