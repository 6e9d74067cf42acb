"""Imports for scripts and the command line, on top of the upload pipeline
(workers.ingest) and the receiver's filing (workers.receiving): where an
import's sessions are, waiting for them, and the URIs that answer it.

The REST import service and ``flask import`` create the Upload row and queue
its jobs exactly as the web form does; asking for the archive sets the
upload's ``auto_archive``, so the jobs archive the sessions even when nobody
waits (prearchive.auto_archive). A gradual-DICOM file is filed as the DICOM
receiver files an instance: into the RECEIVING session of its study, built
once no file has come for SCANYARD_SESSION_IDLE_SECONDS. Waiting is polling
the rows: the database is the truth, and a waiter never holds a transaction
open while it sleeps (SQLite's write lock).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flask import current_app
from sqlalchemy import or_, select

from imaging import dicomio, storage
from models import (
    TRANSIENT_STATUSES,
    UPLOAD_DONE,
    UPLOAD_FAILED,
    ImagingSession,
    PrearchiveSession,
    Project,
    Upload,
    db,
)

# Short jobs are seen soon; long ones cost few queries.
POLL_FIRST_SECONDS = 0.02
POLL_MAX_SECONDS = 0.5


class Unreadable(ValueError):
    """A gradual-DICOM body that is not a DICOM instance; kept in quarantine."""


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


def _archived(entry: dict) -> ImagingSession | None:
    """Return the archived session an entry went to: by its label in its project,
    else by its StudyInstanceUID."""
    found = or_(ImagingSession.label == entry.get("session"),
                ImagingSession.study_uid == entry.get("study_uid", "-"))
    return db.session.scalars(select(ImagingSession).join(Project).where(
        Project.label == entry["project"], found)
        .order_by((ImagingSession.label == entry.get("session")).desc())).first()


@dataclass
class Outcome:
    """Where an import or an archive request stands: "done" with the URIs,
    "refused" or "failed" with the reason, or "pending"."""

    state: str
    uris: list[str] = field(default_factory=list)
    message: str = ""


def session_outcome(entry: dict, archive: bool) -> Outcome:
    """Return where one session of an upload stands (`entry` as in Upload.sessions).

    A session asked to be archived is done once archived, or refused when it
    stays in the prearchive with a reason; one that joined a session waiting
    in the prearchive is done when that session is built again.
    """
    ps = _prearchive_row(entry)
    if ps is None:
        session = _archived(entry)
        if session is None:
            return Outcome("failed", message=f"Session {entry['folder']} is neither in the "
                                             "prearchive nor in the archive.")
        return Outcome("done", [archive_uri(entry["project"], session.subject.label,
                                            session.label)])
    if ps.status in TRANSIENT_STATUSES:
        return Outcome("pending")
    if archive and not entry.get("joined"):
        return Outcome("refused", message=ps.message) if ps.message else Outcome("pending")
    return Outcome("done", [prearchive_uri(ps.project, ps.timestamp, ps.folder)])


def upload_outcome(upload_id: str) -> Outcome:
    """Return where an upload (and the archiving it asked for) stands."""
    upload = db.session.get(Upload, upload_id, populate_existing=True)
    if upload.status == UPLOAD_FAILED:
        return Outcome("failed", message=upload.error or "The import failed.")
    if upload.status != UPLOAD_DONE:
        return Outcome("pending")
    archive = bool((upload.params or {}).get("auto_archive"))
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


def wait_for_idle(prearchive_id: int, seconds: float) -> PrearchiveSession | None:
    """Wait for a prearchive session's job (build, move) to end; return its row,
    or None when the wait ran out."""
    def check():
        ps = db.session.get(PrearchiveSession, prearchive_id, populate_existing=True)
        return None if ps is None or ps.status in TRANSIENT_STATUSES else ps.id
    found = wait_until(check, seconds)
    return db.session.get(PrearchiveSession, found) if found else None


def file_gradual(path: Path, params: dict) -> Outcome:
    """File one DICOM instance as the receiver does: into the RECEIVING session of
    its study (started when there is none); return that session's URI.

    Raises Unreadable (the bytes go to quarantine with the reason).
    """
    from workers.receivers import Directory
    from workers.receiving import Receiving
    from workers.receiving import Unreadable as NotFiled

    app = current_app._get_current_object()
    receiving = Receiving(app, Directory(app.config["SCP_AE_TITLE"], db.engine), source="rest")
    data = path.read_bytes()
    db.session.commit()  # the filing takes the study's lock in a transaction of its own
    try:
        info = dicomio.read_dicom(path)
        receiving.store(data, info.meta_length, params["project"], "REST", "gradual-DICOM",
                        explicit={k: params.get(k) for k in ("project", "subject", "session")})
    except (dicomio.NotDicom, NotFiled) as exc:
        receiving.quarantine(data, str(exc), source="gradual-DICOM")
        raise Unreadable(str(exc)) from None
    receiving.flush()
    ps = db.session.scalar(select(PrearchiveSession).filter_by(study_uid=info.study_uid)
                           .order_by(PrearchiveSession.id.desc()))
    return Outcome("done", [prearchive_uri(ps.project, ps.timestamp, ps.folder)])


def current_uri(entry: dict) -> str | None:
    """Return the URI of a session an upload made (`entry` as in Upload.sessions),
    where it is now: in the prearchive, or archived."""
    ps = _prearchive_row(entry)
    if ps is not None:
        return prearchive_uri(ps.project, ps.timestamp, ps.folder)
    session = _archived(entry)
    if session is not None:
        return archive_uri(session.project.label, session.subject.label, session.label)
    return None


def progress_of(upload_id: str) -> tuple[str, int, int]:
    """Return an upload's (status, files_total, files_read) as committed now."""
    db.session.rollback()
    upload = db.session.get(Upload, upload_id, populate_existing=True)
    snapshot = (upload.status, upload.files_total, upload.files_read)
    db.session.rollback()
    return snapshot
