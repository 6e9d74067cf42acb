"""The archive's hierarchy as pages and scripts change it: projects, subjects,
sessions, scans, assessors and reconstructions, and XNAT's ids and data types
for them.

Creating a row never touches the disk: folders appear when files are stored.
Deleting renames the object's folder into the trash, deletes the rows in one
transaction, and only then removes the folder, so a crash leaves either the
object whole or gone. The caller audits and commits what is created.
"""
from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from flask import current_app
from sqlalchemy import delete, func, select

from imaging import storage
from imaging.labels import check_label, check_scan_id
from models import (
    Assessor,
    File,
    ImagingSession,
    Membership,
    PrearchiveSession,
    Project,
    Reconstruction,
    Resource,
    Scan,
    Subject,
    db,
)
from workers.archiving import delete_archived_session
from workers.removal import commit_removing

SITE = "SCANYARD"
_ID_LETTER = {"subject": "S", "session": "E", "assessor": "A", "reconstruction": "R"}
ACCESSIBILITY = ("private", "protected", "public")

# XNAT's data types by DICOM modality; anything else is "other DICOM".
_SESSION_TYPES = {"MR": "xnat:mrSessionData", "CT": "xnat:ctSessionData",
                  "PT": "xnat:petSessionData"}
_SCAN_TYPES = {"MR": "xnat:mrScanData", "CT": "xnat:ctScanData", "PT": "xnat:petScanData"}
OTHER_SESSION_TYPE = "xnat:otherDicomSessionData"
OTHER_SCAN_TYPE = "xnat:otherDicomScanData"
ASSESSOR_TYPE = "xnat:qcAssessmentData"
RECONSTRUCTION_TYPE = "xnat:reconstructedImageData"
_XSI_TYPE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*:[A-Za-z][A-Za-z0-9_]*")

SESSION_FIELDS = ("session_date", "modality", "scanner", "study_uid", "accession",
                  "study_description", "xsi_type")
SCAN_FIELDS = ("type", "series_description", "quality", "modality", "series_uid", "xsi_type")


class HierarchyError(ValueError):
    """A request that cannot be done as asked; the message is for the user."""


class Conflict(HierarchyError):
    """The request clashes with what is stored (answered 409)."""


def xnat_id(kind: str, row_id: int) -> str:
    """Return XNAT's accession-like id of a row: SCANYARD_E00012 for session 12."""
    return f"{SITE}_{_ID_LETTER[kind]}{row_id:05d}"


def parse_xnat_id(kind: str, text: str) -> int | None:
    """Return the row id in an id made by xnat_id, or None when it is not one."""
    match = re.fullmatch(rf"{SITE}_{_ID_LETTER[kind]}(\d{{1,18}})", text or "")
    return int(match.group(1)) if match else None


def modality_of(xsi_type: str | None) -> str | None:
    """Return the DICOM modality an XNAT data type stands for (MR, CT, PT) or None."""
    for table in (_SESSION_TYPES, _SCAN_TYPES):
        for modality, name in table.items():
            if name == xsi_type:
                return modality
    return None


def session_type(session: ImagingSession) -> str:
    return session.xsi_type or _SESSION_TYPES.get(session.modality or "", OTHER_SESSION_TYPE)


def scan_type(scan: Scan) -> str:
    return scan.xsi_type or _SCAN_TYPES.get(scan.modality or "", OTHER_SCAN_TYPE)


def check_xsi_type(value: str | None, what: str = "xsiType") -> str | None:
    """Return an XNAT data type name (prefix:name), None for none; raise HierarchyError."""
    if not value:
        return None
    if not _XSI_TYPE_RE.fullmatch(value) or len(value) > 64:
        raise HierarchyError(f"{what} {value[:80]!r} is not a data type such as "
                             "xnat:mrSessionData.")
    return value


def _label(value: str, what: str) -> str:
    try:
        return check_label(value, what)
    except ValueError as exc:
        raise HierarchyError(str(exc)) from None


