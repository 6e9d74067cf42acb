"""Imports for scripts and the command line, on top of the upload pipeline
(workers.ingest): archiving what an import produced, waiting for it, and the
URIs that answer it.

The REST import service and ``flask import`` create the Upload row and queue
its jobs exactly as the web form does. With ``params["archive"]`` the
finishing job queues the archiving of each session it made
(archive_after_upload), so that the archive happens even when nobody waits
for it. Waiting is polling the rows: the database is the truth, and a waiter
never holds a transaction open while it sleeps (SQLite's write lock).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import select

from imaging import storage
from models import (
    ARCHIVING,
    QUEUED_ARCHIVING,
    UPLOAD_DONE,
    UPLOAD_FAILED,
    ImagingSession,
    PrearchiveSession,
    Project,
    Upload,
    db,
)
from workers import prearchive
from workers.archiving import ArchiveRefused

# Short jobs (a gradual import's one file) are seen soon; long ones cost few queries.
POLL_FIRST_SECONDS = 0.02
POLL_MAX_SECONDS = 0.5


def prearchive_uri(project: str | None, timestamp: str, folder: str) -> str:
    return f"/data/prearchive/projects/{storage.project_key(project)}/{timestamp}/{folder}"


def archive_uri(project: str, subject: str, session: str) -> str:
    return f"/data/archive/projects/{project}/subjects/{subject}/experiments/{session}"


def wait_until(check: Callable[[], object], seconds: float) -> object:
    """Call `check` until it returns something other than None or `seconds` pass;
    return that, or None. Each call sees the latest commits."""
    deadline = time.monotonic() + max(seconds, 0)
    pause = POLL_FIRST_SECONDS
    while True:
        db.session.rollback()  # a fresh snapshot, and no lock held while sleeping
        result = check()
        db.session.rollback()
        if result is not None or time.monotonic() >= deadline:
            return result
        time.sleep(pause)
        pause = min(pause * 1.5, POLL_MAX_SECONDS)


def _prearchive_row(entry: dict) -> PrearchiveSession | None:
    """Return the prearchive row of an entry: project (or "prearchive", the project
    it waits in when it is archived into another), timestamp, folder."""
    project = entry["prearchive"] if "prearchive" in entry else entry["project"]
    return db.session.scalar(select(PrearchiveSession).filter_by(
        project_key=storage.project_key(project), timestamp=entry["timestamp"],
        folder=entry["folder"]))


def archive_after_upload(upload: Upload) -> None:
    """Queue the archiving of the sessions an upload made, when it asked for that.

    A session that cannot be archived (its label is taken, no subject, ...)
    stays in the prearchive with the reason as its message.
    """
    if not (upload.params or {}).get("archive") or upload.status != UPLOAD_DONE:
        return
    messages = list(upload.messages or [])
    for entry in upload.sessions or []:
        ps = _prearchive_row(entry)
        if ps is None:
            continue
        try:
            prearchive.request_archive(ps, {"overwrite": upload.params.get("overwrite")})
        except (ArchiveRefused, prearchive.Busy) as exc:
            ps.message = str(exc)
            messages.append(f"Session {ps.folder} was not archived: {exc}")
            db.session.commit()
    if messages != (upload.messages or []):
        upload.messages = messages
        db.session.commit()


@dataclass
class Outcome:
    """Where an import or an archive request stands: "done" with the URIs,
    "refused" or "failed" with the reason, or "pending"."""

    state: str
    uris: list[str] = field(default_factory=list)
    message: str = ""


def session_outcome(entry: dict, archive: bool) -> Outcome:
    """Return where one session of an upload stands (`entry` as in Upload.sessions)."""
    ps = _prearchive_row(entry)
    if not archive:
        return Outcome("done", [prearchive_uri(entry["project"], entry["timestamp"],
                                               entry["folder"])])
    if ps is not None:
        if ps.status in (QUEUED_ARCHIVING, ARCHIVING) or not ps.message:
            return Outcome("pending")
        return Outcome("refused", message=ps.message)
    session = db.session.scalar(select(ImagingSession).join(Project).filter(
        Project.label == entry["project"], ImagingSession.label == entry["session"]))
    if session is None:
        return Outcome("failed", message=f"Session {entry['folder']} is neither in the "
                                         "prearchive nor in the archive.")
    return Outcome("done", [archive_uri(entry["project"], session.subject.label,
                                        session.label)])


def upload_outcome(upload_id: str) -> Outcome:
    """Return where an upload (and the archiving it asked for) stands."""
    upload = db.session.get(Upload, upload_id, populate_existing=True)
    if upload.status == UPLOAD_FAILED:
        return Outcome("failed", message=upload.error or "The import failed.")
    if upload.status != UPLOAD_DONE:
        return Outcome("pending")
    archive = bool((upload.params or {}).get("archive"))
    outcomes = [session_outcome(entry, archive) for entry in upload.sessions or []]
    for state in ("refused", "failed", "pending"):
        found = [o for o in outcomes if o.state == state]
        if found:
            return Outcome(state, message=" ".join(o.message for o in found).strip())
    return Outcome("done", [uri for o in outcomes for uri in o.uris])


def wait_for_upload(upload_id: str, seconds: float) -> Outcome:
    """Wait up to `seconds` for an upload (and its archiving) to end; return its Outcome."""
    def check():
        outcome = upload_outcome(upload_id)
        return None if outcome.state == "pending" else outcome
    return wait_until(check, seconds) or Outcome("pending")


def wait_for_archive(entry: dict, seconds: float) -> Outcome:
    """Wait for a prearchive session (project/timestamp/folder/session) to be archived."""
    def check():
        outcome = session_outcome(entry, archive=True)
        return None if outcome.state == "pending" else outcome
    return wait_until(check, seconds) or Outcome("pending")


def wait_for_removal(prearchive_ids: list[int], seconds: float) -> bool:
    """Wait for prearchive rows to be gone (deleted); True when they all are."""
    def check():
        left = db.session.scalars(select(PrearchiveSession.id).where(
            PrearchiveSession.id.in_(prearchive_ids))).all()
        return True if not left else None
    return bool(wait_until(check, seconds))


def progress_of(upload_id: str) -> tuple[str, int, int]:
    """Return an upload's (status, files_total, files_read) as committed now."""
    db.session.rollback()
    upload = db.session.get(Upload, upload_id, populate_existing=True)
    snapshot = (upload.status, upload.files_total, upload.files_read)
    db.session.rollback()
    return snapshot


def current_uri(entry: dict) -> str | None:
    """Return the URI of a session an upload made (`entry` as in Upload.sessions),
    where it is now: in the prearchive, or archived (found by its StudyInstanceUID)."""
    ps = _prearchive_row(entry)
    if ps is not None:
        return prearchive_uri(ps.project, ps.timestamp, ps.folder)
    if entry.get("study_uid"):
        session = db.session.scalar(select(ImagingSession).join(Project).where(
            ImagingSession.study_uid == entry["study_uid"],
            Project.label == entry["project"]))
        if session is not None:
            return archive_uri(session.project.label, session.subject.label, session.label)
    return None
