"""The archive's XNAT-style paths: listings and objects in XNAT's JSON and CSV
shapes, PUT and DELETE, files in and out, and who may do what."""
from __future__ import annotations

import csv
import hashlib
import io
import zipfile
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select

from models import File, ImagingSession, Project, Scan, Subject, db
from tests.dicomgen import make_study, zip_bytes


@pytest.fixture
def script(app, client, api_headers):
    """A script's client: no browser cookie, the admin's token on every call."""
    return _Script(app.test_client(), api_headers("admin"))


class _Script:
    def __init__(self, client, headers):
        self.client, self.headers = client, headers

    def __getattr__(self, method):
        def call(url, **kw):
            return getattr(self.client, method)(url, headers={**self.headers,
                                                              **kw.pop("headers", {})}, **kw)
        return call


@pytest.fixture
def lab(app, script, make_project, make_user):
    """Project p1 with subject S1, CT session E1 (dated), scan 1 and resource NIFTI."""
    make_project("p1")
    make_user("collab", project="p1", role="collaborator")
    make_user("member", project="p1", role="member")
    make_user("stranger")
    for url in ("/data/projects/p1/subjects/S1",
                "/data/projects/p1/subjects/S1/experiments/E1?xsiType=xnat:ctSessionData"
                "&xnat:ctSessionData/date=2024-03-05",
                "/data/projects/p1/subjects/S1/experiments/E1/scans/1?xsiType=xnat:ctScanData"
                "&type=HEAD&series_description=Head%20CT&quality=usable",
                "/data/projects/p1/subjects/S1/experiments/E1/scans/1/resources/NIFTI"
                "?format=NIFTI&content=T1&tags=raw,head"):
        res = script.put(url)
        assert res.status_code == 200, (url, res.data)
    with app.app_context():
        session = db.session.scalar(select(ImagingSession).filter_by(label="E1"))
        return {"E": f"SCANYARD_E{session.id:05d}",
                "S": f"SCANYARD_S{session.subject_id:05d}"}


def rows(res) -> list[dict]:
    assert res.status_code == 200, res.data
    body = res.get_json()
    assert set(body) == {"ResultSet"}
    result = body["ResultSet"]
    assert result["totalRecords"] == str(len(result["Result"]))
    return result["Result"]


def test_collections_answer_resultsets_with_xnat_field_names(script, lab):
    (project,) = rows(script.get("/data/projects?format=json"))
    assert project == {"ID": "p1", "secondary_ID": "p1", "name": "p1", "description": "",
                       "pi_firstname": "", "pi_lastname": "", "URI": "/data/projects/p1"}

    (subject,) = rows(script.get("/data/projects/p1/subjects?format=json"))
    assert subject.pop("insert_date")
    assert subject == {"ID": lab["S"], "project": "p1", "label": "S1", "insert_user": "",
                       "URI": f"/data/subjects/{lab['S']}"}

    (experiment,) = rows(script.get("/data/projects/p1/subjects/S1/experiments"))
    assert rows(script.get("/data/experiments?project=p1")) == [experiment]
    assert rows(script.get("/data/experiments?project=p2")) == []
    assert experiment.pop("insert_date")
    assert experiment == {"ID": lab["E"], "project": "p1", "label": "E1",
                          "date": "2024-03-05", "xsiType": "xnat:ctSessionData",
                          "subject_ID": lab["S"], "subject_label": "S1",
                          "URI": f"/data/experiments/{lab['E']}"}

    (scan,) = rows(script.get(f"/data/experiments/{lab['E']}/scans"))
    assert scan.pop("xnat_imagescandata_id").isdigit()
    assert scan == {"ID": "1", "type": "HEAD", "series_description": "Head CT",
                    "quality": "usable", "xsiType": "xnat:ctScanData", "note": "",
                    "URI": f"/data/experiments/{lab['E']}/scans/1"}

    (resource,) = rows(script.get(f"/data/experiments/{lab['E']}/scans/1/resources"))
    rid = resource["xnat_abstractresource_id"]
    assert resource == {"xnat_abstractresource_id": rid, "cat_id": rid, "label": "NIFTI",
                        "element_name": "xnat:resourceCatalog", "category": "scans",
                        "cat_desc": "", "format": "NIFTI", "content": "T1", "tags": "raw,head",
                        "file_count": "0", "file_size": "0",
                        "URI": f"/data/experiments/{lab['E']}/scans/1/resources/{rid}"}


