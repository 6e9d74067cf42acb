"""The one place that decides who may see and do what.

Every view and endpoint that touches a project's data looks it up through
these helpers, so that a rule changes in one place:

- site admins see and do everything, including the unassigned prearchive;
- owners do everything in their project, members create, upload, edit,
  archive and delete prearchive entries, collaborators read and download;
- a public project may be read by every logged-in user; a protected project
  shows its title and description to them, not its data; a private project
  is invisible to all but its users.

A project the user may not see answers 404, as if it did not exist; one they
may see but not use as asked answers 403.
"""
from __future__ import annotations

import re

from flask import abort
from flask_login import current_user
from sqlalchemy import or_, select

from imaging.labels import LABEL_RE, SCAN_ID_RE, shown
from models import (
    ImagingSession,
    Membership,
    PrearchiveSession,
    Project,
    Scan,
    Subject,
    Upload,
    User,
    db,
)

SEE, READ, EDIT, OWN = "see", "read", "edit", "own"
UPLOAD_ID_RE = re.compile(r"[0-9a-f]{32}")
ROLES = ("owner", "member", "collaborator")
_ROLE_CAN = {
    "owner": {SEE, READ, EDIT, OWN},
    "member": {SEE, READ, EDIT},
    "collaborator": {SEE, READ},
}
_ACCESSIBILITY_CAN = {"public": {SEE, READ}, "protected": {SEE}, "private": set()}


def user() -> User | None:
    """Return the logged-in user, or None."""
    return current_user if current_user.is_authenticated else None


def is_admin() -> bool:
    u = user()
    return bool(u and u.is_admin)


def role_in(project: Project) -> str | None:
    """Return the current user's role in a project ("admin" for site admins)."""
    u = user()
    if u is None:
        return None
    if u.is_admin:
        return "admin"
    return db.session.scalar(select(Membership.role).filter_by(project_id=project.id,
                                                              user_id=u.id))


def can(project: Project, need: str = READ) -> bool:
    """True when the current user may do `need` in the project."""
    u = user()
    if u is None:
        return False
    if u.is_admin:
        return True
    role = role_in(project)
    if role and need in _ROLE_CAN.get(role, set()):
        return True
    return need in _ACCESSIBILITY_CAN.get(project.accessibility, set())


def _check(project: Project, need: str) -> None:
    if can(project, need):
        return
    if can(project, SEE):
        abort(403, f"You may not do that in project {project.label!r}.")
    abort(404, f"No project {project.label!r}.")


def visible_projects(need: str = SEE) -> list[Project]:
    """Return the projects on which the current user may do `need`, by label."""
    u = user()
    if u is None:
        return []
    query = select(Project).order_by(Project.label)
    if not u.is_admin:
        roles = [r for r, rights in _ROLE_CAN.items() if need in rights]
        open_to_all = [a for a, rights in _ACCESSIBILITY_CAN.items() if need in rights]
        member_of = select(Membership.project_id).where(Membership.user_id == u.id,
                                                        Membership.role.in_(roles))
        query = query.where(or_(Project.id.in_(member_of),
                                Project.accessibility.in_(open_to_all)))
    return list(db.session.scalars(query))


def visible_project_labels(need: str = SEE) -> list[str]:
    return [p.label for p in visible_projects(need)]


def get_project(label: str, need: str = READ) -> Project:
    """Return the project or abort with 404 (unknown or not visible) / 403."""
    project = _by_label(select(Project), label, LABEL_RE)
    if project is None:
        abort(404, f"No project {shown(label)}.")
    _check(project, need)
    return project


def _by_label(query, label: str, pattern):
    """Return the row of that label; a label that could not exist finds nothing
    (and never reaches the database, which may refuse its characters)."""
    if not pattern.fullmatch(label or ""):
        return None
    return db.session.scalar(query.filter_by(label=label))


def get_subject(project: Project, label: str) -> Subject:
    subject = _by_label(select(Subject).filter_by(project_id=project.id), label, LABEL_RE)
    if subject is None:
        abort(404, f"No subject {shown(label)} in project {project.label!r}.")
    return subject


def get_session(project: Project, label: str) -> ImagingSession:
    session = _by_label(select(ImagingSession).filter_by(project_id=project.id), label,
                        LABEL_RE)
    if session is None:
        abort(404, f"No session {shown(label)} in project {project.label!r}.")
    return session


def get_scan(session: ImagingSession, scan_id: str) -> Scan:
    scan = None
    if SCAN_ID_RE.fullmatch(scan_id):
        scan = db.session.scalar(select(Scan).filter_by(session_id=session.id,
                                                        scan_id=scan_id))
    if scan is None:
        abort(404, f"No scan {shown(scan_id)} in session {session.label!r}.")
    return scan


def can_use_prearchive(project_label: str | None) -> bool:
    """Prearchive sessions are for the people who archive: members, owners and
    admins; the unassigned ones for admins only."""
    if project_label is None:
        return is_admin()
    project = db.session.scalar(select(Project).filter_by(label=project_label))
    return project is not None and can(project, EDIT)


