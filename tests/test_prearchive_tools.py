"""The prearchive's tools: move, merge two sessions, reset a stuck session."""
from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

from pydicom.uid import generate_uid
from sqlalchemy import select

from models import PrearchiveSession, db
from tests.dicomgen import make_series, zip_bytes


def send(client, files, session="MR1"):
    res = client.post("/upload", data={
        "project": "p1", "subject": "SUBJ", "session": session, "date_unknown": "1",
        "file": (io.BytesIO(zip_bytes({f"{n}.dcm": d for n, d in enumerate(files)})), "x.zip")},
        content_type="multipart/form-data")
    assert res.status_code == 303


def sessions(app):
    with app.app_context():
        return db.session.scalars(select(PrearchiveSession).order_by(PrearchiveSession.id)).all()


def test_two_partial_uploads_merge_into_one_prearchive_session(app, client, run_jobs,
                                                               make_project):
    make_project("p1")
    # The scanner gave the second half another StudyInstanceUID, so the upload
    # made a session of its own instead of joining the first.
    first, second = generate_uid(), generate_uid()
    s1, s2 = (make_series(first, 3, series_number=n) for n in (1, 2))
    s3 = make_series(second, 3, series_number=3)
    send(client, s1 + s2)
    send(client, s3, session="MR1b")
    run_jobs()
    first, second = sessions(app)
    res = client.post(f"/prearchive/{first.id}/merge", data={"into": second.id})
    assert res.status_code == 303
    run_jobs()
    (merged,) = sessions(app)
    assert merged.id == second.id and merged.status == "READY"
    assert {s["id"]: s["files"] for s in merged.scans} == {"1": 3, "2": 3, "3": 3}
    data = Path(app.config["DATA_DIR"]) / "prearchive"
    assert len(list(data.rglob("*.dcm"))) == 9
    res = client.post(f"/prearchive/{merged.id}/archive")
    run_jobs()
    assert not sessions(app)


def test_moving_a_session_to_another_project_is_a_job_that_survives_a_crash(
        app, client, run_jobs, make_project):
    from workers import prearchive, prearchive_tools
    from workers.reconcile import reconcile

    make_project("p1")
    make_project("p2")
    send(client, make_series(generate_uid(), 2))
    run_jobs()
    (ps,) = sessions(app)
    with app.app_context():
        row = db.session.get(PrearchiveSession, ps.id)
        prearchive_tools.request_move(row, "p2")
        db.session.query(PrearchiveSession).update({"job_id": "lost"})
        db.session.commit()
        # The worker died after the record was written at the new place.
        record = prearchive.load_record(row)
        prearchive.save_record({**record, "project": "p2"})
        reconcile(now=dt.datetime.now() + dt.timedelta(minutes=5))
    run_jobs()
    (moved,) = sessions(app)
    assert moved.project == "p2" and moved.status == "READY"
    root = Path(app.config["DATA_DIR"]) / "prearchive"
    assert len(list((root / "p2").rglob("*.dcm"))) == 2
    assert not list((root / "p1").rglob("*"))
    result = app.test_cli_runner().invoke(args=["verify"])
    assert result.exit_code == 0, result.output


def test_a_moved_session_reads_busy_until_its_move_job_ends(app, client, run_jobs,
                                                           make_project, monkeypatch):
    """A request that finds the session idle may queue more work on it at once
    (a script moving it back, or archiving it); the end of the move job must
    not overwrite that work's status, so the row reads MOVING to its end."""
    from imaging import storage
    from workers import prearchive_tools

    make_project("p1")
    make_project("p2")
    send(client, make_series(generate_uid(), 2))
    run_jobs()
    (ps,) = sessions(app)
    seen = []
    remove_empty_parents = storage.remove_empty_parents

    def watched(path, root):
        if not db.session().in_transaction():  # committed: what another request reads now
            with db.engine.connect() as other:
                seen.append(other.scalar(select(PrearchiveSession.status).filter_by(id=ps.id)))
        return remove_empty_parents(path, root)

    monkeypatch.setattr(storage, "remove_empty_parents", watched)
    with app.app_context():
        prearchive_tools.request_move(db.session.get(PrearchiveSession, ps.id), "p2")
    run_jobs()
    assert seen and set(seen) == {"MOVING"}, seen
    (moved,) = sessions(app)
    assert (moved.project, moved.status) == ("p2", "READY")


def test_a_stuck_session_can_be_reset_only_when_no_job_holds_it(app, client, run_jobs,
                                                                make_project):
    make_project("p1")
    send(client, make_series(generate_uid(), 1))
    run_jobs()
    (ps,) = sessions(app)
    assert client.post(f"/prearchive/{ps.id}/reset").status_code == 409  # READY: nothing to do
    with app.app_context():
        row = db.session.get(PrearchiveSession, ps.id)
        row.status = "QUEUED_ARCHIVING"
        from workers import queue

        row.job_id = queue.enqueue_archive_session(row.id).id  # a live job holds it
        db.session.commit()
    assert client.post(f"/prearchive/{ps.id}/reset").status_code == 409
    with app.app_context():
        queue.get_queue().empty()
        row = db.session.get(PrearchiveSession, ps.id)
        row.job_id = "gone"
        db.session.commit()
    assert client.post(f"/prearchive/{ps.id}/reset").status_code == 303
    (ps,) = sessions(app)
    assert ps.status == "READY"


def test_rebuild_recreates_the_index_from_the_folders_and_records(app, client, run_jobs,
                                                                  make_project):
    import shutil

    make_project("p1")
    send(client, make_series(generate_uid(), 2), session="KEEP")
    run_jobs()
    (ps,) = sessions(app)
    client.post(f"/prearchive/{ps.id}/labels",
                data={"project": "p1", "subject": "EDITED", "session": "KEEP"})
    root = Path(app.config["DATA_DIR"]) / "prearchive"
    # A folder with files and no record (copied in by hand), and a lost index.
    stray = root / "p1" / "20200101_000000000" / "STRAY"
    shutil.copytree(root / "p1" / ps.timestamp / ps.folder, stray)
    with app.app_context():
        db.session.query(PrearchiveSession).delete()
        db.session.commit()
    result = app.test_cli_runner().invoke(args=["rebuild"])
    assert result.exit_code == 0 and "2 change(s)" in result.output, result.output
    run_jobs()
    rows = {r.folder: r for r in sessions(app)}
    assert rows["KEEP"].subject == "EDITED" and rows["KEEP"].status == "READY"
    assert rows["STRAY"].status == "READY" and rows["STRAY"].file_count == 2
    assert client.post(f"/prearchive/{rows['STRAY'].id}/rebuild").status_code == 303
    run_jobs()
    assert {r.status for r in sessions(app)} == {"READY"}