def test_columns_and_csv_are_honoured_and_xml_is_refused(script, lab):
    result = rows(script.get("/data/projects/p1/subjects/S1/experiments"
                             "?format=json&columns=label,date"))
    assert result == [{"label": "E1", "date": "2024-03-05",
                       "URI": f"/data/experiments/{lab['E']}"}]
    res = script.get("/data/projects/p1/experiments?format=csv&columns=ID,label,xsiType")
    assert res.status_code == 200 and res.mimetype == "text/csv"
    assert list(csv.DictReader(io.StringIO(res.get_data(as_text=True)))) == [
        {"ID": lab["E"], "label": "E1", "xsiType": "xnat:ctSessionData",
         "URI": f"/data/experiments/{lab['E']}"}]
    for url in ("/data/projects/p1/subjects?format=xml", f"/data/experiments/{lab['E']}"
                "?format=xml", "/data/projects?format=html"):
        res = script.get(url)
        assert res.status_code == 406 and res.is_json, url


def test_one_object_is_items_with_meta_data_fields_and_children(script, lab):
    res = script.get("/data/projects/p1/subjects/S1/experiments/E1?format=json")
    assert res.status_code == 200
    (item,) = res.get_json()["items"]
    assert item["meta"] == {"xsi:type": "xnat:ctSessionData", "isHistory": False}
    fields = item["data_fields"]
    assert {k: fields[k] for k in ("ID", "label", "project", "date", "subject_ID",
                                   "modality")} == {
        "ID": lab["E"], "label": "E1", "project": "p1", "date": "2024-03-05",
        "subject_ID": lab["S"], "modality": "CT"}
    (scans,) = item["children"]
    assert scans["field"] == "scans/scan"
    (scan,) = scans["items"]
    assert scan["meta"]["xsi:type"] == "xnat:ctScanData"
    assert scan["data_fields"]["ID"] == "1" and scan["data_fields"]["type"] == "HEAD"
    (files,) = scan["children"]
    assert files["field"] == "file"
    assert files["items"][0]["data_fields"]["label"] == "NIFTI"

    # The same object by id, under /data/archive and /REST, and by the subject's id.
    for url in (f"/data/experiments/{lab['E']}", f"/data/archive/experiments/{lab['E']}",
                f"/REST/projects/p1/experiments/{lab['E']}",
                f"/data/subjects/{lab['S']}/experiments/E1"):
        again = script.get(url)
        assert again.status_code == 200, url
        assert again.get_json()["items"][0]["data_fields"]["ID"] == lab["E"]


def test_files_go_in_raw_or_multipart_and_come_back_byte_for_byte(app, script, lab):
    base = f"/data/experiments/{lab['E']}/scans/1/resources/NIFTI/files"
    res = script.put(f"{base}/brain/t1.nii?format=NIFTI&content=T1w&tags=a,b&inbody=true",
                     data=b"NIFTIDATA")
    assert res.status_code == 200, res.data
    res = script.post(base, content_type="multipart/form-data",
                      data={"file": (io.BytesIO(b"notes"), "notes.txt")})
    assert res.status_code == 200, res.data

    listing = rows(script.get(base + "?format=json"))
    by_name = {r["Name"]: r for r in listing}
    assert by_name["t1.nii"] == {
        "Name": "t1.nii", "Size": "9", "URI": by_name["t1.nii"]["URI"], "collection": "NIFTI",
        "file_tags": "a,b", "file_format": "NIFTI", "file_content": "T1w",
        "cat_ID": by_name["t1.nii"]["cat_ID"], "digest": hashlib.sha256(b"NIFTIDATA").hexdigest()}
    assert by_name["t1.nii"]["URI"].endswith("/files/brain/t1.nii")
    assert script.get(by_name["t1.nii"]["URI"]).data == b"NIFTIDATA"
    assert script.get(f"{base}/notes.txt").data == b"notes"
    on_disk = Path(app.config["DATA_DIR"]) / "archive/p1/S1/E1/SCANS/1/NIFTI/brain/t1.nii"
    assert on_disk.read_bytes() == b"NIFTIDATA"

    refused = script.put(f"{base}/brain/t1.nii", data=b"other")
    assert refused.status_code == 409 and "overwrite=true" in refused.get_json()["error"]
    assert on_disk.read_bytes() == b"NIFTIDATA"
    assert script.put(f"{base}/brain/t1.nii?overwrite=true", data=b"other").status_code == 200
    assert on_disk.read_bytes() == b"other"
    assert script.put(f"{base}/brain", data=b"x").status_code == 409
    with app.app_context():
        assert db.session.scalar(select(File).filter_by(path="brain/t1.nii")).size == 5


