"""Backup and restore as the README says: the database first, then the data
folder; restored elsewhere, `flask verify` finds them in agreement."""
from __future__ import annotations

import io
import shutil
import sqlite3
import subprocess
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from app import create_app
from models import File, ImagingSession, PrearchiveSession, db
from tests.dicomgen import make_study, zip_bytes


def _backup_database(url: str, dest: Path) -> None:
    if url.startswith("sqlite:///"):
        # The online backup API copies a consistent snapshot while others write.
        with sqlite3.connect(url[len("sqlite:///"):]) as src, sqlite3.connect(dest) as out:
            src.backup(out)
    else:
        if not shutil.which("pg_dump"):
            pytest.skip("pg_dump is not installed")
        subprocess.run(["pg_dump", "--format=custom", f"--file={dest}", url], check=True)


def _restore_database(url: str, dump: Path, tmp_path: Path) -> str:
    if url.startswith("sqlite:///"):
        target = tmp_path / "restored.db"
        shutil.copy(dump, target)
        return f"sqlite:///{target}"
    name = f"scanyard_restore_{uuid.uuid4().hex[:8]}"
    admin = create_engine(make_url(url).set(drivername="postgresql+psycopg"),
                          isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    restored = make_url(url).set(database=name).render_as_string(hide_password=False)
    subprocess.run(["pg_restore", "--no-owner", f"--dbname={restored}", str(dump)],
                   check=True)
    return restored


def test_a_backup_restores_to_an_archive_that_verify_accepts(app, client, run_jobs,
                                                             make_project, tmp_path):
    make_project("p1")
    _, files = make_study(series=2, per_series=3, patient_id="B1")
    _, other = make_study(series=1, per_series=2, patient_id="B2")
    client.post("/upload", data={"project": "p1", "date_unknown": "1", "file": (
        io.BytesIO(zip_bytes({f"{n}.dcm": d for n, d in enumerate(files + other)})),
        "b.zip")}, content_type="multipart/form-data")
    run_jobs()
    with app.app_context():
        first = db.session.scalar(select(PrearchiveSession).filter_by(session="B1"))
        first_id = first.id
    client.post(f"/prearchive/{first_id}/archive")
    run_jobs()

    url = app.config["DATABASE_URL"]
    backup = tmp_path / "backup"
    backup.mkdir()
    _backup_database(url, backup / "db.dump")
    shutil.copytree(app.config["DATA_DIR"], backup / "data")

    # Disaster: the archive loses files and rows.
    client.post("/projects/p1/sessions/B1/delete")
    shutil.rmtree(Path(app.config["DATA_DIR"]) / "prearchive")

    restored_url = _restore_database(url, backup / "db.dump", tmp_path)
    restored_data = tmp_path / "restored-data"
    shutil.copytree(backup / "data", restored_data)
    restored = create_app({"TESTING": True, "SECRET_KEY": "t", "DATABASE_URL": restored_url,
                           "DATA_DIR": str(restored_data), "REDIS_URL": app.config["REDIS_URL"]})
    result = restored.test_cli_runner().invoke(args=["verify"])
    assert result.exit_code == 0, result.output
    with restored.app_context():
        assert db.session.scalar(select(ImagingSession).filter_by(label="B1"))
        assert db.session.query(File).filter_by(format="DICOM").count() == 6
        assert db.session.scalar(select(PrearchiveSession).filter_by(session="B2"))
        db.engine.dispose()
    if not url.startswith("sqlite"):
        admin = create_engine(make_url(url).set(drivername="postgresql+psycopg"),
                              isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{make_url(restored_url).database}" WITH (FORCE)'))
        admin.dispose()
