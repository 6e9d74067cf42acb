"""`flask verify` compares the database with the disk and says what differs."""
from __future__ import annotations

import io
from pathlib import Path

from sqlalchemy import select

from models import PrearchiveSession, db
from tests.dicomgen import make_study, zip_bytes


def archive_one(app, client, run_jobs, make_project):
    make_project("p1")
    _, files = make_study(series=2, per_series=2, patient_id="V1")
    client.post("/upload", data={"project": "p1", "date_unknown": "1", "file": (
        io.BytesIO(zip_bytes({f"{n}.dcm": d for n, d in enumerate(files)})), "v.zip")},
        content_type="multipart/form-data")
    run_jobs()
    with app.app_context():
        ps_id = db.session.scalar(select(PrearchiveSession.id))
    client.post(f"/prearchive/{ps_id}/archive")
    run_jobs()
    return Path(app.config["DATA_DIR"]) / "archive" / "p1"


def test_verify_passes_when_disk_and_database_agree(app, client, run_jobs, make_project,
                                                    runner):
    archive_one(app, client, run_jobs, make_project)
    result = runner.invoke(args=["verify"])
    assert result.exit_code == 0, result.output
    assert "agree" in result.output


def test_verify_reports_missing_orphan_and_changed_files(app, client, run_jobs, make_project,
                                                         runner):
    folder = archive_one(app, client, run_jobs, make_project)
    files = sorted(folder.rglob("*.dcm"))
    files[0].unlink()
    data = files[1].read_bytes()
    files[1].write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    files[2].write_bytes(data + b"x")
    (files[3].parent / "stray.dcm").write_bytes(b"stray")
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    result = runner.invoke(args=["verify"])
    assert result.exit_code == 1
    out = result.output
    assert "missing file" in out and files[0].name in out
    assert "sha256 differs" in out and files[1].name in out
    assert "size differs" in out and files[2].name in out
    assert "orphan file" in out and "stray.dcm" in out
    assert before == {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
