"""The prearchive: uploads wait here until people review and archive them."""
from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from sqlalchemy import select

from blueprints import access, audit
from blueprints.upload import report_with_links
from imaging.labels import LabelError, check_label
from models import (
    TRANSIENT_STATUSES,
    ImagingSession,
    PrearchiveSession,
    Project,
    Subject,
    Upload,
    db,
)
from workers import prearchive, prearchive_tools
from workers.archiving import ArchiveRefused

bp = Blueprint("prearchive", __name__, url_prefix="/prearchive")


@bp.get("/")
def index():
    """List prearchive sessions, one table per project, unassigned last."""
    rows = db.session.scalars(select(PrearchiveSession).where(access.prearchive_filter())
                              .order_by(
        PrearchiveSession.project_key, PrearchiveSession.received.desc()))
    groups: dict[str, list] = {}
    for ps in rows:
        groups.setdefault(ps.project or "", []).append(ps)
    projects = sorted(k for k in groups if k)
    busy = any(ps.status in TRANSIENT_STATUSES or ps.status == "RECEIVING"
               for rows in groups.values() for ps in rows)
    return render_template("prearchive/index.html", groups=groups, projects=projects,
                           busy=busy)


@bp.get("/<int:prearchive_id>")
def detail(prearchive_id):
    """Show one prearchive session with its scans and its upload's report."""
    ps = access.get_prearchive_session(prearchive_id)
    return _detail_page(ps)


def _merge_candidates(ps: PrearchiveSession) -> list[PrearchiveSession]:
    """Other sessions of the project that this one could be merged into, same study first."""
    rows = db.session.scalars(select(PrearchiveSession).where(
        PrearchiveSession.project_key == ps.project_key, PrearchiveSession.id != ps.id)).all()
    return sorted(rows, key=lambda r: (r.study_uid != ps.study_uid, r.relpath))


def _detail_page(ps: PrearchiveSession, code: int = 200):
    record = prearchive.load_record(ps)
    upload = db.session.get(Upload, ps.upload_id) if ps.upload_id else None
    return render_template(
        "prearchive/detail.html", ps=ps, record=record,
        projects=access.visible_projects(access.EDIT),
        report=report_with_links(upload) if upload else None,
        archived_sessions=_archived_sessions(ps.project), merge_into=_merge_candidates(ps),
        busy=ps.status in TRANSIENT_STATUSES), code


def _archived_sessions(project_label: str | None) -> list[tuple[str, str]]:
    """Return (session, subject) labels of the project's archived sessions, to archive into."""
    if not project_label:
        return []
    return db.session.execute(
        select(ImagingSession.label, Subject.label).join(Subject)
        .join(Project, Project.id == ImagingSession.project_id)
        .where(Project.label == project_label).order_by(ImagingSession.label)).all()


@bp.post("/<int:prearchive_id>/labels")
def edit_labels(prearchive_id):
    """Change the subject and session labels; a new project queues a move."""
    ps = access.get_prearchive_session(prearchive_id, access.EDIT)
    try:
        project = (request.form.get("project") or "").strip() or None
        if project:
            project = access.get_project(project, access.EDIT).label
        elif not access.is_admin():
            raise LabelError("Only site administrators may leave a session unassigned.")
        subject = _label(request.form.get("subject"), "Subject label")
        session = _label(request.form.get("session"), "Session label")
        prearchive.check_idle(ps, "edited")
        old = (ps.project, ps.subject, ps.session)
        prearchive.update_labels(ps, subject=subject, session=session)
        if project != ps.project:
            prearchive_tools.request_move(ps, project)
    except (LabelError, prearchive.Busy, FileExistsError) as exc:
        return _refuse(ps, str(exc), 409 if not isinstance(exc, LabelError) else 400)
    if old[1:] != (subject, session):
        audit.record("label_edit", project=old[0], target=ps.relpath, old=list(old[1:]),
                     new=[subject, session])
    if old[0] != project:
        audit.record("move", project=project or old[0], target=ps.relpath, old=old[0],
                     new=project)
    db.session.commit()
    flash("Labels saved." if old[0] == project else "Labels saved; moving the session.",
          "info")
    return redirect(url_for(".detail", prearchive_id=ps.id), code=303)


