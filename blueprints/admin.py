"""Site administration: user accounts."""
from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from sqlalchemy import func, select

from blueprints import access, audit
from blueprints.auth import set_password
from imaging.labels import LabelError, check_label
from models import User, db

bp = Blueprint("admin", __name__, url_prefix="/admin")


@bp.get("/users")
def users():
    """List user accounts."""
    access.require_admin()
    rows = db.session.scalars(select(User).order_by(User.username))
    return render_template("admin/users.html", users=list(rows), values={})


@bp.post("/users")
def create_user():
    """Create a user account."""
    access.require_admin()
    form = request.form
    try:
        username = check_label(form.get("username", ""), "User name")
    except LabelError as exc:
        return _error(str(exc), 400)
    password = form.get("password", "")
    if len(password) < 8:
        return _error("The password needs at least 8 characters.", 400)
    if db.session.scalar(select(User.id).where(func.lower(User.username) == username.lower())):
        return _error(f"A user {username!r} already exists.", 409)
    user = User(username=username, email=form.get("email", "").strip() or None,
                is_admin=bool(form.get("is_admin")))
    set_password(user, password)
    db.session.add(user)
    audit.record("user_change", target=username, action="created", admin=user.is_admin)
    db.session.commit()
    flash(f"User {username} created.", "info")
    return redirect(url_for(".users"), code=303)


def _error(message: str, code: int):
    access.require_admin()
    flash(message, "error")
    rows = db.session.scalars(select(User).order_by(User.username))
    return render_template("admin/users.html", users=list(rows), values=request.form), code


@bp.post("/users/<int:user_id>/enabled")
def set_enabled(user_id):
    """Disable or re-enable a user account."""
    access.require_admin()
    user = db.get_or_404(User, user_id, description="No such user.")
    enable = request.form.get("enabled") == "1"
    if not enable and user.id == access.user().id:
        return _error("You cannot disable your own account.", 409)
    user.enabled = enable
    user.locked_until = None
    audit.record("user_change", target=user.username,
                 action="enabled" if enable else "disabled")
    db.session.commit()
    flash(f"User {user.username} {'enabled' if enable else 'disabled'}.", "info")
    return redirect(url_for(".users"), code=303)
