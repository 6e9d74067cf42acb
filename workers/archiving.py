"""Moving prearchive sessions into the archive, and deleting archived sessions.

Archiving is one folder rename and one database transaction:
  1. the record notes where the session is going (``archiving_to``);
  2. the session folder is renamed into ``archive/{project}/{subject}/{session}``;
  3. the Subject, ImagingSession, Scan, Resource and File rows are created and
     the prearchive row deleted, in one transaction;
  4. the prearchive record is removed.
A crash after 1 or 2 is finished by running the job again (the reconciler
does this); a crash before 2 leaves the session where it was.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import shutil
from pathlib import Path

from flask import current_app
from rq import get_current_job
from sqlalchemy import delete, insert, select

from imaging import labels, storage
from models import (
    ARCHIVING,
    QUEUED_ARCHIVING,
    READY,
    Assessor,
    File,
    ImagingSession,
    PrearchiveSession,
    Project,
    Reconstruction,
    Resource,
    Scan,
    Subject,
    db,
)
from workers import anonymization, prearchive, snapshots
from workers.context import app_job


class ArchiveRefused(Exception):
    """The session cannot be archived as asked; the message says why."""


def check_archivable(ps: PrearchiveSession, project: str | None, subject: str | None,
                     session: str | None) -> Project:
    """Return the target project, or raise ArchiveRefused with the reason."""
    if not project:
        raise ArchiveRefused("Choose a project before archiving.")
    proj = db.session.scalar(select(Project).filter_by(label=project))
    if proj is None:
        raise ArchiveRefused(f"Project {project!r} does not exist.")
    if not subject:
        raise ArchiveRefused("Give the session a subject before archiving.")
    if not session:
        raise ArchiveRefused("Give the session a label before archiving.")
    try:
        labels.check_label(subject, "Subject label")
        labels.check_label(session, "Session label")
    except labels.LabelError as exc:
        raise ArchiveRefused(str(exc)) from None
    exists = db.session.scalar(select(ImagingSession.id).filter_by(
        project_id=proj.id, label=session))
    if exists:
        raise ArchiveRefused(
            f"Session {session!r} already exists in project {project!r}; choose another "
            "label (merging into an existing session is not available yet).")
    return proj


@app_job
def archive_session(prearchive_id: int, options: dict | None = None) -> str | None:
    """Job: archive one prearchive session; returns the archived session's path."""
    ps = db.session.get(PrearchiveSession, prearchive_id)
    if ps is None or ps.status not in (QUEUED_ARCHIVING, ARCHIVING):
        return None
    record = prearchive.load_record(ps)
    target = record.get("archiving_to")
    try:
        if target is None:
            check_archivable(ps, ps.project, ps.subject, ps.session)
            target = {"project": ps.project, "subject": ps.subject, "session": ps.session}
            record["archiving_to"] = target
            prearchive.save_record(record)
        ps.status = ARCHIVING
        db.session.commit()
        if prearchive.session_dir(ps).exists():
            _apply_project_script(ps, record, target)
        return _move_and_index(ps, record, target)
    except ArchiveRefused as exc:
        _back_to_ready(ps, record, str(exc))
        return None
    except Exception as exc:
        db.session.rollback()
        job = get_current_job()
        if job is None or not job.should_retry:
            _back_to_ready(db.session.get(PrearchiveSession, prearchive_id),
                           prearchive.load_record(ps), f"Archiving failed: {exc}")
        raise


def _apply_project_script(ps: PrearchiveSession, record: dict, target: dict) -> None:
    """Run the target project's anonymization script on the session's files in place.

    Runs before the folder moves, so no original header reaches the archive;
    rejected files go to quarantine. Raises ArchiveRefused when no file is left.
    """
    project = db.session.scalar(select(Project).filter_by(label=target["project"]))
    script = anonymization.active_script(anonymization.project_scope(project))
    if script is None:
        return
    src = prearchive.session_dir(ps)

    def path_of(scan, entry):
        return src / "SCANS" / scan["id"] / "DICOM" / entry["name"]

    changed, rejected = anonymization.anonymize_record(script, record, path_of, labels=target)
    reason = "rejected by the anonymization script of project {}: {}"
    anonymization.quarantine(
        record.get("upload_id") or f"archive-{ps.timestamp}-{ps.folder}",
        [(path, f"{scan['id']}/{entry['name']}", reason.format(target["project"], why))
         for scan, entry, path, why in rejected])
    if changed or rejected:
        prearchive.log(record, f"project anonymization script: {changed} file(s) changed, "
                               f"{len(rejected)} rejected")
    prearchive.save_record(record)
    if not record["scans"]:
        raise ArchiveRefused("The project's anonymization script rejected every file; "
                             "they are in quarantine.")


def _back_to_ready(ps, record: dict, message: str) -> None:
    src = prearchive.session_dir(ps)
    if not src.exists() and record.get("archiving_to"):
        # The folder already moved: leave ARCHIVING for the reconciler to finish.
        ps.message = message
        db.session.commit()
        return
    record.pop("archiving_to", None)
    record["message"] = message
    prearchive.log(record, message)
    prearchive.save_record(record)
    ps.status = READY
    ps.message = message
    db.session.commit()