@pytest.mark.parametrize("name", ["../escape.txt", "a/../../b", ".hidden", "a//b"])
def test_unsafe_file_paths_are_refused_and_nothing_is_written(app, script, lab, name):
    base = f"/data/experiments/{lab['E']}/resources/OUT/files/"
    res = script.put(base + name, data=b"x")
    assert res.status_code in (400, 404) and res.is_json
    assert not list((Path(app.config["DATA_DIR"]) / "archive").rglob("*.txt"))


def test_extract_unpacks_a_zip_and_zips_come_back_out(script, lab):
    base = "/data/projects/p1/subjects/S1/experiments/E1/resources/STATS/files"
    upload = zip_bytes({"aseg.stats": b"1", "sub/lh.stats": b"22"})
    res = script.put(f"{base}/results/out.zip?extract=true", data=upload)
    assert res.status_code == 200, res.data
    names = sorted(r["URI"].split("/files/", 1)[1]
                   for r in rows(script.get(base)))
    assert names == ["results/aseg.stats", "results/sub/lh.stats"]
    assert script.put(f"{base}/results/out.zip?extract=true", data=upload).status_code == 409

    res = script.get(f"{base}?format=zip")
    with zipfile.ZipFile(io.BytesIO(res.data)) as zf:
        assert sorted(zf.namelist()) == ["E1/resources/STATS/files/results/aseg.stats",
                                         "E1/resources/STATS/files/results/sub/lh.stats"]
    script.put(f"/data/experiments/{lab['E']}/scans/1/resources/NIFTI/files/x.nii",
               data=b"nii")
    for url in (f"/data/experiments/{lab['E']}/scans/ALL/files?format=zip",
                f"/data/experiments/{lab['E']}/scans/ALL/resources/NIFTI/files?format=zip"):
        with zipfile.ZipFile(io.BytesIO(script.get(url).data)) as zf:
            assert zf.namelist() == ["E1/scans/1/resources/NIFTI/files/x.nii"], url
    with zipfile.ZipFile(io.BytesIO(script.get(
            f"/data/experiments/{lab['E']}/files?format=zip").data)) as zf:
        assert len(zf.namelist()) == 3


def test_resources_are_reached_by_label_or_numeric_id(script, lab):
    (resource,) = rows(script.get(f"/data/experiments/{lab['E']}/scans/1/resources"))
    rid = resource["xnat_abstractresource_id"]
    for ref in ("NIFTI", rid):
        res = script.put(f"/data/experiments/{lab['E']}/scans/1/resources/{ref}/files/"
                         f"f{ref}.txt", data=b"x")
        assert res.status_code == 200
    assert len(rows(script.get(f"/data/experiments/{lab['E']}/scans/1/resources/{rid}/files"))) == 2


