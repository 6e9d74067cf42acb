"""The archive: projects, subjects, sessions and scans, browsed and downloaded."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from sqlalchemy import func, or_, select
from sqlalchemy.orm import contains_eager, joinedload

from blueprints import access, audit
from blueprints.zipstream import zip_response
from imaging import storage
from models import File, ImagingSession, Project, Resource, Scan, Subject, db
from workers import archiving, hierarchy
from workers.archiving import delete_archived_session

bp = Blueprint("archive", __name__)


def project_counts(project_ids: list[int]) -> dict[int, dict]:
    """Return subjects, sessions, scans and bytes per project id.

    The bytes come from the resources' totals: a sum over every File row
    took 300 ms a page at a million files.
    """
    counts = {pid: {"subjects": 0, "sessions": 0, "scans": 0, "bytes": 0} for pid in project_ids}
    in_projects = ImagingSession.project_id.in_(project_ids)
    queries = {
        "subjects": select(Subject.project_id, func.count())
        .where(Subject.project_id.in_(project_ids)).group_by(Subject.project_id),
        "sessions": select(ImagingSession.project_id, func.count())
        .where(in_projects).group_by(ImagingSession.project_id),
        "scans": select(ImagingSession.project_id, func.count(Scan.id))
        .join(Scan, Scan.session_id == ImagingSession.id).where(in_projects)
        .group_by(ImagingSession.project_id),
        "bytes": select(Resource.project_id, func.sum(Resource.size))
        .where(Resource.project_id.in_(project_ids)).group_by(Resource.project_id),
    }
    for key, query in queries.items():
        for pid, n in db.session.execute(query) if project_ids else ():
            counts[pid][key] = int(n or 0)
    return counts


@bp.get("/")
def index():
    """List the projects with their counts."""
    projects = access.visible_projects(access.SEE)
    readable = {p.id for p in access.visible_projects(access.READ)}
    return render_template("archive/index.html", projects=projects, readable=readable,
                           counts=project_counts(sorted(readable)))


@bp.route("/projects/new", methods=["GET", "POST"])
def new_project():
    """Create a project."""
    if request.method == "GET":
        return render_template("archive/project_form.html", values={})
    form = request.form
    try:
        project = hierarchy.create_project(
            form.get("label", ""), owner_id=access.user().id, name=form.get("name", ""),
            description=form.get("description", ""),
            accessibility=form.get("accessibility", "private"))
    except hierarchy.HierarchyError as exc:
        code = 409 if isinstance(exc, hierarchy.Conflict) else 400
        return _form_error("archive/project_form.html", str(exc), code)
    label = project.label
    audit.record("project_change", project=label, target=label, action="created")
    db.session.commit()
    flash(f"Project {label} created.", "info")
    return redirect(url_for(".project", label=label), code=303)


def _form_error(template: str, message: str, code: int, **context):
    flash(message, "error")
    return render_template(template, values=request.form, **context), code


@bp.get("/projects/<label>")
def project(label):
    """Show a project: its subjects and its sessions."""
    proj = access.get_project(label, access.SEE)
    if not access.can(proj, access.READ):
        return render_template("archive/project_closed.html", project=proj)
    return _project_page(proj)


def _project_page(proj: Project, code: int = 200):
    subjects = db.paginate(
        select(Subject).filter_by(project_id=proj.id).order_by(Subject.label),
        per_page=current_app.config["PAGE_SIZE"])
    session_counts = dict(db.session.execute(
        select(ImagingSession.subject_id, func.count()).filter_by(project_id=proj.id)
        .group_by(ImagingSession.subject_id)).all())
    return render_template("archive/project.html", project=proj, subjects=subjects,
                           session_counts=session_counts,
                           counts=project_counts([proj.id])[proj.id]), code


@bp.post("/projects/<label>/subjects")
def new_subject(label):
    """Create a subject in a project."""
    proj = access.get_project(label, access.EDIT)
    try:
        subject = hierarchy.create_subject(proj, request.form.get("label", "")).label
    except hierarchy.HierarchyError as exc:
        flash(str(exc), "error")
        return _project_page(proj, 409 if isinstance(exc, hierarchy.Conflict) else 400)
    db.session.commit()
    flash(f"Subject {subject} created.", "info")
    return redirect(url_for(".subject", label=proj.label, subject=subject), code=303)


@bp.get("/projects/<label>/subjects/<subject>")
def subject(label, subject):
    """Show a subject and its sessions."""
    proj = access.get_project(label)
    subj = access.get_subject(proj, subject)
    sessions = db.session.scalars(select(ImagingSession).filter_by(subject_id=subj.id)
                                  .order_by(ImagingSession.session_date, ImagingSession.label))
    scan_counts = dict(db.session.execute(
        select(Scan.session_id, func.count()).join(ImagingSession)
        .where(ImagingSession.subject_id == subj.id).group_by(Scan.session_id)).all())
    return render_template("archive/subject.html", project=proj, subject=subj,
                           sessions=list(sessions), scan_counts=scan_counts)


@bp.get("/projects/<label>/sessions/<session>")
def session(label, session):
    """Show an archived session and its scans."""
    proj = access.get_project(label)
    sess = access.get_session(proj, session)
    return render_template("archive/session.html", project=proj, session=sess,
                           scans=sess.scans)


@bp.get("/projects/<label>/sessions/<session>/scans/<scan_id>")
def scan(label, session, scan_id):
    """Show a scan and its files, a page at a time."""
    proj = access.get_project(label)
    sess = access.get_session(proj, session)
    sc = access.get_scan(sess, scan_id)
    files = db.paginate(select(File).join(Resource).filter(Resource.scan_id == sc.id)
                        .options(contains_eager(File.resource))
                        .order_by(File.instance_number, File.path),
                        per_page=current_app.config["PAGE_SIZE"])
    return render_template("archive/scan.html", project=proj, session=sess, scan=sc,
                           files=files)


def _session_dir(sess: ImagingSession) -> Path:
    return storage.archive_session_dir(current_app.config["DATA_DIR"], sess.project.label,
                                       sess.subject.label, sess.label)


def _scan_entries(sess: ImagingSession, scans: list[Scan]):
    """Yield (name in zip, path) for the files of the scans, from the index."""
    base = _session_dir(sess)
    for sc in scans:
        rows = db.session.execute(
            select(Resource.label, File.path).join(File, File.resource_id == Resource.id)
            .filter(Resource.scan_id == sc.id).order_by(Resource.label, File.path)).all()
        for resource, path in rows:
            rel = f"SCANS/{sc.scan_id}/{resource}/{path}"
            yield f"{sess.label}/{rel}", base / rel


@bp.get("/projects/<label>/sessions/<session>/download")
def download_session(label, session):
    """Download a session's scans as a zip, streamed."""
    proj = access.get_project(label)
    sess = access.get_session(proj, session)
    return zip_response(list(_scan_entries(sess, sess.scans)), f"{sess.label}.zip")


