"""A project's members and settings, managed by its owners."""
from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from sqlalchemy import func, select

from blueprints import access, audit
from models import Membership, Project, User, db

bp = Blueprint("members", __name__, url_prefix="/projects/<label>")

PREARCHIVE_CODES = ("0", "4", "5")


def _page(project: Project, code: int = 200):
    rows = db.session.execute(
        select(Membership, User).join(User, User.id == Membership.user_id)
        .where(Membership.project_id == project.id).order_by(User.username)).all()
    users = db.session.scalars(select(User.username).where(User.enabled)
                               .order_by(User.username))
    return render_template("members/index.html", project=project, rows=rows,
                           roles=access.ROLES, usernames=list(users)), code


def _refuse(project: Project, message: str, code: int):
    db.session.rollback()
    flash(message, "error")
    return _page(project, code)


@bp.get("/members")
def index(label):
    """List the project's members and their roles."""
    return _page(access.get_project(label, access.OWN))


def _owner_count(project: Project) -> int:
    return db.session.scalar(select(func.count()).select_from(Membership).filter_by(
        project_id=project.id, role="owner"))


@bp.post("/members")
def add(label):
    """Give a user a role in the project."""
    project = access.get_project(label, access.OWN)
    username = (request.form.get("username") or "").strip()
    role = request.form.get("role")
    user = db.session.scalar(select(User).where(func.lower(User.username) == username.lower()))
    if user is None:
        return _refuse(project, f"No user {username!r}.", 404)
    if role not in access.ROLES:
        return _refuse(project, f"Role must be one of {', '.join(access.ROLES)}.", 400)
    membership = db.session.scalar(select(Membership).filter_by(project_id=project.id,
                                                                user_id=user.id))
    if membership is not None:
        return _refuse(project, f"{user.username} is already {membership.role}.", 409)
    db.session.add(Membership(project_id=project.id, user_id=user.id, role=role))
    audit.record("role_change", project=project.label, target=user.username,
                 old=None, new=role)
    db.session.commit()
    flash(f"{user.username} is now {role} of {project.label}.", "info")
    return redirect(url_for(".index", label=project.label), code=303)


def _membership(project: Project, user_id: int) -> Membership:
    membership = db.session.scalar(select(Membership).filter_by(project_id=project.id,
                                                                user_id=user_id))
    if membership is None:
        abort(404, "That user is not a member of this project.")
    return membership


@bp.post("/members/<int:user_id>/role")
def change_role(label, user_id):
    """Change a member's role (the last owner stays owner)."""
    project = access.get_project(label, access.OWN)
    membership = _membership(project, user_id)
    role = request.form.get("role")
    if role not in access.ROLES:
        return _refuse(project, f"Role must be one of {', '.join(access.ROLES)}.", 400)
    if membership.role == "owner" and role != "owner" and _owner_count(project) == 1:
        return _refuse(project, "A project keeps at least one owner.", 409)
    audit.record("role_change", project=project.label, target=membership.user.username,
                 old=membership.role, new=role)
    membership.role = role
    db.session.commit()
    return redirect(url_for(".index", label=project.label), code=303)


@bp.post("/members/<int:user_id>/remove")
def remove(label, user_id):
    """Remove a member from the project (not the last owner)."""
    project = access.get_project(label, access.OWN)
    membership = _membership(project, user_id)
    if membership.role == "owner" and _owner_count(project) == 1:
        return _refuse(project, "The last owner cannot be removed.", 409)
    audit.record("role_change", project=project.label, target=membership.user.username,
                 old=membership.role, new=None)
    db.session.delete(membership)
    db.session.commit()
    return redirect(url_for(".index", label=project.label), code=303)


@bp.route("/settings", methods=["GET", "POST"])
def settings(label):
    """Show or change the project's name, description and accessibility."""
    project = access.get_project(label, access.OWN)
    if request.method == "GET":
        return render_template("members/settings.html", project=project)
    accessibility = request.form.get("accessibility", project.accessibility)
    code = request.form.get("prearchive_code", str(project.prearchive_code))
    if accessibility not in ("private", "protected", "public") or code not in PREARCHIVE_CODES:
        flash("Accessibility must be private, protected or public, and the prearchive code "
              "0, 4 or 5.", "error")
        return render_template("members/settings.html", project=project), 400
    old = {"name": project.name, "accessibility": project.accessibility,
           "prearchive_code": project.prearchive_code}
    project.prearchive_code = int(code)
    project.name = (request.form.get("name") or project.name).strip()[:255]
    project.description = (request.form.get("description") or "").strip()
    project.accessibility = accessibility
    audit.record("project_change", project=project.label, target=project.label, old=old,
                 new={"name": project.name, "accessibility": accessibility,
                      "prearchive_code": project.prearchive_code})
    db.session.commit()
    flash("Settings saved.", "info")
    return redirect(url_for(".settings", label=project.label), code=303)