def test_assessors_and_reconstructions_hold_resources(app, script, lab):
    base = "/data/projects/p1/subjects/S1/experiments/E1"
    res = script.put(f"{base}/assessors/QC1?xsiType=xnat:qcAssessmentData")
    assert res.status_code == 200 and res.get_data(as_text=True).startswith("SCANYARD_A")
    res = script.put(f"{base}/reconstructions/R1?type=AVG")
    assert res.status_code == 200 and res.get_data(as_text=True).startswith("SCANYARD_R")
    assert script.put(f"{base}/assessors/QC1/out/resources/OUT/files/report.txt",
                      data=b"ok").status_code == 200
    assert script.put(f"{base}/reconstructions/R1/resources/NIFTI/files/avg.nii",
                      data=b"avg").status_code == 200
    (assessor,) = rows(script.get(f"{base}/assessors"))
    assert {k: assessor[k] for k in ("label", "xsiType", "project", "session_ID")} == {
        "label": "QC1", "xsiType": "xnat:qcAssessmentData", "project": "p1",
        "session_ID": lab["E"]}
    (recon,) = rows(script.get(f"{base}/reconstructions"))
    assert recon["label"] == "R1" and recon["type"] == "AVG"
    data = Path(app.config["DATA_DIR"]) / "archive/p1/S1/E1"
    assert (data / "ASSESSORS/QC1/OUT/report.txt").read_bytes() == b"ok"
    assert (data / "RECONSTRUCTIONS/R1/NIFTI/avg.nii").read_bytes() == b"avg"
    assert script.get(f"{assessor['URI']}/resources/OUT/files/report.txt").data == b"ok"

    assert script.delete(f"{base}/assessors/QC1?removeFiles=true").status_code == 200
    assert not (data / "ASSESSORS").exists() or not any((data / "ASSESSORS").iterdir())
    assert rows(script.get(f"{base}/assessors")) == []


def test_delete_with_remove_files_removes_rows_and_files(app, script, lab):
    base = f"/data/experiments/{lab['E']}"
    script.put(f"{base}/scans/1/resources/NIFTI/files/a.nii", data=b"a")
    script.put(f"{base}/resources/NOTES/files/n.txt", data=b"n")
    data = Path(app.config["DATA_DIR"]) / "archive/p1/S1/E1"
    assert script.delete(f"{base}/resources/NOTES/files/n.txt").status_code == 200
    assert not (data / "RESOURCES/NOTES/n.txt").exists()
    assert script.delete(f"{base}/scans/1?removeFiles=true").status_code == 200
    assert not (data / "SCANS").exists() or not any((data / "SCANS").iterdir())
    assert script.delete("/data/projects/p1/subjects/S1?removeFiles=true").status_code == 200
    assert not (Path(app.config["DATA_DIR"]) / "archive/p1/S1").exists()
    with app.app_context():
        assert db.session.scalar(select(Subject).filter_by(label="S1")) is None
        assert not db.session.scalars(select(File)).all()
        assert not db.session.scalars(select(Scan)).all()
    assert script.delete("/data/projects/p1?removeFiles=true").status_code == 200
    with app.app_context():
        assert db.session.scalar(select(Project).filter_by(label="p1")) is None


def test_put_creates_and_answers_the_id_and_refuses_bad_values(app, script, lab):
    res = script.put("/data/projects/p2?name=Second&description=More")
    assert res.status_code == 200 and res.get_data(as_text=True) == "p2"
    res = script.put("/data/projects/p1/subjects/S1/experiments/MR1"
                     "?xsiType=xnat:mrSessionData&date=01/31/2024")
    assert res.status_code == 200
    with app.app_context():
        mr = db.session.scalar(select(ImagingSession).filter_by(label="MR1"))
        assert (mr.modality, str(mr.session_date), mr.xsi_type) == (
            "MR", "2024-01-31", "xnat:mrSessionData")
        assert res.get_data(as_text=True) == f"SCANYARD_E{mr.id:05d}"
    created = script.put("/data/projects/p1/subjects/S1/experiments/NEW_ID?label=MR2")
    assert created.status_code == 200
    assert script.get("/data/projects/p1/experiments/MR2").get_json()["items"][0][
        "data_fields"]["ID"] == created.get_data(as_text=True)
    for url, code in (("/data/projects/p1/subjects/bad%20label", 400),
                      ("/data/projects/p1/subjects/S1/experiments/X?date=yesterday", 400),
                      ("/data/projects/p1/subjects/S1/experiments/X?xsiType=nonsense", 400),
                      ("/data/projects/p1/experiments/X", 400),
                      ("/data/projects/p1/subjects/S2/experiments/E1", 404),
                      ("/data/projects/p1/subjects/S1/experiments/E1?label=E2", 400)):
        res = script.put(url)
        assert res.status_code == code and res.is_json, (url, res.data)
    script.put("/data/projects/p1/subjects/S2")
    res = script.put("/data/projects/p1/subjects/S2/experiments/E1")
    assert res.status_code == 409  # E1 already belongs to S1


