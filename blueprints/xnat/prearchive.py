"""The prearchive services: list, show, delete and archive prearchive sessions.

A prearchive session's address is ``/prearchive/projects/{project}/{timestamp}/{folder}``
(``_unassigned`` for the sessions no project claimed), with or without
``/data`` in front. Archiving and deleting run as jobs; the answer waits for
them up to SCANYARD_IMPORT_WAIT_SECONDS, then says 202; so do moves to
another project and rebuilds (workers.prearchive_tools).
"""
from __future__ import annotations

import re

from flask import abort, current_app, request
from sqlalchemy import select

from blueprints import access, audit
from blueprints.xnat import bp, output
from blueprints.xnat.listing import when
from blueprints.zipstream import zip_response
from imaging import storage
from imaging.labels import LabelError, check_label, shown
from models import PrearchiveSession, db
from workers import importing, prearchive, prearchive_tools
from workers.archiving import OVERWRITE_MODES, ArchiveRefused

_SRC_RE = re.compile(r"(?:/data)?/prearchive/projects/([^/]+)/([^/]+)/([^/]+)/?")
COLUMNS = ["project", "timestamp", "lastmod", "uploaded", "scan_date", "scan_time",
           "subject", "session", "folderName", "name", "tag", "status", "url", "autoarchive",
           "prevent_anon", "prevent_auto_commit", "SOURCE"]


def row(ps: PrearchiveSession) -> dict:
    """Return a prearchive session as XNAT lists it."""
    return {"project": ps.project_key, "timestamp": ps.timestamp,
            "lastmod": when(ps.last_modified), "uploaded": when(ps.received),
            "scan_date": ps.scan_date.isoformat() if ps.scan_date else None,
            "scan_time": None, "subject": ps.subject, "session": ps.session,
            "folderName": ps.folder, "name": ps.folder, "tag": ps.study_uid,
            "status": ps.status, "message": ps.message,
            "url": f"/prearchive/projects/{ps.relpath}", "autoarchive": "None",
            "prevent_anon": "false", "prevent_auto_commit": "false", "SOURCE": ps.source,
            "scans": ps.scan_count, "files": ps.file_count, "size": ps.size}


def _wait() -> int:
    return current_app.config["IMPORT_WAIT_SECONDS"]


def _listing(rows):
    return output.result_set([row(ps) for ps in rows], COLUMNS, "Prearchive")


@bp.get("/data/prearchive/projects")
def prearchive_list():
    """List the prearchive sessions the user may handle."""
    rows = db.session.scalars(select(PrearchiveSession).where(access.prearchive_filter())
                              .order_by(PrearchiveSession.project_key,
                                        PrearchiveSession.timestamp))
    return _listing(rows)


@bp.get("/data/prearchive/projects/<project>")
def prearchive_project(project):
    """List one project's prearchive sessions (``_unassigned``: admins only)."""
    if project == storage.UNASSIGNED:
        access.require_admin()
    else:
        project = access.get_project(project, access.EDIT).label
    rows = db.session.scalars(select(PrearchiveSession)
                              .filter_by(project_key=storage.project_key(project))
                              .order_by(PrearchiveSession.timestamp))
    return _listing(rows)


@bp.get("/data/prearchive/projects/<project>/<timestamp>/<folder>")
def prearchive_session(project, timestamp, folder):
    """Show a prearchive session with its scans, or stream it as a zip (format=zip)."""
    ps = access.prearchive_session_at(project, timestamp, folder, access.EDIT)
    if output.wanted_format(("json", "zip")) == "zip":
        base = prearchive.session_dir(ps)
        entries = sorted((f"{ps.folder}/{p.relative_to(base).as_posix()}", p)
                         for p in base.rglob("*") if p.is_file())
        return zip_response(entries, f"{ps.folder}.zip")
    scans = [output.item("xnat:imageScanData", s) for s in ps.scans or []]
    return output.items(output.item("xnat:imageSessionData", row(ps),
                                    [output.child("scans/scan", scans)] if scans else []))


@bp.delete("/data/prearchive/projects/<project>/<timestamp>/<folder>")
def prearchive_delete(project, timestamp, folder):
    """Delete a prearchive session; answer when it is gone (or 202)."""
    ps = access.prearchive_session_at(project, timestamp, folder, access.EDIT)
    return _delete([ps])


@bp.post("/data/prearchive/projects/<project>/<timestamp>/<folder>")
def prearchive_action(project, timestamp, folder):
    """Archive (action=commit), move (action=move) or rebuild a prearchive session."""
    ps = access.prearchive_session_at(project, timestamp, folder, access.EDIT)
    action = request.args.get("action") or ""
    if action == "commit":
        return _archive(ps)
    if action not in ("move", "build", "rebuild"):
        abort(400, "action must be commit, move, build or rebuild.")
    return _move([ps]) if action == "move" else _rebuild([ps])


def _sources() -> list[PrearchiveSession]:
    """Return the sessions named by the request's src parameters (EDIT checked)."""
    found = []
    for src in request.values.getlist("src"):
        match = _SRC_RE.fullmatch(src.strip())
        if not match:
            abort(400, f"src {shown(src)} is not /prearchive/projects/{{project}}/"
                       "{timestamp}/{session}.")
        found.append(access.prearchive_session_at(*match.groups(), access.EDIT))
    if not found:
        abort(400, "Give the session: src=/prearchive/projects/{project}/{timestamp}/"
                   "{session}.")
    return found


@bp.post("/data/services/archive")
def archive_service():
    """Archive the prearchive session named by src; answer its archive URI."""
    sources = _sources()
    if len(sources) > 1:
        abort(400, "Archive one session per request.")
    return _archive(sources[0])


