"""The archive's listing pages at scale: the projects page counts bytes from the
resources' totals, which follow every change of their files, and the pages ask
the database a fixed number of times however many rows they show (REST lists too)."""
from __future__ import annotations

import contextlib
import io

from pydicom.uid import generate_uid
from sqlalchemy import event, func, select

from app import filesize
from models import File, PrearchiveSession, Project, Resource, db
from tests.dicomgen import make_series, zip_bytes


def send(client, files: list[bytes], subject="SUBJ", session="MR1"):
    res = client.post("/upload", data={
        "project": "p1", "subject": subject, "session": session, "date_unknown": "1",
        "file": (io.BytesIO(zip_bytes({f"{n}.dcm": d for n, d in enumerate(files)})),
                 "part.zip")},
        content_type="multipart/form-data", headers={"Accept": "application/json"})
    assert res.status_code == 202, res.get_data(as_text=True)


def archive_newest(app, client, run_jobs, **form):
    run_jobs()
    with app.app_context():
        ps_id = db.session.scalar(select(PrearchiveSession.id)
                                  .order_by(PrearchiveSession.id.desc()))
    assert client.post(f"/prearchive/{ps_id}/archive", data=form).status_code == 303
    run_jobs()


def study(series: int, per_series: int) -> list[bytes]:
    uid = generate_uid()
    return [f for n in range(series)
            for f in make_series(uid, per_series, series_number=n + 1, description=f"s{n}")]


def add_resource_file(client, url: str, name: str, data: bytes, resource="NOTES"):
    res = client.post(url + "/resources", data={"resource": resource,
                                                "files": [(io.BytesIO(data), name)]},
                      content_type="multipart/form-data", headers={"Accept": "application/json"})
    assert res.status_code == 201, res.get_data(as_text=True)


def resource_totals_match_their_files(app) -> int:
    """Assert that each resource's totals are its files'; return the project's bytes."""
    with app.app_context():
        for r in db.session.scalars(select(Resource)):
            count, size = db.session.execute(
                select(func.count(File.id), func.coalesce(func.sum(File.size), 0))
                .where(File.resource_id == r.id)).one()
            assert (r.file_count, r.size) == (count, size), r.label
        return db.session.scalar(select(func.sum(File.size)))


def test_project_bytes_follow_archiving_appending_resources_and_deletions(
        app, client, run_jobs, make_project):
    make_project("p1")
    send(client, study(series=2, per_series=3))
    archive_newest(app, client, run_jobs)
    send(client, study(series=1, per_series=2))
    archive_newest(app, client, run_jobs, overwrite="append")
    add_resource_file(client, "/projects/p1", "protocol.txt", b"x" * 5000)
    add_resource_file(client, "/projects/p1/sessions/MR1/scans/1", "note.txt", b"y" * 700)
    assert client.post("/projects/p1/sessions/MR1/scans/1/resources/NOTES/files/note.txt"
                       "/delete").status_code == 303
    total = resource_totals_match_their_files(app)

    index, page = client.get("/").data.decode(), client.get("/projects/p1").data.decode()
    assert filesize(total) in index and filesize(total) in page
    assert "1 subjects, 1 sessions, 3 scans" in page


def test_deleting_a_resource_file_lowers_the_project_bytes(app, client, run_jobs,
                                                           make_project):
    make_project("p1")
    send(client, study(series=1, per_series=2))
    archive_newest(app, client, run_jobs)
    add_resource_file(client, "/projects/p1/sessions/MR1", "a.bin", b"a" * 40_000)
    before = resource_totals_match_their_files(app)
    assert client.post("/projects/p1/sessions/MR1/resources/NOTES/files/a.bin/delete"
                       ).status_code == 303
    after = resource_totals_match_their_files(app)
    assert before - after == 40_000
    assert filesize(after) in client.get("/projects/p1").data.decode()


@contextlib.contextmanager
def statements(app):
    """Count the SQL statements run meanwhile."""
    seen = []

    def count(*_args):
        seen.append(1)

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", count)


def queries_for(app, client, url: str) -> int:
    with statements(app) as seen:
        res = client.get(url)
    assert res.status_code == 200, url
    return len(seen)


def test_listing_pages_ask_the_database_as_often_for_many_rows_as_for_one(
        app, client, run_jobs, make_project):
    make_project("p1")
    send(client, study(series=1, per_series=2), subject="SUBJ", session="MR1")
    archive_newest(app, client, run_jobs)
    pages = ["/", "/projects/p1", "/projects/p1/subjects/SUBJ", "/projects/p1/sessions/MR1",
             "/projects/p1/sessions/MR1/scans/1", "/search?q=SUBJ",
             "/data/projects/p1/subjects?format=json", "/data/projects/p1/experiments?format=json",
             "/data/experiments?format=json"]
    one = {url: queries_for(app, client, url) for url in pages}

    for subject, session in (("SUBJ", "MR2"), ("SUBJ3", "MR3")):
        send(client, study(series=3, per_series=2), subject=subject, session=session)
        archive_newest(app, client, run_jobs)
    send(client, study(series=1, per_series=3), subject="SUBJ", session="MR1")
    archive_newest(app, client, run_jobs, overwrite="append")
    add_resource_file(client, "/projects/p1/sessions/MR1/scans/1", "n.txt", b"n",
                      resource="NOTES")
    with app.app_context():
        assert db.session.scalar(select(func.count(Project.id))) == 1
    many = {url: queries_for(app, client, url) for url in pages}
    assert many == one
