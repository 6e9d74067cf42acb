"""Moving prearchive sessions into the archive, and deleting archived sessions.

Archiving a new session is one folder rename and one database transaction:
  1. the record notes where the session is going (``archiving_to``);
  2. the session folder is renamed into ``archive/{project}/{subject}/{session}``;
  3. the Subject, ImagingSession, Scan, Resource and File rows are created and
     the prearchive row deleted, in one transaction;
  4. the prearchive record is removed.
A crash after 1 or 2 is finished by running the job again (the reconciler
does this); a crash before 2 leaves the session where it was. Archiving into
a session that exists (overwrite=append or delete) is in workers/merging.py.
"""
from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

from flask import current_app
from rq import get_current_job
from sqlalchemy import delete, insert, select

from imaging import labels, storage
from models import (
    ARCHIVING,
    CONFLICT,
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
from workers import anonymization, merging, prearchive, resources, snapshots
from workers.context import app_job
from workers.faults import crash_point
from workers.removal import commit_removing


class ArchiveRefused(Exception):
    """The session cannot be archived as asked; the message says why."""


OVERWRITE_MODES = ("none", "append", "delete")
# File rows inserted per statement while a session is archived.
INSERT_CHUNK = 5000


def check_archivable(ps: PrearchiveSession, project: str | None, subject: str | None,
                     session: str | None, overwrite: str = "none"
                     ) -> tuple[Project, ImagingSession | None]:
    """Return the target project and the archived session it would go into
    (None for a new one), or raise ArchiveRefused with the reason."""
    if not project:
        raise ArchiveRefused("Choose a project before archiving.")
    proj = db.session.scalar(select(Project).filter_by(label=project))
    if proj is None:
        raise ArchiveRefused(f"Project {project!r} does not exist.")
    if not subject:
        raise ArchiveRefused("Give the session a subject before archiving.")
    if not session:
        raise ArchiveRefused("Give the session a label before archiving.")
    if overwrite not in OVERWRITE_MODES:
        raise ArchiveRefused(f"overwrite must be one of {', '.join(OVERWRITE_MODES)}.")
    try:
        labels.check_label(subject, "Subject label")
        labels.check_label(session, "Session label")
    except labels.LabelError as exc:
        raise ArchiveRefused(str(exc)) from None
    existing = db.session.scalar(select(ImagingSession).filter_by(
        project_id=proj.id, label=session))
    if existing is None:
        return proj, None
    if overwrite == "none":
        raise ArchiveRefused(
            f"Session {session!r} already exists in project {project!r}. Choose another "
            "label, or archive with overwrite=append to merge the scans into it, or "
            "overwrite=delete to replace it.")
    if existing.subject.label != subject:
        raise ArchiveRefused(
            f"Session {session!r} of project {project!r} belongs to subject "
            f"{existing.subject.label!r}, not {subject!r}.")
    return proj, existing


def _plan(ps: PrearchiveSession, record: dict, options: dict) -> dict:
    """Decide where the session goes and how; raise ArchiveRefused/ArchiveConflict."""
    target = {"project": options.get("project") or ps.project,
              "subject": options.get("subject") or ps.subject,
              "session": options.get("session") or ps.session}
    overwrite = options.get("overwrite") or "none"
    _proj, existing = check_archivable(ps, target["project"], target["subject"],
                                       target["session"], overwrite)
    # The project's script runs first: what is compared with the archive and
    # what reaches it are the files as they will be archived.
    _apply_project_script(ps, record, target)
    if existing is None:
        target["mode"] = "new"
    elif overwrite == "append":
        target["mode"] = "append"
        target["plan"] = merging.plan_append(existing, record).to_json()
    else:
        target["mode"] = "delete"
    return target


@app_job
def archive_session(prearchive_id: int, options: dict | None = None) -> str | None:
    """Job: archive one prearchive session; returns the archived session's path.

    options: overwrite (none, append, delete) and the target project, subject
    and session labels when they differ from the prearchive session's.
    """
    ps = db.session.get(PrearchiveSession, prearchive_id)
    if ps is None or ps.status not in (QUEUED_ARCHIVING, ARCHIVING):
        return None
    record = prearchive.load_record(ps)
    target = record.get("archiving_to")
    try:
        if target is None:
            ps.status = ARCHIVING
            db.session.commit()
            target = _plan(ps, record, options or {})
            record["archiving_to"] = target
            prearchive.save_record(record)
        ps.status = ARCHIVING
        db.session.commit()
        return _move_and_index(ps, record, target)
    except merging.ArchiveConflict as exc:
        _conflict(ps, record, exc.reasons)
        return None
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


def _conflict(ps: PrearchiveSession, record: dict, reasons: list[str]) -> None:
    """Leave the session in the prearchive as CONFLICT, with its reasons."""
    record["status"] = CONFLICT
    record["conflicts"] = reasons
    record["message"] = "Archiving into the existing session would clash: " + "; ".join(reasons)
    prearchive.log(record, record["message"])
    prearchive.save_record(record)
    ps.status = CONFLICT
    ps.message = record["message"]
    db.session.commit()


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
    if rejected and not record["scans"] and not record.get("resources"):
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
    mode = target.get("mode", "new")
    if mode == "append":
        merging.move_appended(src, dst, record, target["plan"])
        _index_appended(ps, record, target)
        storage.remove_tree(src)
    else:
        if mode == "delete" and src.exists():
            merging.set_aside(dst, ps.id)
        if src.exists():
            if dst.exists():
                raise ArchiveRefused(f"The archive folder of session {target['session']!r} "
                                     "already exists on disk.")
            storage.move_into(src, dst)
            storage.fsync_dir(dst.parent)
            crash_point("archive")
        elif not dst.exists():
            raise RuntimeError(f"Neither {src} nor {dst} exists.")
        if db.session.get(PrearchiveSession, ps.id) is not None:
            if mode == "delete":
                _delete_session_rows(target)
            _index_archived(ps, record, target, dst)
        merging.drop_aside(ps.id)
    prearchive.record_path(ps).unlink(missing_ok=True)
    storage.remove_empty_parents(src.parent, storage.prearchive_root(data_dir))
    return str(dst.relative_to(data_dir))


def _delete_session_rows(target: dict) -> None:
    """Delete the rows of the archived session being replaced (no commit)."""
    project = db.session.scalar(select(Project).filter_by(label=target["project"]))
    old = db.session.scalar(select(ImagingSession).filter_by(project_id=project.id,
                                                             label=target["session"]))
    if old is not None:
        _session_rows_deleted(old)
        db.session.flush()


def _session_rows_deleted(session: ImagingSession) -> None:
    resource_ids = select(Resource.id).where(Resource.session_id == session.id)
    db.session.execute(delete(File).where(File.resource_id.in_(resource_ids)))
    db.session.execute(delete(Resource).where(Resource.session_id == session.id))
    for model in (Scan, Assessor, Reconstruction):
        db.session.execute(delete(model).where(model.session_id == session.id))
    db.session.delete(session)


def _index_appended(ps: PrearchiveSession, record: dict, target: dict) -> None:
    """Add the merged scans and files to the archived session, in one transaction."""
    if db.session.get(PrearchiveSession, ps.id) is None:
        return  # indexed by an earlier run of the job
    plan = target["plan"]
    project = db.session.scalar(select(Project).filter_by(label=target["project"]))
    session = db.session.scalar(select(ImagingSession).filter_by(project_id=project.id,
                                                                 label=target["session"]))
    scans = {s.scan_id: s for s in session.scans}
    for s in record.get("scans", []):
        scan_id = plan["scan_ids"].get(s["id"])
        if scan_id is None:
            continue
        skip = set(plan["skip"].get(s["id"], []))
        files = [f for f in s.get("files", []) if f["name"] not in skip]
        scan = scans.get(scan_id)
        if scan is None:
            scan = Scan(session_id=session.id, scan_id=scan_id, series_uid=s.get("series_uid"),
                        series_description=s.get("series_description"),
                        modality=s.get("modality"), type=s.get("series_description"),
                        instance_count=0, size=0, params=_scan_params(s))
            db.session.add(scan)
            db.session.flush()
        scan.instance_count += len(files)
        scan.size += sum(f["size"] for f in files)
        if files:
            owner = resources.Owner(project, session.subject, session, scan)
            label = s.get("resource") or "DICOM"
            row = resources.get_or_create(owner, label, format=label)
            db.session.execute(insert(File), [_file_row(row.id, f, label) for f in files])
            resources.recount([row.id])
    note = "; ".join(plan["messages"]) or None
    prearchive.log(record, f"merged into archived session {target['session']}"
                           + (f": {note}" if note else ""))
    db.session.execute(delete(PrearchiveSession).where(PrearchiveSession.id == ps.id))
    db.session.commit()


def _scan_params(s: dict) -> dict:
    return {k: s.get(k) for k in ("manufacturer", "model", "repetition_time", "echo_time",
                                  "flip_angle") if s.get(k)}


def _file_row(resource_id: int, f: dict, label: str) -> dict:
    return {"resource_id": resource_id, "path": f["name"], "size": f["size"],
            "sha256": f["sha256"], "sop_instance_uid": f.get("sop_uid"),
            "sop_class_uid": f.get("sop_class_uid"),
            "transfer_syntax": f.get("transfer_syntax"),
            "instance_number": f.get("instance_number"),
            "dataset_sha256": f.get("dataset_sha256"), "format": f.get("format") or label,
            "header": f.get("header")}


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
    file_rows, counted = [], set()
    for s in record.get("scans", []):
        scan = Scan(session_id=session.id, scan_id=s["id"], series_uid=s.get("series_uid"),
                    series_description=s.get("series_description"),
                    modality=s.get("modality"), type=s.get("series_description"),
                    instance_count=len(s["files"]), size=sum(f["size"] for f in s["files"]),
                    params=_scan_params(s))
        db.session.add(scan)
        db.session.flush()
        owner = resources.Owner(project, subject, session, scan)
        _index_resources(owner, s.get("resources"))
        if not s["files"]:
            continue  # a scan that only holds resources (a NIfTI without its DICOM)
        label = s.get("resource") or "DICOM"  # ECAT scans keep their files in "ECAT"
        resource = Resource(project_id=project.id, subject_id=subject.id,
                            session_id=session.id, scan_id=scan.id, label=label,
                            format=label, content="RAW")
        db.session.add(resource)
        db.session.flush()
        file_rows.extend(_file_row(resource.id, f, label) for f in s["files"])
        file_rows.extend(_snapshot_rows(dst / "SCANS" / s["id"], resource))
        if len(file_rows) >= INSERT_CHUNK:  # a session of many files: rows in parts
            counted.update(row["resource_id"] for row in file_rows)
            db.session.execute(insert(File), file_rows)
            file_rows = []
    _index_resources(resources.Owner(project, subject, session), record.get("resources"))
    if file_rows:
        counted.update(row["resource_id"] for row in file_rows)
        db.session.execute(insert(File), file_rows)
    if counted:
        resources.recount(counted)
    db.session.execute(delete(PrearchiveSession).where(PrearchiveSession.id == ps.id))
    db.session.commit()


def _index_resources(owner, found: dict | None) -> None:
    """Create the rows of the resources a prearchive record lists for `owner`."""
    for label, resource in (found or {}).items():
        row = resources.get_or_create(owner, label, format=resource.get("format"))
        resources.insert_files(row.id, resource.get("files", []))


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
    _session_rows_deleted(session)
    commit_removing(folder)


def relabel_session(session: ImagingSession, label: str, subject_label: str) -> None:
    """Give an archived session a new label and/or subject: the folder is
    renamed and the rows follow in one transaction (the rename is undone if
    the transaction fails). Raises ArchiveRefused with the reason."""
    try:
        labels.check_label(label, "Session label")
        labels.check_label(subject_label, "Subject label")
    except labels.LabelError as exc:
        raise ArchiveRefused(str(exc)) from None
    project = session.project
    if label != session.label and db.session.scalar(select(ImagingSession.id).filter_by(
            project_id=project.id, label=label)):
        raise ArchiveRefused(f"Session {label!r} already exists in project {project.label!r}.")
    data_dir = current_app.config["DATA_DIR"]
    old = storage.archive_session_dir(data_dir, project.label, session.subject.label,
                                      session.label)
    new = storage.archive_session_dir(data_dir, project.label, subject_label, label)
    if new.exists() and new != old:
        raise ArchiveRefused(f"The folder of {subject_label}/{label} exists on disk already.")
    subject = db.session.scalar(select(Subject).filter_by(project_id=project.id,
                                                          label=subject_label))
    if subject is None:
        subject = Subject(project_id=project.id, label=subject_label)
        db.session.add(subject)
        db.session.flush()
    session.label, session.subject_id = label, subject.id
    db.session.execute(Resource.__table__.update().where(Resource.session_id == session.id)
                       .values(subject_id=subject.id))
    if old.exists() and new != old:
        storage.move_into(old, new)
    try:
        db.session.commit()
    except Exception:
        db.session.rollback()
        if new.exists() and new != old:
            storage.move_into(new, old)
        raise
    storage.remove_empty_parents(old.parent, Path(data_dir) / "archive" / project.label)
