"""Needs attention: what waits for a person, each with the action that resolves it."""
from __future__ import annotations

import datetime as dt

from flask import Blueprint, current_app, render_template
from flask_login import current_user
from sqlalchemy import and_, func, or_, select

from blueprints import access
from models import (
    CONFLICT,
    ERROR,
    READY,
    RECEIVING,
    UPLOAD_FAILED,
    PrearchiveSession,
    Upload,
    db,
    utcnow,
)

bp = Blueprint("attention", __name__)

FAILED_UPLOADS_SHOWN_FOR = dt.timedelta(days=14)


def _stuck_after() -> dt.timedelta:
    """A session RECEIVING for this long after its last file is stuck."""
    return dt.timedelta(seconds=max(600, 10 * current_app.config["SESSION_IDLE_SECONDS"]))


def _session_condition(now: dt.datetime):
    return and_(access.prearchive_filter(), or_(
        PrearchiveSession.project.is_(None),
        PrearchiveSession.status.in_((CONFLICT, ERROR)),
        and_(PrearchiveSession.status == RECEIVING,
             PrearchiveSession.last_modified < now - _stuck_after()),
        # READY with a message: archiving it (by hand or automatically) was refused.
        and_(PrearchiveSession.status == READY, PrearchiveSession.message.isnot(None)),
    ))


def _upload_condition(now: dt.datetime):
    return and_(access.upload_filter(), Upload.status == UPLOAD_FAILED,
                Upload.created > now - FAILED_UPLOADS_SHOWN_FOR)


def attention_count() -> int:
    """Return how many things wait for the current user (shown in the menu)."""
    now = utcnow()
    sessions = db.session.scalar(select(func.count()).select_from(PrearchiveSession)
                                 .where(_session_condition(now)))
    uploads = db.session.scalar(select(func.count()).select_from(Upload)
                                .where(_upload_condition(now)))
    return (sessions or 0) + (uploads or 0)


def why(ps: PrearchiveSession, now: dt.datetime) -> tuple[str, str]:
    """Return (what is wrong, what resolves it) for a prearchive session."""
    if ps.project is None:
        return "no project claimed it", "assign it to a project (edit its labels)"
    if ps.status == CONFLICT:
        return ps.message or "conflict", "see its conflicts: archive with replace, relabel, " \
                                         "or delete it"
    if ps.status == ERROR:
        return ps.message or "error", "rebuild it, or delete it"
    if ps.status == RECEIVING:
        return (f"still RECEIVING, last file {ps.last_modified:%Y-%m-%d %H:%M}",
                "rebuild it (or reset it) to make it READY")
    return ps.message or "", "fix what the message says, then archive it"


@bp.get("/attention")
def index():
    """List what needs a person: unassigned, CONFLICT, ERROR, stuck sessions, failed uploads."""
    now = utcnow()
    sessions = db.session.scalars(select(PrearchiveSession).where(_session_condition(now))
                                  .order_by(PrearchiveSession.last_modified.desc())).all()
    uploads = db.session.scalars(select(Upload).where(_upload_condition(now))
                                 .order_by(Upload.created.desc())).all()
    return render_template("attention/index.html", rows=[(ps, *why(ps, now)) for ps in sessions],
                           uploads=uploads)


@bp.app_context_processor
def _menu_count():
    if not current_user.is_authenticated:
        return {}
    return {"attention_count": attention_count}