@bp.post("/<int:prearchive_id>/merge")
def merge(prearchive_id):
    """Merge this session into another of the same project (two partial uploads)."""
    ps = access.get_prearchive_session(prearchive_id, access.EDIT)
    into = request.form.get("into", type=int)
    target = access.get_prearchive_session(into, access.EDIT) if into else None
    if target is None:
        return _refuse(ps, "Choose the session to merge into.", 400)
    what = {"project": ps.project, "target": ps.relpath, "merged_into": target.relpath}
    try:
        prearchive_tools.request_merge(ps, target)
    except prearchive.Busy as exc:
        return _refuse(ps, str(exc), 409)
    audit.record("move", **what)
    db.session.commit()
    flash(f"Merging into {what['merged_into']}.", "info")
    return redirect(url_for(".detail", prearchive_id=into), code=303)


@bp.post("/<int:prearchive_id>/rebuild")
def rebuild(prearchive_id):
    """Read the session's folder again and rewrite its index."""
    ps = access.get_prearchive_session(prearchive_id, access.EDIT)
    try:
        prearchive_tools.request_rebuild(ps)
    except prearchive.Busy as exc:
        return _refuse(ps, str(exc), 409)
    flash("Rebuilding the session.", "info")
    return redirect(url_for(".detail", prearchive_id=ps.id), code=303)


@bp.post("/rebuild")
def rebuild_all():
    """Recreate the prearchive's index from its folders (site administrators)."""
    access.require_admin()
    changes = prearchive_tools.rebuild_index()
    flash(f"Prearchive index rebuilt: {len(changes)} change(s).", "info")
    for line in changes[:20]:
        flash(line, "info")
    return redirect(url_for(".index"), code=303)


@bp.post("/<int:prearchive_id>/reset")
def reset(prearchive_id):
    """Put a session stuck in a transient status back to READY (no job may hold it)."""
    ps = access.get_prearchive_session(prearchive_id, access.EDIT)
    try:
        prearchive_tools.reset_session(ps)
    except prearchive.Busy as exc:
        return _refuse(ps, str(exc), 409)
    flash("Session reset.", "info")
    return redirect(url_for(".detail", prearchive_id=ps.id), code=303)


def _label(value: str | None, what: str) -> str | None:
    value = (value or "").strip()
    return check_label(value, what) if value else None


def _refuse(ps, message: str, code: int):
    db.session.rollback()
    flash(message, "error")
    return _detail_page(ps, code)


@bp.post("/<int:prearchive_id>/archive")
def archive(prearchive_id):
    """Queue the archiving of a prearchive session."""
    ps = access.get_prearchive_session(prearchive_id, access.EDIT)
    # Read before queueing: a fast worker may archive the row away meanwhile.
    what = {"project": ps.project, "target": ps.relpath, "subject": ps.subject,
            "session": ps.session}
    try:
        prearchive.request_archive(ps, archive_options(request.form, ps))
    except (ArchiveRefused, prearchive.Busy) as exc:
        return _refuse(ps, str(exc), 409)
    audit.record("archive", **what)
    db.session.commit()
    flash("Archiving started.", "info")
    return redirect(url_for(".detail", prearchive_id=prearchive_id), code=303)


def archive_options(form, ps: PrearchiveSession) -> dict:
    """Return the archive job's options from the archive form: overwrite, and an
    archived session to archive into (its subject comes with it)."""
    options = {"overwrite": form.get("overwrite") or "none"}
    into = (form.get("into") or "").strip()
    if into:
        subject = db.session.scalar(
            select(Subject.label).join(ImagingSession, ImagingSession.subject_id == Subject.id)
            .join(Project, Project.id == ImagingSession.project_id)
            .where(Project.label == ps.project, ImagingSession.label == into))
        options.update(session=into, subject=subject)
        if options["overwrite"] == "none":
            options["overwrite"] = "append"
    return options


@bp.get("/<int:prearchive_id>/delete")
def confirm_delete(prearchive_id):
    """Ask for confirmation before deleting a prearchive session."""
    ps = access.get_prearchive_session(prearchive_id, access.EDIT)
    return render_template("confirm_delete.html", what=f"prearchive session {ps.relpath}",
                           detail=f"{ps.file_count} files in {ps.scan_count} scans",
                           action=url_for(".delete", prearchive_id=ps.id),
                           back=url_for(".detail", prearchive_id=ps.id))


@bp.post("/<int:prearchive_id>/delete")
def delete(prearchive_id):
    """Queue the deletion of a prearchive session."""
    ps = access.get_prearchive_session(prearchive_id, access.EDIT)
    project, relpath = ps.project, ps.relpath  # before a fast worker deletes the row
    try:
        prearchive.request_delete(ps)
    except prearchive.Busy as exc:
        return _refuse(ps, str(exc), 409)
    audit.record("delete", project=project, target=relpath, what="prearchive session")
    db.session.commit()
    flash(f"Deleting {relpath}.", "info")
    return redirect(url_for(".index"), code=303)
