"""A Scanyard database with a million files, made by bulk inserts (for bench/listing.py).

    shape = Shape(projects=10, subjects=50, sessions=4, scans=10, files=50)
    with app.app_context():
        picked = fill(shape)   # on an empty, migrated database
        settle()

Projects P00..P09 (private) with subjects, sessions, scans, each scan's DICOM
resource of `files` File rows and a SNAPSHOTS resource of two, as archiving
makes them; a site admin "bench-admin" and "bench-member", a member of P00;
prearchive sessions in every status and uploads, some failed. No file on disk.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import os
import random
import uuid
from dataclasses import dataclass

PASSWORD = "bench-password-1"
CHUNK = 10_000
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
UID_ROOT = "1.2.826.0.1.3680043.9.7433"
SNAPSHOTS = (("snapshot.png", 90_000), ("thumbnail.png", 9_000))
SNAPSHOT_SIZE = sum(size for _, size in SNAPSHOTS)


@dataclass
class Shape:
    projects: int = 10
    subjects: int = 50
    sessions: int = 4
    scans: int = 10
    files: int = 50
    prearchive: int = 300
    snapshots: bool = True
    uploads: int = 200

    @property
    def total_files(self) -> int:
        """The DICOM files (each scan's snapshot and thumbnail come on top)."""
        return self.projects * self.subjects * self.sessions * self.scans * self.files


@contextlib.contextmanager
def postgres_database(base_url: str, keep: bool = False):
    """Yield the URL of a new PostgreSQL database on the server of `base_url`; drop it
    after, unless `keep`."""
    from sqlalchemy import create_engine, make_url, text

    name = f"scanyard_listing_{uuid.uuid4().hex[:8]}"
    admin_url = make_url(base_url.replace("postgresql://", "postgresql+psycopg://", 1))
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.set(database=name).render_as_string(hide_password=False).replace(
        "postgresql+psycopg://", "postgresql://", 1)
    try:
        yield url
    finally:
        if keep:
            print(f"kept {url}")
        else:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _insert(model, rows) -> None:
    """Insert rows of `model` in chunks, each its own transaction."""
    from sqlalchemy import insert

    from models import db

    batch = []
    for row in rows:
        batch.append(row)
        if len(batch) == CHUNK:
            db.session.execute(insert(model), batch)
            db.session.commit()
            batch = []
    if batch:
        db.session.execute(insert(model), batch)
        db.session.commit()


def fill(shape: Shape) -> dict:
    """Fill the (empty, migrated) database; return the labels the requests pick from."""
    from blueprints.auth import set_password
    from models import (
        File,
        ImagingSession,
        Membership,
        Project,
        Resource,
        Scan,
        Subject,
        User,
        db,
    )

    rng = random.Random(7)
    admin, member = User(username="bench-admin", is_admin=True), User(username="bench-member")
    for user in (admin, member):
        set_password(user, PASSWORD)
        db.session.add(user)
    db.session.commit()
    projects = [{"id": p + 1, "label": f"P{p:02d}", "name": f"Project {p}",
                 "accessibility": "private"} for p in range(shape.projects)]
    _insert(Project, projects)
    _insert(Membership, [{"project_id": 1, "user_id": member.id, "role": "member"}])
    subjects, sessions, scans, resources = [], [], [], []
    dicom_size = sum(file_size(n) for n in range(shape.files))
    for p in projects:
        for s in range(shape.subjects):
            subject = {"id": len(subjects) + 1, "project_id": p["id"], "label": f"S{s:04d}"}
            subjects.append(subject)
            for e in range(shape.sessions):
                sid = len(sessions) + 1
                sessions.append({
                    "id": sid, "project_id": p["id"], "subject_id": subject["id"],
                    "label": f"S{s:04d}_MR{e + 1}", "modality": "MR",
                    "session_date": dt.date(2020, 1, 1) + dt.timedelta(days=rng.randrange(1500)),
                    "study_uid": f"{UID_ROOT}.1.{sid}", "accession": f"ACC{sid:07d}",
                    "scanner": "Bench Scanner 3T", "study_description": "BENCH^BRAIN"})
                for n in range(shape.scans):
                    scans.append({
                        "id": len(scans) + 1, "session_id": sid, "scan_id": str(n + 1),
                        "series_uid": f"{UID_ROOT}.2.{len(scans) + 1}",
                        "series_description": f"series {n + 1}", "modality": "MR",
                        "type": f"series {n + 1}", "instance_count": shape.files,
                        "size": dicom_size,
                        "params": {"repetition_time": 2300, "echo_time": 2.98}})
                    owner = {"project_id": p["id"], "subject_id": subject["id"],
                             "session_id": sid, "scan_id": len(scans)}
                    resources.append({"id": len(resources) + 1, "label": "DICOM",
                                      "format": "DICOM", "content": "RAW", **owner,
                                      "file_count": shape.files, "size": dicom_size})
                    if shape.snapshots:
                        resources.append({"id": len(resources) + 1, "label": "SNAPSHOTS",
                                          "format": "PNG", "content": "SNAPSHOT", **owner,
                                          "file_count": 2, "size": SNAPSHOT_SIZE})
    for model, rows in ((Subject, subjects), (ImagingSession, sessions), (Scan, scans),
                        (Resource, resources)):
        _insert(model, rows)
    _insert(File, _file_rows(resources, shape.files))
    _fill_prearchive(shape, rng)
    _fix_sequences()
    return {"project": "P00", "subjects": [s["label"] for s in subjects[:shape.subjects]],
            "sessions": [e["label"] for e in sessions if e["project_id"] == 1],
            "scans": [str(n + 1) for n in range(shape.scans)]}


def file_size(n: int) -> int:
    return 133_000 + n  # an MR image of 256x256 and its header


def _file_rows(resources: list[dict], per_resource: int):
    number = 0
    for r in resources:
        if r["label"] == "SNAPSHOTS":
            for name, size in SNAPSHOTS:
                yield {"resource_id": r["id"], "path": name, "size": size,
                       "sha256": os.urandom(32).hex(), "format": "PNG",
                       "content": "THUMBNAIL" if name == "thumbnail.png" else "ORIGINAL"}
            continue
        for n in range(per_resource):
            number += 1
            uid = f"{UID_ROOT}.3.{number}"
            yield {"resource_id": r["id"], "path": f"{uid}.dcm", "size": file_size(n),
                   "sha256": os.urandom(32).hex(), "sop_instance_uid": uid,
                   "sop_class_uid": MR_STORAGE, "transfer_syntax": EXPLICIT_LE,
                   "instance_number": n + 1, "dataset_sha256": os.urandom(32).hex(),
                   "format": "DICOM"}


def _fill_prearchive(shape: Shape, rng: random.Random) -> None:
    """Prearchive sessions in every status (a few unassigned) and uploads, some failed."""
    from models import PrearchiveSession, Upload

    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    statuses = ["READY"] * 6 + ["RECEIVING", "CONFLICT", "ERROR", "BUILDING"]
    rows = []
    for n in range(shape.prearchive):
        project = None if n % 25 == 0 else f"P{n % shape.projects:02d}"
        status = statuses[n % len(statuses)]
        rows.append({
            "project": project, "project_key": project or "_unassigned",
            "timestamp": (now - dt.timedelta(minutes=n)).strftime("%Y%m%d_%H%M%S%f")[:-3],
            "folder": f"PRE{n:05d}", "subject": f"NEW{n:05d}", "session": f"PRE{n:05d}",
            "study_uid": f"{UID_ROOT}.4.{n}", "scan_date": dt.date(2024, 1, 1), "status": status,
            "message": "archiving refused: bench" if status in ("CONFLICT", "ERROR") else None,
            "source": rng.choice(["web", "scp"]), "scan_count": 10, "file_count": 500,
            "size": 500 * 133_000, "scans": [{"id": str(i + 1), "series_description":
                                             f"series {i + 1}"} for i in range(10)],
            "received": now - dt.timedelta(minutes=n),
            "last_modified": now - dt.timedelta(minutes=n)})
    _insert(PrearchiveSession, rows)
    _insert(Upload, [{"id": uuid.uuid4().hex, "user_id": 2 if n % 2 else 1,
                      "original_name": f"upload{n}.zip", "size": 10**8,
                      "status": "FAILED" if n % 10 == 0 else "DONE",
                      "project": f"P{n % shape.projects:02d}", "created": now - dt.timedelta(
                          hours=n)} for n in range(shape.uploads)])


def _fix_sequences() -> None:
    """PostgreSQL: move the id sequences past the ids given explicitly."""
    from sqlalchemy import text

    from models import db

    if db.engine.dialect.name != "postgresql":
        return
    for table in ("project", "subject", "imaging_session", "scan", "resource"):
        db.session.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                f"(SELECT max(id) FROM {table}))"))
    db.session.commit()


def settle() -> None:
    """Leave the database as a server's is some time after such inserts: PostgreSQL
    vacuumed and analyzed (as autovacuum would), SQLite's WAL checkpointed."""
    from sqlalchemy import text

    from models import db

    db.session.remove()
    if db.engine.dialect.name == "postgresql":
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    else:  # outside a transaction (the app begins each one with BEGIN IMMEDIATE)
        raw = db.engine.raw_connection()
        try:
            raw.driver_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            raw.close()
