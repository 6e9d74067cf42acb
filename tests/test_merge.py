"""Archiving into a session that exists: merging (append), replacing (delete),
duplicates, conflicts and renumbering."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from models import File, ImagingSession, PrearchiveSession, Scan, Subject, db
from tests.dicomgen import make_series, zip_bytes


def send(client, files: list[bytes], name="part.zip"):
    res = client.post("/upload", data={
        "project": "p1", "subject": "SUBJ", "session": "MR1", "date_unknown": "1",
        "file": (io.BytesIO(zip_bytes({f"{n}.dcm": d for n, d in enumerate(files)})), name)},
        content_type="multipart/form-data", headers={"Accept": "application/json"})
    assert res.status_code == 202
    return res.get_json()


def newest_prearchive(app) -> int:
    with app.app_context():
        return db.session.scalar(select(PrearchiveSession.id)
                                 .order_by(PrearchiveSession.id.desc()))


def archive(client, run_jobs, ps_id, **form):
    res = client.post(f"/prearchive/{ps_id}/archive", data=form)
    run_jobs()
    return res


def archived_files(app) -> list[File]:
    with app.app_context():
        return db.session.scalars(select(File).filter_by(format="DICOM")).all()


@pytest.fixture
def study(make_project):
    make_project("p1")
    uid = generate_uid()
    return uid, [make_series(uid, 3, series_number=n + 1, description=f"s{n + 1}")
                 for n in range(4)]


def test_two_partial_uploads_merge_into_one_session_with_every_instance_once(
        app, client, run_jobs, study):
    _uid, series = study
    send(client, series[0] + series[1])
    run_jobs()
    archive(client, run_jobs, newest_prearchive(app))
    send(client, series[2] + series[3] + series[1][:1])  # one instance sent twice
    run_jobs()
    second = newest_prearchive(app)
    assert archive(client, run_jobs, second).status_code == 409  # exists: refused
    archive(client, run_jobs, second, overwrite="append")
    with app.app_context():
        assert db.session.get(PrearchiveSession, second) is None
        session = db.session.scalar(select(ImagingSession).filter_by(label="MR1"))
        assert sorted(s.scan_id for s in session.scans) == ["1", "2", "3", "4"]
        assert all(s.instance_count == 3 for s in session.scans)
    rows = archived_files(app)
    assert len(rows) == 12 and len({r.sop_instance_uid for r in rows}) == 12
    folder = Path(app.config["DATA_DIR"]) / "archive/p1/SUBJ/MR1/SCANS"
    assert len(list(folder.rglob("*.dcm"))) == 12
    assert not list((Path(app.config["DATA_DIR"]) / "prearchive").rglob("*.dcm"))


def test_the_same_zip_twice_stores_nothing_new(app, client, run_jobs, study):
    _uid, series = study
    files = series[0] + series[1]
    send(client, files)
    run_jobs()
    archive(client, run_jobs, newest_prearchive(app))
    send(client, files)
    run_jobs()
    second = newest_prearchive(app)
    archive(client, run_jobs, second, overwrite="append")
    assert len(archived_files(app)) == 6
    with app.app_context():
        assert db.session.get(PrearchiveSession, second) is None


def _changed(data: bytes) -> bytes:
    ds = dcmread(io.BytesIO(data))
    ds.SeriesDescription = "changed"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_a_conflicting_instance_is_a_conflict_and_replace_resolves_it(app, client, run_jobs,
                                                                      study):
    _uid, series = study
    send(client, series[0])
    run_jobs()
    archive(client, run_jobs, newest_prearchive(app))
    send(client, [_changed(series[0][0])])
    run_jobs()
    second = newest_prearchive(app)
    archive(client, run_jobs, second, overwrite="append")
    with app.app_context():
        ps = db.session.get(PrearchiveSession, second)
        assert ps.status == "CONFLICT"
    page = client.get(f"/prearchive/{second}")
    assert b"differs from the archived copy" in page.data and b"replace" in page.data
    archive(client, run_jobs, second, overwrite="delete")
    rows = archived_files(app)
    assert len(rows) == 1  # the archived session was replaced by the new one
    path = Path(app.config["DATA_DIR"]) / "archive/p1/SUBJ/MR1/SCANS/1/DICOM" / rows[0].path
    assert dcmread(path).SeriesDescription == "changed"


def test_a_clashing_scan_number_is_renumbered(app, client, run_jobs, study):
    uid, series = study
    send(client, series[0])
    run_jobs()
    archive(client, run_jobs, newest_prearchive(app))
    other = make_series(uid, 2, series_number=1, description="other series, same number")
    send(client, other)
    run_jobs()
    archive(client, run_jobs, newest_prearchive(app), overwrite="append")
    with app.app_context():
        scans = {s.scan_id: s.instance_count for s in db.session.scalars(select(Scan))}
    assert scans == {"1": 3, "1-2": 2}


def test_the_same_series_under_another_number_is_a_conflict(app, client, run_jobs, study):
    uid, series = study
    send(client, series[0])
    run_jobs()
    archive(client, run_jobs, newest_prearchive(app))
    series_uid = dcmread(io.BytesIO(series[0][0])).SeriesInstanceUID
    renumbered = make_series(uid, 1, series_number=7, series_uid=series_uid)
    send(client, renumbered)
    run_jobs()
    second = newest_prearchive(app)
    archive(client, run_jobs, second, overwrite="append")
    with app.app_context():
        ps = db.session.get(PrearchiveSession, second)
        assert ps.status == "CONFLICT" and "SeriesInstanceUID of archived scan 1" in ps.message


def test_a_session_can_be_archived_into_a_precreated_session(app, client, run_jobs, study):
    _uid, series = study
    with app.app_context():
        from models import Project

        project = db.session.scalar(select(Project).filter_by(label="p1"))
        subject = Subject(project_id=project.id, label="PRE")
        db.session.add(subject)
        db.session.flush()
        db.session.add(ImagingSession(project_id=project.id, subject_id=subject.id,
                                      label="VISIT1"))
        db.session.commit()
    send(client, series[0])
    run_jobs()
    ps_id = newest_prearchive(app)
    page = client.get(f"/prearchive/{ps_id}")
    assert b"archived session VISIT1 (subject PRE)" in page.data
    archive(client, run_jobs, ps_id, into="VISIT1")
    with app.app_context():
        session = db.session.scalar(select(ImagingSession).filter_by(label="VISIT1"))
        assert [s.instance_count for s in session.scans] == [3]
    assert len(list((Path(app.config["DATA_DIR"]) / "archive/p1/PRE/VISIT1").rglob("*.dcm"))) == 3


def test_an_append_interrupted_half_way_is_finished_by_the_reconciler(app, client, run_jobs,
                                                                      study):
    import datetime as dt

    from workers import merging, prearchive
    from workers.archiving import _plan
    from workers.reconcile import reconcile

    _uid, series = study
    send(client, series[0])
    run_jobs()
    archive(client, run_jobs, newest_prearchive(app))
    send(client, series[1] + series[2])
    run_jobs()
    ps_id = newest_prearchive(app)
    with app.app_context():
        ps = db.session.get(PrearchiveSession, ps_id)
        record = prearchive.load_record(ps)
        target = _plan(ps, record, {"overwrite": "append"})
        record["archiving_to"] = target
        prearchive.save_record(record)
        # The worker died after moving the first scan's files.
        half = {**record, "scans": record["scans"][:1]}
        dst = Path(app.config["DATA_DIR"]) / "archive/p1/SUBJ/MR1"
        merging.move_appended(prearchive.session_dir(ps), dst, half, target["plan"])
        ps.status = "ARCHIVING"
        db.session.commit()
        assert reconcile(now=dt.datetime.now() + dt.timedelta(minutes=5))
    run_jobs()
    rows = archived_files(app)
    assert len(rows) == 9 and len({r.sop_instance_uid for r in rows}) == 9
    assert len(list((Path(app.config["DATA_DIR"]) / "archive").rglob("*.dcm"))) == 9
    with app.app_context():
        assert db.session.get(PrearchiveSession, ps_id) is None


def test_an_archived_session_is_relabelled_and_moved_with_its_files(app, client, run_jobs,
                                                                    study):
    _uid, series = study
    send(client, series[0])
    run_jobs()
    archive(client, run_jobs, newest_prearchive(app))
    res = client.post("/projects/p1/sessions/MR1/relabel",
                      data={"label": "MR1b", "subject": "OTHER"})
    assert res.status_code == 303
    data = Path(app.config["DATA_DIR"]) / "archive/p1"
    assert len(list((data / "OTHER/MR1b").rglob("*.dcm"))) == 3
    assert not (data / "SUBJ/MR1").exists()
    with app.app_context():
        session = db.session.scalar(select(ImagingSession).filter_by(label="MR1b"))
        assert session.subject.label == "OTHER"
    assert client.get("/projects/p1/sessions/MR1b/download").status_code == 200
    assert client.post("/projects/p1/sessions/MR1b/relabel",
                       data={"label": "../x"}).status_code == 400
    result = app.test_cli_runner().invoke(args=["verify"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("code, archived", [(0, False), (4, True), (5, True)])
def test_the_projects_prearchive_code_decides_auto_archiving(app, client, run_jobs, study,
                                                             code, archived):
    res = client.post("/projects/p1/settings", data={"accessibility": "private",
                                                     "prearchive_code": str(code)})
    assert res.status_code == 303
    _uid, series = study
    send(client, series[0])
    run_jobs()
    with app.app_context():
        assert bool(db.session.scalar(select(ImagingSession).filter_by(label="MR1"))) == archived
    send(client, series[1])  # the same session label again
    run_jobs()
    with app.app_context():
        left = db.session.scalars(select(PrearchiveSession)).all()
        scans = db.session.scalars(select(Scan)).all()
    if code == 0:  # the second upload joined the session waiting in the prearchive
        assert len(left) == 1 and not scans
        assert sorted(s["id"] for s in left[0].scans) == ["1", "2"]
    elif code == 4:
        assert len(left) == 1 and "Not archived automatically" in left[0].message
        assert "already exists" in left[0].message
    else:
        assert not left and sorted(s.scan_id for s in scans) == ["1", "2"]


def test_aa_false_in_the_comments_keeps_a_session_in_the_prearchive(app, client, run_jobs,
                                                                     study):
    client.post("/projects/p1/settings", data={"accessibility": "private",
                                               "prearchive_code": "4"})
    uid, _series = study
    send(client, make_series(uid, 2, PatientComments="AA:false"))
    run_jobs()
    with app.app_context():
        assert db.session.scalar(select(PrearchiveSession)).status == "READY"


def test_a_date_that_differs_is_not_archived_automatically(app, client, run_jobs, study):
    client.post("/projects/p1/settings", data={"accessibility": "private",
                                               "prearchive_code": "4"})
    _uid, series = study
    res = client.post("/upload", data={
        "project": "p1", "subject": "SUBJ", "session": "MR1", "session_date": "2020-01-01",
        "file": (io.BytesIO(zip_bytes({"1.dcm": series[0][0]})), "x.zip")},
        content_type="multipart/form-data")
    assert res.status_code == 303
    run_jobs()
    with app.app_context():
        ps = db.session.scalar(select(PrearchiveSession))
        assert ps.status == "READY" and "date given differs" in ps.message


def test_needs_attention_lists_what_waits_for_a_person(app, client, run_jobs, study):
    client.post("/projects/p1/settings", data={"accessibility": "private",
                                               "prearchive_code": "4"})
    _uid, series = study
    send(client, series[0])
    run_jobs()
    send(client, series[1])  # MR1 again: stays in the prearchive under code 4
    bad = client.post("/upload", data={"project": "p1", "date_unknown": "1", "file": (
        io.BytesIO(b"not an archive"), "junk.zip")}, content_type="multipart/form-data")
    assert bad.status_code == 303
    run_jobs()
    page = client.get("/attention")
    assert page.status_code == 200
    assert b"Not archived automatically" in page.data
    assert b"junk.zip" in page.data
    assert b'<span class="count">2</span>' in page.data