@bp.get("/projects/<label>/sessions/<session>/scans/<scan_id>/download")
def download_scan(label, session, scan_id):
    """Download one scan as a zip, streamed."""
    proj = access.get_project(label)
    sess = access.get_session(proj, session)
    sc = access.get_scan(sess, scan_id)
    return zip_response(list(_scan_entries(sess, [sc])), f"{sess.label}_scan{sc.scan_id}.zip")


@bp.post("/projects/<label>/sessions/<session>/relabel")
def relabel_session(label, session):
    """Give an archived session another label or move it to another subject."""
    proj = access.get_project(label, access.EDIT)
    sess = access.get_session(proj, session)
    old = (sess.subject.label, sess.label)
    new_label = (request.form.get("label") or sess.label).strip()
    new_subject = (request.form.get("subject") or sess.subject.label).strip()
    try:
        archiving.relabel_session(sess, new_label, new_subject)
    except archiving.ArchiveRefused as exc:
        db.session.rollback()
        flash(str(exc), "error")
        return render_template("archive/session.html", project=proj, session=sess,
                               scans=sess.scans), 409 if "exists" in str(exc) else 400
    audit.record("move" if old[0] != new_subject else "label_edit", project=proj.label,
                 target=f"{old[0]}/{old[1]}", new=f"{new_subject}/{new_label}")
    db.session.commit()
    flash(f"Session is now {new_subject}/{new_label}.", "info")
    return redirect(url_for(".session", label=proj.label, session=new_label), code=303)


@bp.get("/projects/<label>/sessions/<session>/delete")
def confirm_delete_session(label, session):
    """Ask for confirmation before deleting an archived session."""
    proj = access.get_project(label, access.OWN)
    sess = access.get_session(proj, session)
    files = sum(s.instance_count for s in sess.scans)
    return render_template(
        "confirm_delete.html", what=f"archived session {proj.label}/{sess.label}",
        detail=f"{files} files in {len(sess.scans)} scans; this cannot be undone",
        action=url_for(".delete_session", label=proj.label, session=sess.label),
        back=url_for(".session", label=proj.label, session=sess.label))


@bp.post("/projects/<label>/sessions/<session>/delete")
def delete_session(label, session):
    """Delete an archived session: rows and files together."""
    proj = access.get_project(label, access.OWN)
    sess = access.get_session(proj, session)
    subject = sess.subject.label
    audit.record("delete", project=proj.label, target=f"{subject}/{sess.label}",
                 what="archived session")
    delete_archived_session(sess.id)
    flash(f"Session {session} deleted.", "info")
    return redirect(url_for(".subject", label=proj.label, subject=subject), code=303)


@bp.get("/search")
def search():
    """Find sessions by subject, label, StudyInstanceUID, accession number or date."""
    q = (request.args.get("q") or "").strip()
    results = None
    if q:
        visible = [p.id for p in access.visible_projects(access.READ)]
        like = f"%{q}%"
        conditions = [ImagingSession.label.ilike(like), Subject.label.ilike(like),
                      ImagingSession.study_uid == q, ImagingSession.accession == q]
        date = _as_date(q)
        if date:
            conditions.append(ImagingSession.session_date == date)
        query = (select(ImagingSession).join(Subject)
                 .options(contains_eager(ImagingSession.subject),
                          joinedload(ImagingSession.project))
                 .where(ImagingSession.project_id.in_(visible), or_(*conditions))
                 .order_by(ImagingSession.session_date.desc(), ImagingSession.label))
        results = db.paginate(query, per_page=current_app.config["PAGE_SIZE"])
    return render_template("archive/search.html", q=q, results=results)


def _as_date(text: str) -> dt.date | None:
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            pass
    return None
