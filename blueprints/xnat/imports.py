"""The import service: ``POST /data/services/import`` with a zip, tar(.gz) or a
DICOM file as the raw body or as one multipart file.

It goes through the same pipeline as the web upload (an Upload row, then
the ingest jobs) and, like XNAT's, answers when the import is done: the new
sessions' URIs as text, one per line. Past SCANYARD_IMPORT_WAIT_SECONDS it
answers 202 with the upload's ``/api/uploads/{id}``, where scripts follow it.
``import-handler=gradual-DICOM`` files one instance per request as the DICOM
receiver does, and answers at once.
"""
from __future__ import annotations

import re
from pathlib import Path

from flask import abort, current_app, request
from sqlalchemy import select
from werkzeug.http import parse_options_header

from blueprints import access, audit, streaming
from blueprints.xnat import bp, output
from imaging.labels import LabelError, check_label, shown
from models import ImagingSession, db
from workers import importing
from workers.archiving import OVERWRITE_MODES
from workers.ingest import start_upload

_DEST_RE = re.compile(r"(?:/data)?/(archive|prearchive)(?:/projects/([^/]+)"
                      r"(?:/subjects/([^/]+)(?:/experiments/([^/]+))?)?)?/?")
# import-handler -> whether the files of a study join one session across requests
HANDLERS = {"dicom-zip": False, "gradual-dicom": True, "si": False}


def _flag(*names: str) -> bool:
    return any((request.args.get(n) or "").lower() in ("true", "1", "yes") for n in names)


def _first(*names: str) -> str | None:
    for name in names:
        value = (request.args.get(name) or "").strip()
        if value:
            return value
    return None


def parse_dest(text: str | None) -> dict:
    """Return the parts of a destination such as /archive/projects/P/subjects/S/
    experiments/E or /prearchive/projects/P; abort 400 for anything else."""
    if not text:
        return {}
    match = _DEST_RE.fullmatch(text.strip())
    if not match:
        abort(400, f"dest {shown(text)} is not /archive/projects/{{project}}[/subjects/..."
                   "[/experiments/...]] or /prearchive[/projects/{project}].")
    kind, project, subject, session = match.groups()
    return {"archive": kind == "archive", "project": project, "subject": subject,
            "session": session}


def import_params() -> dict:
    """Return the upload params of an import request, or abort 400/403/404/409/501."""
    handler = (request.args.get("import-handler") or "DICOM-zip").lower()
    if handler not in HANDLERS:
        abort(400, f"import-handler {shown(handler)} is not one of DICOM-zip, gradual-DICOM.")
    overwrite = (request.args.get("overwrite") or "none").lower()
    if overwrite not in OVERWRITE_MODES:
        abort(400, "overwrite must be none, append or delete.")
    dest = parse_dest(request.args.get("dest"))
    params = {"project": _first("project", "PROJECT_ID") or dest.get("project"),
              "subject": _first("subject", "SUBJECT_ID") or dest.get("subject"),
              "session": _first("session", "EXPT_LABEL", "experiment") or dest.get("session"),
              # None: the project's prearchive code or the data decide, as for uploads
              "auto_archive": bool(dest.get("archive")) or _flag("auto-archive", "AA") or None,
              "gradual": HANDLERS[handler], "overwrite": overwrite}
    try:
        for key, what in (("subject", "Subject label"), ("session", "Session label")):
            if params[key]:
                params[key] = check_label(params[key], what)
    except LabelError as exc:
        abort(400, str(exc))
    _check_project(params)
    return params


def _check_project(params: dict) -> None:
    if params["project"]:
        project = access.get_project(params["project"], access.EDIT)
        params["project"] = project.label
    elif not access.is_admin():
        abort(400, "Give the project: project={label}, or dest=/prearchive/projects/{label}.")
    if params["auto_archive"] and params["gradual"]:
        abort(501, "gradual-DICOM sessions are not archived as they arrive: send the files, "
                   "then POST /data/services/archive?src=... once the session is READY.")
    if params["auto_archive"] and params["overwrite"] == "none" and params["session"] \
            and params["project"] and db.session.scalar(select(ImagingSession.id).filter_by(
                project_id=project.id, label=params["session"])):
        abort(409, f"Session {params['session']!r} already exists in project "
                   f"{params['project']}; use another label, or overwrite=append to merge "
                   "into it, or overwrite=delete to replace it.")


def _received_file() -> tuple[Path, str]:
    """Return where this request's file was written and its name; abort 400 without one."""
    if request.mimetype == "multipart/form-data":
        parts = [f for f in request.files.values() if f.filename]
        if len(parts) != 1:
            abort(400, f"Send one file; the form holds {len(parts)}.")
        path, name = streaming.stored_path(parts[0]), parts[0].filename
    else:
        _, options = parse_options_header(request.headers.get("Content-Disposition", ""))
        name = options.get("filename") or "import-body"
        path = streaming.save_body(name)
    if path.stat().st_size == 0:
        abort(400, "The request has no body: send the zip, tar or DICOM file as the body "
                   "or as one multipart file.")
    return path, name


@bp.post("/data/services/import")
@bp.post("/REST/services/import")
def import_service():
    """Import a zip, tar or DICOM file; answer the new sessions' URIs when done."""
    params = import_params()
    path, name = _received_file()
    return answer(*run_import(path, name, params))


def run_import(path: Path, name: str, params: dict) -> tuple[str | None, importing.Outcome]:
    """Import the stored body; return (the upload to follow, its Outcome).

    A gradual-DICOM file is filed at once, as the receiver files an instance;
    anything else becomes an upload whose jobs the answer waits for.
    """
    if params.pop("gradual"):
        try:
            return None, importing.file_gradual(path, params)
        except importing.Unreadable as exc:
            abort(400, f"{name[:80]}: {exc}")
    streaming.claim_upload()
    upload = start_upload(path, name[:255], params, source="rest", user_id=access.user().id)
    audit.record("upload", project=params["project"], target=upload.id, file=name[:255],
                 size=upload.size, source="rest")
    db.session.commit()
    return upload.id, importing.wait_for_upload(upload.id,
                                                current_app.config["IMPORT_WAIT_SECONDS"])


def answer(upload_id: str | None, outcome: importing.Outcome):
    """Answer an import: URIs (200), the upload to follow (202), or the reason."""
    if outcome.state == "done":
        return output.plain("".join(uri + "\n" for uri in outcome.uris))
    if outcome.state == "pending":
        response = output.plain(f"/api/uploads/{upload_id}\n", 202)
        response.headers["Location"] = f"/api/uploads/{upload_id}"
        return response
    abort(409 if outcome.state == "refused" else 400, outcome.message)
