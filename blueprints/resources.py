"""Any file as a resource: upload, list, download and delete the files of a named
resource (BEHAVIOUR, PHYSIO, REPORTS, NIFTI...) of a project, subject, session
or scan, as XNAT's "uploading non-DICOM data" does.

Every view is registered under the four owners' paths, so one view serves
/projects/P/resources, /projects/P/subjects/S/resources,
/projects/P/sessions/E/resources and /projects/P/sessions/E/scans/N/resources.
"""
from __future__ import annotations

from pathlib import Path

from flask import (
    Blueprint,
    abort,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    send_file,
    url_for,
)
from sqlalchemy import select

from blueprints import access, audit, streaming, wants_json
from imaging.extract import ExtractError, archive_kind, extract_members, list_members
from models import File, Resource, db
from workers import resources
from workers.resources import Owner, ResourceError

bp = Blueprint("resources", __name__)

OWNER_RULES = (
    "/projects/<label>",
    "/projects/<label>/subjects/<subject>",
    "/projects/<label>/sessions/<session>",
    "/projects/<label>/sessions/<session>/scans/<scan_id>",
)
_TEXT_LIMIT = 255


def route(suffix: str, methods=("GET",)):
    """Register the view under each owner's path, with one endpoint name."""
    def register(view):
        for rule in OWNER_RULES:
            bp.add_url_rule(rule + suffix, view_func=view, methods=list(methods))
        return view
    return register


def get_owner(label, subject=None, session=None, scan_id=None, need=access.READ) -> Owner:
    """Return the owner named by the URL, or abort with 404/403."""
    project = access.get_project(label, need)
    if session is not None:
        sess = access.get_session(project, session)
        scan = access.get_scan(sess, scan_id) if scan_id is not None else None
        return Owner(project, sess.subject, sess, scan)
    if subject is not None:
        return Owner(project, access.get_subject(project, subject))
    return Owner(project)


def owner_args(owner: Owner) -> dict:
    """Return the URL values that name `owner` (for url_for)."""
    args = {"label": owner.project.label}
    if owner.session is not None:
        args["session"] = owner.session.label
        if owner.scan is not None:
            args["scan_id"] = owner.scan.scan_id
    elif owner.subject is not None:
        args["subject"] = owner.subject.label
    return args


def get_resource(owner: Owner, label: str) -> Resource:
    resource = db.session.scalar(select(Resource).filter_by(label=label, **owner.filters()))
    if resource is None:
        abort(404, f"No resource {label!r} here.")
    return resource


def get_file(resource: Resource, path: str) -> File:
    file = db.session.scalar(select(File).filter_by(resource_id=resource.id, path=path))
    if file is None:
        abort(404, f"No file {path!r} in resource {resource.label!r}.")
    return file


def _text(form, name: str) -> str | None:
    return (form.get(name) or "").strip()[:_TEXT_LIMIT] or None


@route("/resources")
def index(**names):
    """List the resources and their files, with the upload form."""
    owner = get_owner(**names)
    return render_template("resources/index.html", owner=owner, args=owner_args(owner),
                           resources=resources.resources_of(owner))


@route("/resources", methods=("POST",))
def upload(**names):
    """Store uploaded files (or the contents of a zip or tar) in a named resource."""
    owner = get_owner(**names, need=access.EDIT)
    try:
        paths = _uploaded_paths(request.files.getlist("files"), bool(request.form.get("unpack")))
        resource = resources.get_or_create(
            owner, (request.form.get("resource") or "").strip(),
            format=_text(request.form, "format"), content=_text(request.form, "content"),
            tags=_text(request.form, "tags"))
        added = resources.add_files(resource, paths, content=_text(request.form, "content"),
                                    tags=_text(request.form, "tags"))
    except (ResourceError, ExtractError) as exc:
        db.session.rollback()
        return _refused(owner, str(exc))
    audit.record("upload", project=owner.project.label, target=resource.label,
                 files=len(added.files))
    db.session.commit()
    return _uploaded(owner, resource, added)


def _uploaded_paths(files, unpack: bool) -> dict[str, Path]:
    """Return {name in the resource: stored path} of the request's files.

    Raises ResourceError when there is no file; ExtractError for an archive
    that cannot be unpacked safely.
    """
    paths: dict[str, Path] = {}
    for file in files:
        if not file or not file.filename:
            continue
        stored = streaming.stored_path(file)
        name = resources.check_name(Path(file.filename.replace("\\", "/")).name)
        if unpack and _is_archive(stored):
            members = list_members(stored)
            folder = stored.with_name(stored.name + ".d")
            for member, path in extract_members(stored, members, folder):
                paths[resources.check_name(member.name)] = path
        elif name in paths:
            raise ResourceError(f"Two files are named {name!r}; upload them separately.")
        else:
            paths[name] = stored
    if not paths:
        raise ResourceError("Choose one or more files to upload.")
    return paths


def _is_archive(path: Path) -> bool:
    try:
        archive_kind(path)
    except ExtractError:
        return False
    return True


def _refused(owner: Owner, message: str):
    if wants_json():
        return jsonify(error=message), 400
    flash(message, "error")
    return render_template("resources/index.html", owner=owner, args=owner_args(owner),
                           resources=resources.resources_of(owner), values=request.form), 400


def _uploaded(owner: Owner, resource: Resource, added):
    if wants_json():
        return jsonify(resource=resource.label, files=[f.path for f in added.files],
                       problems=added.problems), 201
    flash(f"{len(added.files)} file(s) stored in {resource.label}.", "info")
    for problem in added.problems:
        flash(f"{problem['name']}: {problem['reason']}", "error")
    return redirect(url_for(".index", **owner_args(owner)), code=303)


@route("/resources/<resource>/files/<path:path>")
def download(resource, path, **names):
    """Send one file of a resource."""
    owner = get_owner(**names)
    row = get_file(get_resource(owner, resource), path)
    return send_file(resources.resource_dir(row.resource) / row.path, as_attachment=True,
                     download_name=Path(row.path).name)


@route("/resources/<resource>/details/<path:path>")
def details(resource, path, **names):
    """Show one file: size, checksum, format, tags and its header summary."""
    owner = get_owner(**names)
    row = get_file(get_resource(owner, resource), path)
    return render_template("resources/file.html", owner=owner, args=owner_args(owner),
                           file=row)


@route("/resources/<resource>/files/<path:path>/delete", methods=("POST",))
def delete_file(resource, path, **names):
    """Delete one file of a resource."""
    owner = get_owner(**names, need=access.EDIT)
    audit.record("delete", project=owner.project.label, target=f"{resource}/{path}",
                 what="resource file")
    resources.delete_file(get_file(get_resource(owner, resource), path))
    flash(f"{path} deleted.", "info")
    return redirect(url_for(".index", **owner_args(owner)), code=303)


@route("/resources/<resource>/delete", methods=("POST",))
def delete_resource(resource, **names):
    """Delete a resource with all its files."""
    owner = get_owner(**names, need=access.EDIT)
    audit.record("delete", project=owner.project.label, target=resource, what="resource")
    resources.delete_resource(get_resource(owner, resource))
    flash(f"Resource {resource} deleted.", "info")
    return redirect(url_for(".index", **owner_args(owner)), code=303)
