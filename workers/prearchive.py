"""Prearchive sessions on disk and their index rows.

A prearchive session is the folder
``prearchive/{project|_unassigned}/{timestamp}/{folder}`` and its record
``{folder}.json`` beside it. The record is the truth; ``PrearchiveSession``
rows are an index written from it (``rebuild`` recreates them).
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

from flask import current_app
from sqlalchemy import select, update

from imaging import storage
from models import (
    DELETING,
    QUEUED_ARCHIVING,
    QUEUED_DELETING,
    READY,
    PrearchiveSession,
    Project,
    db,
    utcnow,
)
from workers.context import app_job

# Statuses kept in the record; the others live only in the row while a job runs.
DURABLE_STATUSES = {"RECEIVING", "READY", "CONFLICT", "ERROR"}


def data_dir() -> Path:
    return Path(current_app.config["DATA_DIR"])


def session_dir(ps: PrearchiveSession) -> Path:
    return storage.prearchive_session_dir(data_dir(), ps.project, ps.timestamp, ps.folder)


def record_path(ps: PrearchiveSession) -> Path:
    return storage.prearchive_json(data_dir(), ps.project, ps.timestamp, ps.folder)


def load_record(ps: PrearchiveSession) -> dict:
    """Return the session's record, or a minimal one when the file is missing."""
    return storage.read_json(record_path(ps)) or new_record(
        ps.project, ps.timestamp, ps.folder, source=ps.source)


def new_record(project, timestamp, folder, *, source="web", subject=None, session=None,
               study_uid=None, upload_id=None, sender_ae=None) -> dict:
    now = utcnow().isoformat()
    return {
        "project": project, "timestamp": timestamp, "folder": folder,
        "subject": subject, "session": session or folder, "study_uid": study_uid,
        "source": source, "sender_ae": sender_ae, "upload_id": upload_id,
        "status": READY, "message": None, "received": now, "last_modified": now,
        "scan_date": None, "study": {}, "flags": {}, "log": [], "scans": [],
    }


def scan_summary(record: dict) -> list[dict]:
    """Return the per-scan lines shown in lists (no per-file detail)."""
    return [
        {"id": s["id"], "series_description": s.get("series_description"),
         "modality": s.get("modality"), "files": len(s.get("files", [])),
         "size": sum(f["size"] for f in s.get("files", []))}
        for s in record.get("scans", [])
    ]


def save_record(record: dict) -> None:
    """Write a session's record atomically (temp file, fsync, rename)."""
    path = storage.prearchive_json(data_dir(), record["project"], record["timestamp"],
                                   record["folder"])
    storage.write_json_atomic(path, record)


def index_record(record: dict, ps: PrearchiveSession | None = None) -> PrearchiveSession:
    """Create or update the index row of a record (the caller commits)."""
    if ps is None:
        ps = db.session.scalar(select(PrearchiveSession).filter_by(
            project_key=storage.project_key(record["project"]),
            timestamp=record["timestamp"], folder=record["folder"]))
    if ps is None:
        ps = PrearchiveSession(project_key=storage.project_key(record["project"]),
                               timestamp=record["timestamp"], folder=record["folder"])
        db.session.add(ps)
    summary = scan_summary(record)
    ps.project = record["project"]
    ps.project_key = storage.project_key(record["project"])
    ps.subject = record.get("subject")
    ps.session = record.get("session")
    ps.study_uid = record.get("study_uid")
    ps.scan_date = dt.date.fromisoformat(record["scan_date"]) if record.get("scan_date") else None
    ps.status = record.get("status") or READY
    ps.message = record.get("message")
    ps.source = record.get("source") or "web"
    ps.sender_ae = record.get("sender_ae")
    ps.upload_id = record.get("upload_id")
    ps.scans = summary
    ps.scan_count = len(summary)
    ps.file_count = sum(s["files"] for s in summary)
    ps.size = sum(s["size"] for s in summary)
    ps.received = _parse_time(record.get("received")) or utcnow()
    ps.last_modified = _parse_time(record.get("last_modified")) or utcnow()
    return ps


def _parse_time(text: str | None) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def log(record: dict, message: str) -> None:
    """Append a line to the session's log (kept in its record)."""
    record.setdefault("log", []).append({"time": utcnow().isoformat(), "message": message})


def update_labels(ps: PrearchiveSession, *, subject, session) -> None:
    """Change a session's subject and session labels, in its record and index."""
    record = load_record(ps)
    changes = []
    for key, value in (("subject", subject), ("session", session)):
        if record.get(key) != value:
            changes.append(f"{key} {record.get(key)!r} -> {value!r}")
            record[key] = value
    record["last_modified"] = utcnow().isoformat()
    if changes:
        log(record, "labels changed: " + ", ".join(changes))
    save_record(record)
    index_record(record, ps)