def create_project(label: str, *, owner_id: int, name: str = "", description: str = "",
                   accessibility: str = "private") -> Project:
    """Add a project owned by its creator (flushed, not committed).

    Raises HierarchyError for a bad label and Conflict when the label is taken.
    """
    label = _label(label, "Project label")
    if db.session.scalar(select(Project.id).filter_by(label=label)):
        raise Conflict(f"A project {label!r} already exists.")
    if accessibility not in ACCESSIBILITY:
        accessibility = "private"
    project = Project(label=label, name=(name or "").strip()[:255] or label,
                      description=(description or "").strip(), accessibility=accessibility)
    db.session.add(project)
    db.session.flush()
    db.session.add(Membership(project_id=project.id, user_id=owner_id, role="owner"))
    db.session.flush()
    return project


def update_project(project: Project, *, name=None, description=None, accessibility=None):
    if name is not None:
        project.name = name.strip()[:255] or project.label
    if description is not None:
        project.description = description.strip()
    if accessibility is not None:
        if accessibility not in ACCESSIBILITY:
            raise HierarchyError(f"Accessibility must be one of {', '.join(ACCESSIBILITY)}.")
        project.accessibility = accessibility


def create_subject(project: Project, label: str) -> Subject:
    """Add a subject to a project (flushed); Conflict when the label is taken."""
    label = _label(label, "Subject label")
    if db.session.scalar(select(Subject.id).filter_by(project_id=project.id, label=label)):
        raise Conflict(f"Subject {label!r} already exists in {project.label}.")
    subject = Subject(project_id=project.id, label=label)
    db.session.add(subject)
    db.session.flush()
    return subject


def create_session(project: Project, subject: Subject, label: str, fields: dict
                   ) -> ImagingSession:
    """Add an (empty) imaging session; Conflict when the project has the label."""
    label = _label(label, "Session label")
    if db.session.scalar(select(ImagingSession.id).filter_by(project_id=project.id,
                                                             label=label)):
        raise Conflict(f"Session {label!r} already exists in project {project.label}.")
    session = ImagingSession(project_id=project.id, subject_id=subject.id, label=label)
    update_session(session, fields)
    db.session.add(session)
    db.session.flush()
    return session


def update_session(session: ImagingSession, fields: dict) -> None:
    """Set the given SESSION_FIELDS; an xsi_type also sets the modality it stands for."""
    for key, value in fields.items():
        if key not in SESSION_FIELDS:
            raise HierarchyError(f"Unknown session field {key!r}.")
        setattr(session, key, value)
    if fields.get("xsi_type") and "modality" not in fields:
        session.modality = modality_of(fields["xsi_type"]) or session.modality
    if "session_date" in fields:
        session.date_unknown = fields["session_date"] is None


def create_scan(session: ImagingSession, scan_id: str, fields: dict) -> Scan:
    try:
        scan_id = check_scan_id(scan_id)
    except ValueError as exc:
        raise HierarchyError(str(exc)) from None
    if db.session.scalar(select(Scan.id).filter_by(session_id=session.id, scan_id=scan_id)):
        raise Conflict(f"Scan {scan_id!r} already exists in session {session.label}.")
    scan = Scan(session_id=session.id, scan_id=scan_id, params={})
    update_scan(scan, fields)
    db.session.add(scan)
    db.session.flush()
    return scan


def update_scan(scan: Scan, fields: dict) -> None:
    for key, value in fields.items():
        if key not in SCAN_FIELDS:
            raise HierarchyError(f"Unknown scan field {key!r}.")
        setattr(scan, key, value)
    if fields.get("xsi_type") and "modality" not in fields:
        scan.modality = modality_of(fields["xsi_type"]) or scan.modality


def create_assessor(session: ImagingSession, label: str, xsi_type: str | None) -> Assessor:
    label = _label(label, "Assessor label")
    if db.session.scalar(select(Assessor.id).filter_by(session_id=session.id, label=label)):
        raise Conflict(f"Assessor {label!r} already exists in session {session.label}.")
    assessor = Assessor(session_id=session.id, label=label, type=xsi_type or ASSESSOR_TYPE)
    db.session.add(assessor)
    db.session.flush()
    return assessor


