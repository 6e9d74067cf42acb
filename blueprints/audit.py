"""The audit log: who did what, when and from where; and the page that shows it."""
from __future__ import annotations

from flask import Blueprint, abort, current_app, has_request_context, render_template, request
from flask_login import current_user
from sqlalchemy import select

from models import AuditEvent, db

bp = Blueprint("audit", __name__)

KINDS = ("login", "login_failed", "logout", "upload", "archive", "delete", "move",
         "label_edit", "role_change", "token_created", "token_revoked", "user_change",
         "project_change", "script_change")


def record(kind: str, *, project: str | None = None, target: str | None = None,
           **detail) -> AuditEvent:
    """Add an audit event for the current request's user (the caller commits)."""
    user = current_user if has_request_context() and current_user.is_authenticated else None
    event = AuditEvent(
        kind=kind, project=project, target=target, detail=detail,
        user_id=user.id if user else None, username=user.username if user else None,
        remote_addr=request.remote_addr if has_request_context() else None)
    db.session.add(event)
    return event


@bp.get("/audit")
def index():
    """Show the audit log: admins see all, owners their projects', newest first."""
    from blueprints import access

    query = select(AuditEvent).order_by(AuditEvent.time.desc(), AuditEvent.id.desc())
    if not access.is_admin():
        owned = access.visible_project_labels(access.OWN)
        if not owned:
            abort(403, "Only site administrators and project owners see the audit log.")
        query = query.where(AuditEvent.project.in_(owned))
    kind = request.args.get("kind") or ""
    if kind:
        query = query.where(AuditEvent.kind == kind)
    project = request.args.get("project") or ""
    if project:
        query = query.where(AuditEvent.project == project)
    events = db.paginate(query, per_page=current_app.config["PAGE_SIZE"])
    return render_template("audit/index.html", events=events, kinds=KINDS, kind=kind,
                           project=project)