def test_roles_decide_who_reads_and_who_writes(app, script, lab, api_headers):
    experiment = "/data/projects/p1/subjects/S1/experiments/E1"
    client = app.test_client()
    collab, member = api_headers("collab"), api_headers("member")
    assert client.get(experiment, headers=collab).status_code == 200
    refused = client.put(f"{experiment}/scans/9", headers=collab)
    assert refused.status_code == 403 and refused.is_json
    assert client.put(f"{experiment}/scans/9", headers=member).status_code == 200
    assert client.delete(f"{experiment}?removeFiles=true", headers=member).status_code == 403
    stranger = api_headers("stranger")
    assert client.get(experiment, headers=stranger).status_code == 404
    assert rows(client.get("/data/projects", headers=stranger)) == []
    anonymous = client.get(experiment)
    assert anonymous.status_code == 401 and anonymous.is_json
    for url in ("/data/projects/p1/nonsense", "/data/projects/p1/subjects/S1/x/y",
                "/data/projects/nope"):
        res = script.get(url)
        assert res.status_code == 404 and res.is_json, url


def test_an_uploaded_and_archived_session_is_listed_with_its_dicom(app, script, run_jobs,
                                                                   make_project):
    make_project("p1")
    app.config["IMPORT_WAIT_SECONDS"] = 0
    _, files = make_study(series=2, per_series=2, patient_id="PAT9")
    res = script.post("/data/services/import?dest=/archive/projects/p1/subjects/SUB/"
                      "experiments/MRI1", data=zip_bytes({f"{n}.dcm": d for n, d in
                                                          enumerate(files)}),
                      headers={"Content-Type": "application/zip"})
    assert res.status_code == 202  # no worker runs in this test: follow the upload
    run_jobs()
    run_jobs()
    (experiment,) = rows(script.get("/data/projects/p1/subjects/SUB/experiments"))
    assert experiment["xsiType"] == "xnat:mrSessionData" and experiment["date"] == "2024-01-15"
    scans = rows(script.get(f"{experiment['URI']}/scans"))
    assert [(s["ID"], s["xsiType"]) for s in scans] == [("1", "xnat:mrScanData"),
                                                        ("2", "xnat:mrScanData")]
    dicom = rows(script.get(f"{experiment['URI']}/scans/1/resources/DICOM/files"))
    assert len(dicom) == 2 and all(r["file_format"] == "DICOM" for r in dicom)
    res = script.get(f"{experiment['URI']}/scans/ALL/resources/DICOM/files?format=zip")
    with zipfile.ZipFile(io.BytesIO(res.data)) as zf:
        got = {dcmread(io.BytesIO(zf.read(n))).SOPInstanceUID for n in zf.namelist()}
    # (the site's anonymization script rewrote the files; the instances are all there)
    assert got == {dcmread(io.BytesIO(d)).SOPInstanceUID for d in files}


def test_a_raw_body_labelled_as_a_form_is_stored_whole(script, lab):
    """curl --data-binary sends any file as application/x-www-form-urlencoded;
    the cap on forms (read into memory) must not refuse it."""
    import os

    big = os.urandom(2_000_000)
    url = f"/data/experiments/{lab['E']}/resources/RAW/files/big.bin"
    res = script.put(url, data=big, content_type="application/x-www-form-urlencoded")
    assert res.status_code == 200, res.data
    assert script.get(url).data == big
