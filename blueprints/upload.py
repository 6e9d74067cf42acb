"""Upload → Images: a zip or tar of DICOM files, sent from a browser form.

The form may also name a scan and a resource label: the upload's NIfTI,
Analyze, NRRD (and other volume) files go into that resource of that scan.
"""
from __future__ import annotations

import datetime as dt

from flask import Blueprint, flash, jsonify, redirect, render_template, request, url_for
from sqlalchemy import select

from blueprints import access, audit, streaming, wants_json
from imaging import storage
from imaging.labels import LabelError, check_label, check_scan_id
from models import ImagingSession, PrearchiveSession, Project, Subject, Upload, db
from workers.importing import current_uri
from workers.ingest import start_upload, upload_report

bp = Blueprint("upload", __name__)


class FormError(ValueError):
    """A field of the upload form is wrong; the message says which and why."""


def parse_upload_form(form) -> dict:
    """Return the explicit values of an upload form, or raise FormError."""
    project_label = (form.get("project") or "").strip()
    if not project_label:
        raise FormError("Choose a project.")
    project = access.get_project(project_label, access.EDIT)
    params = {"project": project.label}
    try:
        for field, what, check in (("subject", "Subject label", check_label),
                                   ("session", "Session label", check_label),
                                   ("scan", "Scan id", check_scan_id),
                                   ("resource", "Resource label", check_label)):
            value = (form.get(field) or "").strip()
            params[field] = check(value, what) if value else None
    except LabelError as exc:
        raise FormError(str(exc)) from None
    if form.get("overwrite"):
        params["overwrite"] = "true"
    date_text = (form.get("session_date") or "").strip()
    if form.get("date_unknown"):
        params["session_date"] = None
        params["date_unknown"] = True
    elif date_text:
        try:
            params["session_date"] = dt.date.fromisoformat(date_text).isoformat()
        except ValueError:
            raise FormError(f"Session date {date_text!r} is not a date (YYYY-MM-DD).") from None
    else:
        raise FormError('Give the session date, or tick "date unknown".')
    return params


@bp.get("/upload")
def form():
    """Show the upload form."""
    projects = access.visible_projects(access.EDIT)
    subjects = {p.label: list(db.session.scalars(
        select(Subject.label).filter_by(project_id=p.id).order_by(Subject.label)))
        for p in projects}
    return render_template("upload/form.html", projects=projects, subjects=subjects,
                           selected=request.args.get("project"))


@bp.post("/upload")
def create():
    """Take an uploaded archive and queue its extraction."""
    try:
        params = parse_upload_form(request.form)
        file = request.files.get("file")
        if file is None or not file.filename:
            raise FormError("Choose a file to upload (.zip, .tar, .tar.gz or .tgz).")
        path = streaming.stored_path(file)
        if path.stat().st_size == 0:
            raise FormError(f"The file {file.filename!r} is empty.")
    except FormError as exc:
        return _form_error(str(exc))
    streaming.claim_upload()
    upload = start_upload(path, file.filename, params, user_id=access.user().id)
    audit.record("upload", project=params["project"], target=upload.id,
                 file=file.filename, size=upload.size)
    db.session.commit()
    if wants_json():
        return jsonify(id=upload.id, url=url_for(".status", upload_id=upload.id),
                       api=url_for("api.upload_status", upload_id=upload.id)), 202
    return redirect(url_for(".status", upload_id=upload.id), code=303)


def _form_error(message: str):
    if wants_json():
        return jsonify(error=message), 400
    flash(message, "error")
    projects = access.visible_projects(access.EDIT)
    return render_template("upload/form.html", projects=projects, subjects={},
                           selected=request.form.get("project"), values=request.form), 400


@bp.get("/uploads/<upload_id>")
def status(upload_id):
    """Show an upload's progress and, when done, its report."""
    upload = access.get_upload(upload_id)
    return render_template("upload/status.html", upload=upload,
                           report=report_with_links(upload))


def report_with_links(upload: Upload) -> dict:
    """Return the upload's report with a link to where each of its sessions is now
    (a page, and its XNAT-style URI)."""
    report = upload_report(upload)
    for entry in report["sessions"]:
        entry["url"] = session_url(entry)
        entry["uri"] = current_uri(entry)
    return report


def session_url(entry: dict) -> str | None:
    """Return the page of a session an upload made: in the prearchive, or archived."""
    ps = db.session.scalar(select(PrearchiveSession).filter_by(
        project_key=storage.project_key(entry["project"]), timestamp=entry["timestamp"],
        folder=entry["folder"]))
    if ps is not None:
        return url_for("prearchive.detail", prearchive_id=ps.id)
    if entry.get("study_uid"):
        archived = db.session.execute(
            select(Project.label, ImagingSession.label).join(Project)
            .where(ImagingSession.study_uid == entry["study_uid"])).first()
        if archived:
            return url_for("archive.session", label=archived[0], session=archived[1])
    return None


@bp.get("/uploads")
def index():
    """List recent uploads, newest first."""
    uploads = db.paginate(select(Upload).where(access.upload_filter())
                          .order_by(Upload.created.desc()), per_page=50)
    return render_template("upload/index.html", uploads=uploads)