def get_prearchive_session(prearchive_id: int, need: str = READ) -> PrearchiveSession:
    """Return the prearchive session or abort with 404."""
    ps = db.session.get(PrearchiveSession, prearchive_id)
    if ps is None or not can_use_prearchive(ps.project):
        abort(404, "No such prearchive session.")
    return ps


def prearchive_filter():
    """Return a SQL condition selecting the prearchive rows the user may see."""
    if is_admin():
        return PrearchiveSession.id.isnot(None)
    return PrearchiveSession.project.in_(visible_project_labels(EDIT))


def get_upload(upload_id: str) -> Upload:
    """Return an upload its owner, an admin, or a member of its project may see."""
    upload = db.session.get(Upload, upload_id) if UPLOAD_ID_RE.fullmatch(upload_id) else None
    u = user()
    allowed = upload is not None and u is not None and (
        u.is_admin or upload.user_id == u.id or can_use_prearchive(upload.project)
        and upload.project is not None)
    if not allowed:
        abort(404, "No such upload.")
    return upload


def upload_filter():
    """Return a SQL condition selecting the uploads the user may see."""
    u = user()
    if u.is_admin:
        return Upload.id.isnot(None)
    return or_(Upload.user_id == u.id, Upload.project.in_(visible_project_labels(EDIT)))


def require_admin() -> None:
    """Abort unless the current user is a site administrator."""
    if not is_admin():
        abort(403, "Only site administrators may do that.")


# XNAT-style lookups: objects named by label or by XNAT's accession-like id.

def find_project(label: str, need: str = READ) -> Project | None:
    """Return the project, None when it does not exist, or abort 404/403 when the
    user may not do `need` in it."""
    project = _by_label(select(Project), label, LABEL_RE)
    if project is not None:
        _check(project, need)
    return project


def _by_label_or_id(model, kind: str, ref: str, **scope):
    from workers.hierarchy import parse_xnat_id

    row = _by_label(select(model).filter_by(**scope), ref, LABEL_RE)
    row_id = parse_xnat_id(kind, ref)
    if row is None and row_id is not None:
        row = db.session.scalar(select(model).filter_by(id=row_id, **scope))
    return row


def find_subject(project: Project, ref: str) -> Subject | None:
    """Return the project's subject named by label or id, or None."""
    return _by_label_or_id(Subject, "subject", ref, project_id=project.id)


def find_session(project: Project, ref: str, subject: Subject | None = None
                 ) -> ImagingSession | None:
    """Return the project's (and subject's) session named by label or id, or None."""
    scope = {"project_id": project.id}
    if subject is not None:
        scope["subject_id"] = subject.id
    return _by_label_or_id(ImagingSession, "session", ref, **scope)


def find_in_session(model, kind: str, session: ImagingSession, ref: str):
    """Return the session's assessor or reconstruction named by label or id, or None."""
    return _by_label_or_id(model, kind, ref, session_id=session.id)


def find_scans(session: ImagingSession, ref: str) -> list[Scan] | None:
    """Return the scans named by one id, ``1,2,3`` or ``ALL``; None when one is missing."""
    query = select(Scan).filter_by(session_id=session.id).order_by(Scan.id)
    if ref == "ALL":
        return list(db.session.scalars(query))
    wanted = set(ref.split(","))
    if not all(SCAN_ID_RE.fullmatch(w) for w in wanted):
        return None
    scans = list(db.session.scalars(query.where(Scan.scan_id.in_(wanted))))
    return scans if len(scans) == len(wanted) else None


def subject_by_id(ref: str, need: str = READ) -> Subject:
    """Return the subject with XNAT id `ref` (any project) or abort 404/403."""
    from workers.hierarchy import parse_xnat_id

    row_id = parse_xnat_id("subject", ref)
    subject = db.session.get(Subject, row_id) if row_id is not None else None
    if subject is None or not can(subject.project, SEE):
        abort(404, f"No subject {shown(ref)}.")
    _check(subject.project, need)
    return subject


def session_by_id(ref: str, need: str = READ) -> ImagingSession:
    """Return the session with XNAT id `ref` (any project) or abort 404/403."""
    from workers.hierarchy import parse_xnat_id

    row_id = parse_xnat_id("session", ref)
    session = db.session.get(ImagingSession, row_id) if row_id is not None else None
    if session is None or not can(session.project, SEE):
        abort(404, f"No experiment {shown(ref)}.")
    _check(session.project, need)
    return session


def prearchive_session_at(project_key: str, timestamp: str, folder: str,
                          need: str = READ) -> PrearchiveSession:
    """Return the prearchive session at project/timestamp/folder or abort 404."""
    ps = None
    if all(LABEL_RE.fullmatch(part) for part in (project_key, timestamp, folder)):
        ps = db.session.scalar(select(PrearchiveSession).filter_by(
            project_key=project_key, timestamp=timestamp, folder=folder))
    if ps is None:
        abort(404, f"No prearchive session {shown(f'{project_key}/{timestamp}/{folder}')}.")
    return get_prearchive_session(ps.id, need)