@bp.post("/data/services/prearchive/<any(delete, move, rebuild):operation>")
def prearchive_service(operation):
    """Delete, move (to newProject) or rebuild the sessions named by src."""
    sources = _sources()
    return {"delete": _delete, "move": _move, "rebuild": _rebuild}[operation](sources)


def _delete(sessions: list[PrearchiveSession]):
    # Read everything first: a worker may delete the rows as soon as they are queued.
    found = [(ps.id, ps.project, ps.relpath) for ps in sessions]
    try:
        for ps in sessions:
            prearchive.check_idle(ps, "deleted")
        for (_, project, relpath), ps in zip(found, sessions, strict=True):
            audit.record("delete", project=project, target=relpath, what="prearchive session")
            prearchive.request_delete(ps)
    except prearchive.Busy as exc:
        db.session.rollback()
        abort(409, str(exc))
    done = importing.wait_for_removal([row_id for row_id, _, _ in found], _wait())
    return output.plain("".join(f"/data/prearchive/projects/{relpath}\n"
                                for _, _, relpath in found), 200 if done else 202)


def _options(ps: PrearchiveSession) -> dict:
    """Return the archive options of the request: overwrite, and the project,
    subject and session to archive to (dest, then parameters, then the
    session's own labels)."""
    from blueprints.xnat.imports import parse_dest

    dest = parse_dest(request.values.get("dest"))
    project = dest.get("project") or request.values.get("project") or ps.project
    subject = dest.get("subject") or request.values.get("subject") or ps.subject
    session = (dest.get("session") or request.values.get("session")
               or request.values.get("label") or ps.session)
    overwrite = (request.values.get("overwrite") or "none").lower()
    if overwrite not in OVERWRITE_MODES:
        abort(400, "overwrite must be none, append or delete.")
    try:
        subject = check_label(subject, "Subject label") if subject else None
        session = check_label(session, "Session label") if session else None
    except LabelError as exc:
        abort(400, str(exc))
    if project and project != ps.project:
        project = access.get_project(project, access.EDIT).label
    return {"project": project, "subject": subject, "session": session,
            "overwrite": overwrite}


def _archive(ps: PrearchiveSession):
    """Archive a session as the request asks; answer its archive URI when done."""
    options = _options(ps)
    # Read everything first: a worker may archive (and drop) the row as soon as it is queued.
    relpath = ps.relpath
    entry = {"project": options["project"], "timestamp": ps.timestamp,
             "folder": ps.folder, "session": options["session"], "prearchive": ps.project}
    try:
        audit.record("archive", project=options["project"], target=relpath,
                     subject=options["subject"], session=options["session"],
                     overwrite=options["overwrite"])
        prearchive.request_archive(ps, options)
    except (ArchiveRefused, prearchive.Busy) as exc:
        db.session.rollback()
        abort(409, str(exc))
    outcome = importing.wait_for_archive(entry, _wait())
    if outcome.state == "done":
        return output.plain(outcome.uris[0] + "\n")
    if outcome.state == "pending":
        return output.plain(f"/data/prearchive/projects/{relpath}\n", 202)
    abort(409, outcome.message)


def _move(sessions: list[PrearchiveSession]):
    """Move sessions to the prearchive of project newProject; answer their new URIs."""
    new = (request.values.get("newProject") or "").strip()
    if not new:
        abort(400, "Give the project to move to: newProject={label}.")
    project = access.get_project(new, access.EDIT).label
    try:
        for ps in sessions:
            audit.record("move", project=project, target=ps.relpath, old=ps.project,
                         new=project)
            prearchive_tools.request_move(ps, project)
    except prearchive.Busy as exc:
        db.session.rollback()
        abort(409, str(exc))
    return _settled(sessions)


def _rebuild(sessions: list[PrearchiveSession]):
    """Read the sessions' folders again (the build job); answer their URIs."""
    try:
        for ps in sessions:
            prearchive_tools.request_rebuild(ps)
    except prearchive.Busy as exc:
        db.session.rollback()
        abort(409, str(exc))
    return _settled(sessions)


def _settled(sessions: list[PrearchiveSession]):
    """Answer the URIs of sessions once their jobs end (200), or as they are (202)."""
    ids = [ps.id for ps in sessions]
    uris, waiting = [], False
    for prearchive_id in ids:
        ps = importing.wait_for_idle(prearchive_id, _wait())
        waiting = waiting or ps is None
        ps = ps or db.session.get(PrearchiveSession, prearchive_id)
        if ps is not None:
            uris.append(f"/data/prearchive/projects/{ps.relpath}\n")
    return output.plain("".join(uris), 202 if waiting else 200)


PREARCHIVE_CODES = (0, 4, 5)


@bp.get("/data/projects/<label>/prearchive_code")
def prearchive_code(label):
    """Return the project's prearchive code (0 review, 4 auto-archive, 5 and merge)."""
    project = access.get_project(label, access.READ)
    return str(project.prearchive_code), 200, {"Content-Type": "text/plain"}


@bp.route("/data/projects/<label>/prearchive_code/<int:code>", methods=["PUT", "POST"])
def set_prearchive_code(label, code):
    """Set the project's prearchive code, as XNAT's REST call does."""
    project = access.get_project(label, access.OWN)
    if code not in PREARCHIVE_CODES:
        abort(400, "The prearchive code is 0 (keep for review), 4 (archive automatically) "
                   "or 5 (archive automatically, merging into a session that exists).")
    audit.record("project_change", project=project.label, target=project.label,
                 old={"prearchive_code": project.prearchive_code},
                 new={"prearchive_code": code})
    project.prearchive_code = code
    db.session.commit()
    return str(code), 200, {"Content-Type": "text/plain"}