def move_to_project(ps: PrearchiveSession, project: str | None) -> str:
    """Move a session's folder and record to another project's prearchive;
    return the status its record gives it, for when the caller is done.

    Crash-safe in this order: the record is written at the new place, the
    folder renamed, the row pointed at the new place (commit), and only then
    the old record removed. Running it again after a crash finishes the move.
    The row keeps the caller's status (MOVING) meanwhile: one that read READY
    would let a request queue more work on the session (a move back, an
    archive) whose status the end of this job would then overwrite.
    """
    if ps.project == project:
        return load_record(ps).get("status") or READY
    root = storage.prearchive_root(data_dir())
    old_dir, old_json = session_dir(ps), record_path(ps)
    new_dir = storage.prearchive_session_dir(data_dir(), project, ps.timestamp, ps.folder)
    if old_dir.exists() and new_dir.exists():
        raise FileExistsError(f"The prearchive of {project or 'unassigned'} already holds "
                              f"{ps.timestamp}/{ps.folder}.")
    record = storage.read_json(old_json) or load_record_at(project, ps)
    log(record, f"moved from project {ps.project or 'unassigned'} to "
                f"{project or 'unassigned'}")
    record.update(project=project, last_modified=utcnow().isoformat())
    record.pop("moving_to", None)
    save_record(record)
    if old_dir.exists():
        storage.move_into(old_dir, new_dir)
        storage.remove_empty_parents(old_dir.parent, root)
    status = ps.status
    index_record(record, ps)
    settled, ps.status = ps.status, status
    db.session.commit()
    old_json.unlink(missing_ok=True)
    storage.remove_empty_parents(old_json.parent, root)
    return settled


def load_record_at(project: str | None, ps: PrearchiveSession) -> dict:
    """Return the session's record as written at `project`'s place."""
    return storage.read_json(storage.prearchive_json(data_dir(), project, ps.timestamp,
                                                     ps.folder)) or load_record(ps)


def delete_files(ps: PrearchiveSession) -> None:
    """Remove a session's folder and record from disk."""
    folder, record = session_dir(ps), record_path(ps)
    storage.remove_tree(folder)
    record.unlink(missing_ok=True)
    storage.remove_empty_parents(record.parent, storage.prearchive_root(data_dir()))


@app_job
def delete_prearchive_session(prearchive_id: int) -> None:
    """Job: delete a prearchive session's files, then its row."""
    ps = db.session.get(PrearchiveSession, prearchive_id)
    if ps is None or ps.status not in (QUEUED_DELETING, DELETING):
        return
    ps.status = DELETING
    db.session.commit()
    delete_files(ps)
    db.session.delete(ps)
    db.session.commit()


class Busy(Exception):
    """The session is in the middle of something else; the message says what."""


def check_idle(ps: PrearchiveSession, action: str) -> None:
    if ps.status not in DURABLE_STATUSES:
        raise Busy(f"The session is {ps.status}; it cannot be {action} until that ends.")


def request_archive(ps: PrearchiveSession, options: dict | None = None, after=None) -> None:
    """Check that the session can be archived, then queue its archive job.

    options: overwrite (none, append, delete) and target project, subject and
    session labels. Raises Busy, or workers.archiving.ArchiveRefused with the reason.
    """
    from workers import queue
    from workers.archiving import check_archivable

    options = {k: v for k, v in (options or {}).items() if v}
    check_idle(ps, "archived")
    if ps.status == "RECEIVING":
        raise Busy("The session is still receiving files; archive it when it is READY.")
    check_archivable(ps, options.get("project") or ps.project,
                     options.get("subject") or ps.subject,
                     options.get("session") or ps.session, options.get("overwrite", "none"))
    ps.status = QUEUED_ARCHIVING
    ps.message = None
    db.session.commit()
    _remember_job(ps.id, queue.enqueue_archive_session(ps.id, options, after=after))


AUTO_ARCHIVE_CODES = {4: "none", 5: "append"}


def auto_archive(ps: PrearchiveSession, after=None, flags: dict | None = None) -> str | None:
    """Archive a freshly built session when its project (prearchive code 4 or 5)
    or the data (AA:true, auto-archive=true) asks for it.

    Returns why it was not archived, or None. A session that cannot be
    archived (it exists already under code 4, a date differs) stays READY in
    the prearchive with the reason, as XNAT does.
    """
    from workers.archiving import ArchiveRefused

    project = db.session.scalar(select(Project).filter_by(label=ps.project)) \
        if ps.project else None
    if flags is None:  # the caller that has just written the record passes them
        flags = load_record(ps).get("flags")
    flags = flags or {}
    code = project.prearchive_code if project else 0
    wanted = flags.get("auto_archive")
    if wanted is None:
        wanted = code in AUTO_ARCHIVE_CODES
    if not wanted:
        return None
    reason = None
    if flags.get("date_mismatch"):
        reason = "the session date given differs from the one in the headers"
    else:
        try:
            overwrite = flags.get("overwrite") or AUTO_ARCHIVE_CODES.get(code, "none")
            request_archive(ps, {"overwrite": overwrite}, after=after)
            return None
        except (ArchiveRefused, Busy) as exc:
            reason = str(exc)
    db.session.rollback()
    message = f"Not archived automatically: {reason}"
    record = load_record(ps)
    record["message"] = message
    log(record, message)
    save_record(record)
    ps.message = message
    db.session.commit()
    return message


def request_delete(ps: PrearchiveSession) -> None:
    """Queue the deletion of a prearchive session (raises Busy while a job holds it)."""
    from workers import queue

    check_idle(ps, "deleted")
    ps.status = QUEUED_DELETING
    db.session.commit()
    _remember_job(ps.id, queue.enqueue_delete_prearchive(ps.id))


def _remember_job(prearchive_id: int, job) -> None:
    """Note a queued job on its row, which a fast worker may have deleted already
    (an ORM update of a deleted row would fail with StaleDataError)."""
    db.session.execute(update(PrearchiveSession).where(PrearchiveSession.id == prearchive_id)
                       .values(job_id=job.id))
    db.session.commit()
