"""Scanyard's own small JSON endpoints (the XNAT-style REST lives under /data)."""
from __future__ import annotations

from flask import Blueprint, jsonify
from sqlalchemy import select

from blueprints import access
from blueprints.upload import report_with_links
from models import Subject, db

bp = Blueprint("api", __name__, url_prefix="/api")


@bp.get("/uploads/<upload_id>")
def upload_status(upload_id):
    """Return an upload's status, progress, counts, messages and sessions."""
    return jsonify(report_with_links(access.get_upload(upload_id)))


@bp.get("/projects/<label>/subjects")
def subjects(label):
    """Return the subject labels of a project."""
    project = access.get_project(label)
    return jsonify(subjects=list(db.session.scalars(
        select(Subject.label).filter_by(project_id=project.id).order_by(Subject.label))))