def create_reconstruction(session: ImagingSession, label: str, kind: str | None
                          ) -> Reconstruction:
    label = _label(label, "Reconstruction label")
    if db.session.scalar(select(Reconstruction.id).filter_by(session_id=session.id,
                                                             label=label)):
        raise Conflict(f"Reconstruction {label!r} already exists in session {session.label}.")
    recon = Reconstruction(session_id=session.id, label=label, type=kind or None)
    db.session.add(recon)
    db.session.flush()
    return recon


def parse_date(text: str | None) -> dt.date | None:
    """Return a date written as YYYY-MM-DD, YYYYMMDD or MM/DD/YYYY (XNAT's), or None
    for an empty value; raise HierarchyError otherwise."""
    text = (text or "").strip()
    if not text:
        return None
    for fmt in ("%Y-%m-%d", "%Y%m%d", "%m/%d/%Y"):
        try:
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            pass
    raise HierarchyError(f"Date {text[:40]!r} is not a date (YYYY-MM-DD).")


def _data_dir() -> Path:
    return Path(current_app.config["DATA_DIR"])


def session_dir(session: ImagingSession) -> Path:
    return storage.archive_session_dir(_data_dir(), session.project.label,
                                       session.subject.label, session.label)


def _delete_with_folder(folder: Path, statements: list, row=None) -> None:
    """Run the delete statements (and delete `row`) in one transaction with the
    folder moved to the trash; put the folder back when the commit fails."""
    for statement in statements:
        db.session.execute(statement)
    if row is not None:
        db.session.delete(row)
    commit_removing(folder)


def _resource_rows(**owner) -> list:
    """Return the statements deleting the resources (and their files) matching `owner`."""
    ids = select(Resource.id).filter_by(**owner)
    return [delete(File).where(File.resource_id.in_(ids)),
            delete(Resource).where(Resource.id.in_(ids))]


def delete_scan(scan: Scan) -> None:
    """Delete a scan, its resources and its folder; commits."""
    folder = session_dir(scan.session) / "SCANS" / scan.scan_id
    _delete_with_folder(folder, _resource_rows(scan_id=scan.id), scan)


def delete_assessor(assessor: Assessor) -> None:
    session = db.session.get(ImagingSession, assessor.session_id)
    folder = session_dir(session) / "ASSESSORS" / assessor.label
    _delete_with_folder(folder, _resource_rows(assessor_id=assessor.id), assessor)


def delete_reconstruction(recon: Reconstruction) -> None:
    session = db.session.get(ImagingSession, recon.session_id)
    folder = session_dir(session) / "RECONSTRUCTIONS" / recon.label
    _delete_with_folder(folder, _resource_rows(reconstruction_id=recon.id), recon)


def delete_subject(subject: Subject) -> None:
    """Delete a subject with its sessions, resources and folder; commits per session."""
    for session_id in list(db.session.scalars(select(ImagingSession.id)
                                              .filter_by(subject_id=subject.id))):
        delete_archived_session(session_id)
    project = db.session.get(Project, subject.project_id)
    folder = _data_dir() / "archive" / project.label / subject.label
    _delete_with_folder(folder, _resource_rows(subject_id=subject.id), subject)


def delete_project(project: Project) -> None:
    """Delete a project and everything archived in it; commits.

    Raises Conflict while its prearchive still holds sessions: those are
    reviewed (archived or deleted) first.
    """
    waiting = db.session.scalar(select(func.count()).select_from(PrearchiveSession)
                                .filter_by(project=project.label))
    if waiting:
        raise Conflict(f"Project {project.label} has {waiting} session(s) in the prearchive; "
                       "archive or delete them first.")
    for subject in list(db.session.scalars(select(Subject).filter_by(project_id=project.id))):
        delete_subject(subject)
    folder = _data_dir() / "archive" / project.label
    _delete_with_folder(folder, _resource_rows(project_id=project.id) + [
        delete(Membership).where(Membership.project_id == project.id)], project)
