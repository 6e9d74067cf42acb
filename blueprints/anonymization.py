"""Pages where admins edit the site's anonymization script and owners their project's."""
from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for

from blueprints import access
from imaging.anonymize import ScriptError
from models import AuditEvent, db
from workers import anonymization

bp = Blueprint("anonymization", __name__)


def _username() -> str | None:
    """Return who is signed in, or None while the site has no sign-in."""
    from flask import current_app
    from flask_login import current_user

    if not hasattr(current_app, "login_manager"):
        return None
    return current_user.username if current_user.is_authenticated else None


@bp.route("/admin/anonymization", methods=["GET", "POST"])
def site_script():
    """Show or save the site's anonymization script."""
    access.require_admin()
    return _edit(anonymization.SITE, None, url_for(".site_script"))


@bp.route("/projects/<label>/anonymization", methods=["GET", "POST"])
def project_script(label):
    """Show or save a project's anonymization script."""
    project = access.get_project(label, access.OWN)
    return _edit(anonymization.project_scope(project), project,
                 url_for(".project_script", label=project.label))


def _edit(scope: str, project, here: str):
    text, enabled = anonymization.script_text(scope)
    if request.method == "GET":
        return render_template("anonymization/edit.html", project=project, text=text,
                               enabled=enabled, error=None)
    new_text = request.form.get("text", "").replace("\r\n", "\n")
    new_enabled = request.form.get("enabled") == "on"
    try:
        old_text, old_enabled = anonymization.save_script(
            scope, new_text, new_enabled, _username(), project)
    except ScriptError as exc:
        db.session.rollback()
        return render_template("anonymization/edit.html", project=project, text=new_text,
                               enabled=new_enabled, error=exc), 400
    _audit(scope, project, old_text, old_enabled, new_text, new_enabled)
    db.session.commit()
    flash("Anonymization script saved.", "info")
    return redirect(here, code=303)


def _audit(scope, project, old_text, old_enabled, new_text, new_enabled) -> None:
    db.session.add(AuditEvent(
        username=_username(), kind="anonymization_script", target=scope,
        project=project.label if project else None, remote_addr=request.remote_addr,
        detail={"old": old_text, "new": new_text, "old_enabled": old_enabled,
                "enabled": new_enabled}))
