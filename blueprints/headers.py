"""DICOM headers and scan snapshots of prearchive and archive files.

Header pages show a file's header as a table (every value escaped by the
template); the same header is served in the DICOM JSON model at
``.../dicom.json``. Snapshots are served as PNG, also at XNAT's
``/data/.../scans/{id}/snapshot`` and ``.../thumbnail`` paths.
"""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, abort, current_app, jsonify, render_template, send_file, url_for
from sqlalchemy import select

from blueprints import access
from imaging import headers, storage
from imaging.anonymize import ScriptError
from models import File, Resource, Scan, db
from workers import anonymization, prearchive, snapshots

bp = Blueprint("headers", __name__)


# --- prearchive -----------------------------------------------------------------

def _prearchive_scan(prearchive_id: int, scan_id: str):
    """Return (session, record's scan, its folder) or abort with 404."""
    ps = access.get_prearchive_session(prearchive_id)
    record = prearchive.load_record(ps)
    scan = next((s for s in record.get("scans", []) if s["id"] == scan_id), None)
    if scan is None:
        abort(404, f"No scan {scan_id!r} in this prearchive session.")
    return ps, scan, prearchive.session_dir(ps) / "SCANS" / scan_id


def _prearchive_file(prearchive_id: int, scan_id: str, name: str | None):
    ps, scan, folder = _prearchive_scan(prearchive_id, scan_id)
    names = [f["name"] for f in scan.get("files", [])]
    if not names:
        abort(404, f"Scan {scan_id!r} has no files.")
    name = name or names[len(names) // 2]
    if name not in names:  # only names the record lists: no path from the URL reaches disk
        abort(404, f"No file {name!r} in scan {scan_id!r}.")
    return ps, names, name, folder / "DICOM" / name


@bp.get("/prearchive/<int:prearchive_id>/scans/<scan_id>/header")
@bp.get("/prearchive/<int:prearchive_id>/scans/<scan_id>/files/<name>/header")
def prearchive_header(prearchive_id, scan_id, name=None):
    """Show the header of a prearchive file (the scan's middle file by default)."""
    ps, names, name, path = _prearchive_file(prearchive_id, scan_id, name)
    links = {n: url_for(".prearchive_header", prearchive_id=ps.id, scan_id=scan_id, name=n)
             for n in names}
    return render_template(
        "headers/header.html", rows=headers.dump(_read(path)), name=name, links=links,
        back=url_for("prearchive.detail", prearchive_id=ps.id), where=ps.relpath,
        scan_id=scan_id, json_url=url_for(".prearchive_json", prearchive_id=ps.id,
                                          scan_id=scan_id, name=name))


@bp.get("/prearchive/<int:prearchive_id>/scans/<scan_id>/preview")
@bp.get("/prearchive/<int:prearchive_id>/scans/<scan_id>/files/<name>/preview")
def prearchive_preview(prearchive_id, scan_id, name=None):
    """Show a prearchive file's header before and after its project's script."""
    ps, names, name, path = _prearchive_file(prearchive_id, scan_id, name)
    script, rows, rejected = _project_script(ps), [], None
    if script is not None:
        labels = {"project": ps.project, "subject": ps.subject, "session": ps.session,
                  "scan": scan_id}
        rows, rejected = anonymization.preview(path, script, labels)
    links = {n: url_for(".prearchive_preview", prearchive_id=ps.id, scan_id=scan_id, name=n)
             for n in names}
    return render_template("headers/preview.html", ps=ps, rows=rows, rejected=rejected,
                           has_script=script is not None, name=name, links=links,
                           scan_id=scan_id)


def _project_script(ps):
    if not ps.project:
        return None
    project = access.get_project(ps.project)
    try:
        return anonymization.active_script(anonymization.project_scope(project))
    except ScriptError as exc:  # saved before a change of the language: say so
        abort(409, f"The project's anonymization script no longer reads: {exc}")


@bp.get("/api/prearchive/<int:prearchive_id>/scans/<scan_id>/files/<name>/dicom.json")
def prearchive_json(prearchive_id, scan_id, name):
    """Return a prearchive file's header in the DICOM JSON model."""
    _ps, _names, _name, path = _prearchive_file(prearchive_id, scan_id, name)
    return jsonify(headers.to_dicom_json(_read(path)))


@bp.get("/prearchive/<int:prearchive_id>/scans/<scan_id>/<any(snapshot, thumbnail):kind>.png")
def prearchive_snapshot(prearchive_id, scan_id, kind):
    """Return a prearchive scan's snapshot or thumbnail."""
    _ps, _scan, folder = _prearchive_scan(prearchive_id, scan_id)
    return _png(snapshots.snapshot_path(folder, f"{kind}.png"))


# --- archive --------------------------------------------------------------------

def _archive_scan(label: str, session: str, scan_id: str):
    """Return (project, session, scan, its folder) or abort with 404."""
    proj = access.get_project(label)
    sess = access.get_session(proj, session)
    sc = access.get_scan(sess, scan_id)
    folder = storage.archive_session_dir(current_app.config["DATA_DIR"], proj.label,
                                         sess.subject.label, sess.label) / "SCANS" / sc.scan_id
    return proj, sess, sc, folder


def _archive_file(label, session, scan_id, name):
    proj, sess, sc, folder = _archive_scan(label, session, scan_id)
    rows = db.session.execute(
        select(File.path).join(Resource).filter(Resource.scan_id == sc.id,
                                                Resource.label == "DICOM")
        .order_by(File.instance_number, File.path)).scalars().all()
    if name not in rows:  # only indexed names: no path from the URL reaches disk
        abort(404, f"No DICOM file {name!r} in scan {scan_id!r}.")
    return proj, sess, folder / "DICOM" / name


@bp.get("/projects/<label>/sessions/<session>/scans/<scan_id>/files/<path:name>/header")
def archive_header(label, session, scan_id, name):
    """Show the header of an archived DICOM file."""
    proj, sess, path = _archive_file(label, session, scan_id, name)
    return render_template(
        "headers/header.html", rows=headers.dump(_read(path)), name=name, links={},
        back=url_for("archive.scan", label=proj.label, session=sess.label, scan_id=scan_id),
        where=f"{proj.label}/{sess.subject.label}/{sess.label}", scan_id=scan_id,
        json_url=url_for(".archive_json", label=proj.label, session=sess.label,
                         scan_id=scan_id, name=name))


@bp.get("/data/projects/<label>/experiments/<session>/scans/<scan_id>/files/<path:name>"
        "/dicom.json")
def archive_json(label, session, scan_id, name):
    """Return an archived file's header in the DICOM JSON model."""
    _proj, _sess, path = _archive_file(label, session, scan_id, name)
    return jsonify(headers.to_dicom_json(_read(path)))


# Rules are registered bottom up; url_for builds the first that fits: the page's.
@bp.get("/data/projects/<label>/subjects/<subject>/experiments/<session>/scans/<scan_id>"
        "/<any(snapshot, thumbnail):kind>")
@bp.get("/data/projects/<label>/experiments/<session>/scans/<scan_id>"
        "/<any(snapshot, thumbnail):kind>")
@bp.get("/projects/<label>/sessions/<session>/scans/<scan_id>/<any(snapshot, thumbnail):kind>.png")
def archive_snapshot(label, session, scan_id, kind, subject=None):
    """Return an archived scan's snapshot or thumbnail."""
    _proj, sess, _sc, folder = _archive_scan(label, session, scan_id)
    if subject is not None and subject != sess.subject.label:
        abort(404, f"No session {session!r} for subject {subject!r}.")
    return _png(snapshots.snapshot_path(folder, f"{kind}.png"))


# --- shared -----------------------------------------------------------------------

def _read(path: Path):
    try:
        return headers.read_header(path)
    except Exception as exc:  # pydicom raises many kinds on bytes it cannot read
        abort(404, f"The file could not be read as DICOM: {exc}")


def _png(path: Path):
    if not path.is_file():
        abort(404, "This scan has no snapshot yet.")
    return send_file(path, mimetype="image/png", max_age=60)


@bp.app_template_global()
def prearchive_snapshots(ps) -> dict[str, dict]:
    """Return {scan id: {"thumbnail": url, "snapshot": url}} for a prearchive session's
    scans that have snapshots (for templates)."""
    base = prearchive.session_dir(ps) / "SCANS"
    return {s["id"]: {kind: url_for("headers.prearchive_snapshot", prearchive_id=ps.id,
                                    scan_id=s["id"], kind=kind)
                      for kind in ("thumbnail", "snapshot")}
            for s in ps.scans or []
            if snapshots.snapshot_path(base / s["id"], snapshots.THUMBNAIL).is_file()}


@bp.app_template_global()
def archive_snapshots(project, session) -> dict[str, dict]:
    """Return {scan id: {"thumbnail": url, "snapshot": url}} for an archived session's
    scans that have a SNAPSHOTS resource (for templates)."""
    scan_ids = db.session.scalars(
        select(Scan.scan_id).join(Resource, Resource.scan_id == Scan.id)
        .filter(Scan.session_id == session.id, Resource.label == snapshots.RESOURCE))
    return {scan_id: {kind: url_for("headers.archive_snapshot", label=project.label,
                                    session=session.label, scan_id=scan_id, kind=kind)
                      for kind in ("thumbnail", "snapshot")}
            for scan_id in scan_ids}