def _move_and_index(ps: PrearchiveSession, record: dict, target: dict) -> str:
    data_dir = current_app.config["DATA_DIR"]
    src = prearchive.session_dir(ps)
    dst = storage.archive_session_dir(data_dir, target["project"], target["subject"],
                                      target["session"])
    if src.exists():
        if dst.exists():
            raise ArchiveRefused(f"The archive folder of session {target['session']!r} "
                                 "already exists on disk.")
        storage.move_into(src, dst)
        storage.fsync_dir(dst.parent)
    elif not dst.exists():
        raise RuntimeError(f"Neither {src} nor {dst} exists.")
    _index_archived(ps, record, target, dst)
    prearchive.record_path(ps).unlink(missing_ok=True)
    storage.remove_empty_parents(src.parent, storage.prearchive_root(data_dir))
    return str(dst.relative_to(data_dir))


def _index_archived(ps: PrearchiveSession, record: dict, target: dict, dst: Path) -> None:
    """Create the archive rows and drop the prearchive row, in one transaction."""
    project = db.session.scalar(select(Project).filter_by(label=target["project"]))
    subject = db.session.scalar(select(Subject).filter_by(project_id=project.id,
                                                          label=target["subject"]))
    if subject is None:
        subject = Subject(project_id=project.id, label=target["subject"])
        db.session.add(subject)
        db.session.flush()
    study = record.get("study") or {}
    flags = record.get("flags") or {}
    session = ImagingSession(
        project_id=project.id, subject_id=subject.id, label=target["session"],
        modality=study.get("modality"), study_uid=record.get("study_uid"),
        session_date=dt.date.fromisoformat(record["scan_date"]) if record.get("scan_date")
        else None, date_unknown=bool(flags.get("date_unknown")),
        accession=study.get("accession"), scanner=study.get("scanner"),
        study_description=study.get("study_description"))
    db.session.add(session)
    db.session.flush()
    file_rows = []
    for s in record.get("scans", []):
        scan = Scan(session_id=session.id, scan_id=s["id"], series_uid=s.get("series_uid"),
                    series_description=s.get("series_description"),
                    modality=s.get("modality"), type=s.get("series_description"),
                    instance_count=len(s["files"]), size=sum(f["size"] for f in s["files"]),
                    params={k: s.get(k) for k in ("manufacturer", "model", "repetition_time",
                                                  "echo_time", "flip_angle") if s.get(k)})
        db.session.add(scan)
        db.session.flush()
        resource = Resource(project_id=project.id, subject_id=subject.id,
                            session_id=session.id, scan_id=scan.id, label="DICOM",
                            format="DICOM", content="RAW")
        db.session.add(resource)
        db.session.flush()
        file_rows.extend(
            {"resource_id": resource.id, "path": f["name"], "size": f["size"],
             "sha256": f["sha256"], "sop_instance_uid": f.get("sop_uid"),
             "sop_class_uid": f.get("sop_class_uid"),
             "transfer_syntax": f.get("transfer_syntax"),
             "instance_number": f.get("instance_number"),
             "dataset_sha256": f.get("dataset_sha256"), "format": "DICOM"}
            for f in s["files"])
        file_rows.extend(_snapshot_rows(dst / "SCANS" / s["id"], resource))
    if file_rows:
        db.session.execute(insert(File), file_rows)
    db.session.execute(delete(PrearchiveSession).where(PrearchiveSession.id == ps.id))
    db.session.commit()


def _snapshot_rows(scan_dir: Path, dicom: Resource) -> list[dict]:
    """Add a scan's SNAPSHOTS resource when its folder has snapshots; return its file rows."""
    folder = scan_dir / snapshots.RESOURCE
    pngs = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if not pngs:
        return []
    resource = Resource(project_id=dicom.project_id, subject_id=dicom.subject_id,
                        session_id=dicom.session_id, scan_id=dicom.scan_id,
                        label=snapshots.RESOURCE, format="PNG", content="SNAPSHOT")
    db.session.add(resource)
    db.session.flush()
    return [{"resource_id": resource.id, "path": png.name, "size": png.stat().st_size,
             "sha256": hashlib.sha256(png.read_bytes()).hexdigest(), "format": "PNG",
             "content": "THUMBNAIL" if png.name == snapshots.THUMBNAIL else "ORIGINAL"}
            for png in pngs]


def delete_archived_session(session_id: int) -> None:
    """Delete an archived session: its folder goes to the trash, then its rows."""
    session = db.session.get(ImagingSession, session_id)
    if session is None:
        return
    data_dir = current_app.config["DATA_DIR"]
    folder = storage.archive_session_dir(data_dir, session.project.label,
                                         session.subject.label, session.label)
    resource_ids = select(Resource.id).where(Resource.session_id == session.id)
    db.session.execute(delete(File).where(File.resource_id.in_(resource_ids)))
    db.session.execute(delete(Resource).where(Resource.session_id == session.id))
    for model in (Scan, Assessor, Reconstruction):
        db.session.execute(delete(model).where(model.session_id == session.id))
    db.session.delete(session)
    trashed = storage.to_trash(folder)
    try:
        db.session.commit()
    except Exception:
        db.session.rollback()
        if trashed is not None:
            storage.move_into(trashed, folder)
        raise
    if trashed is not None:
        shutil.rmtree(trashed, ignore_errors=True)
