"""Admin pages of the DICOM receiver: receivers (AE titles), routing rules, associations."""
from __future__ import annotations

import ipaddress
import re

from flask import (
    Blueprint,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from sqlalchemy import select

from blueprints import access
from imaging import routing
from models import DicomAssociation, Receiver, RoutingRule, db
from workers.receivers import allowed_lines

bp = Blueprint("dicom", __name__, url_prefix="/admin/dicom")

# The DICOM default character repertoire, without backslash; at most 16 characters.
AE_TITLE_RE = re.compile(r"[ -\[\]-~]{1,16}")
_CALLER_RE = re.compile(r"[A-Za-z0-9 ._:/\-]{1,64}")
RECENT_ASSOCIATIONS = 200


class FormError(ValueError):
    """A field of an admin form is wrong; the message says which and why."""


@bp.get("/")
def receivers():
    """List the receivers (called AE titles) and how senders reach them."""
    access.require_admin()
    rows = db.session.scalars(select(Receiver).order_by(Receiver.ae_title)).all()
    return render_template("dicom/receivers.html", receivers=rows, **receiver_address())


@bp.route("/receivers/new", methods=["GET", "POST"])
def new_receiver():
    """Create a receiver."""
    access.require_admin()
    receiver = Receiver(enabled=True, allowed="")
    if request.method == "GET":
        return _receiver_form(receiver)
    return _save_receiver(receiver, "Receiver {} created.")


@bp.route("/receivers/<int:receiver_id>", methods=["GET", "POST"])
def edit_receiver(receiver_id):
    """Change a receiver's AE title, project, state or allowed senders."""
    access.require_admin()
    receiver = db.get_or_404(Receiver, receiver_id, description="No such receiver.")
    if request.method == "GET":
        return _receiver_form(receiver)
    return _save_receiver(receiver, "Receiver {} saved.")


@bp.get("/receivers/<int:receiver_id>/delete")
def confirm_delete_receiver(receiver_id):
    """Ask before deleting a receiver."""
    access.require_admin()
    receiver = db.get_or_404(Receiver, receiver_id, description="No such receiver.")
    return render_template(
        "confirm_delete.html", what=f"receiver {receiver.ae_title}",
        detail="Senders calling this AE title will be refused.",
        action=url_for(".delete_receiver", receiver_id=receiver.id), back=url_for(".receivers"))


@bp.post("/receivers/<int:receiver_id>/delete")
def delete_receiver(receiver_id):
    """Delete a receiver."""
    access.require_admin()
    receiver = db.get_or_404(Receiver, receiver_id, description="No such receiver.")
    db.session.delete(receiver)
    db.session.commit()
    flash(f"Receiver {receiver.ae_title} deleted.", "info")
    return redirect(url_for(".receivers"), code=303)


@bp.get("/rules")
def rules():
    """Show the custom routing rules, in the order they are tried."""
    access.require_admin()
    return _rules_page()


@bp.post("/rules")
def add_rule():
    """Add a routing rule, checked before it is saved."""
    access.require_admin()
    try:
        rule = RoutingRule(**parse_rule_form(request.form))
    except FormError as exc:
        return _rules_page(error=str(exc), form=request.form), 400
    db.session.add(rule)
    db.session.commit()
    flash(f"Rule for {rule.field} added.", "info")
    return redirect(url_for(".rules"), code=303)


@bp.post("/rules/<int:rule_id>")
def edit_rule(rule_id):
    """Change a routing rule, checked before it is saved."""
    access.require_admin()
    rule = db.get_or_404(RoutingRule, rule_id, description="No such rule.")
    try:
        values = parse_rule_form(request.form)
    except FormError as exc:
        return _rules_page(error=str(exc), form=request.form, editing=rule.id), 400
    for key, value in values.items():
        setattr(rule, key, value)
    db.session.commit()
    flash(f"Rule for {rule.field} saved.", "info")
    return redirect(url_for(".rules"), code=303)


@bp.post("/rules/<int:rule_id>/delete")
def delete_rule(rule_id):
    """Delete a routing rule."""
    access.require_admin()
    rule = db.get_or_404(RoutingRule, rule_id, description="No such rule.")
    db.session.delete(rule)
    db.session.commit()
    flash("Rule deleted.", "info")
    return redirect(url_for(".rules"), code=303)


@bp.get("/associations")
def associations():
    """List the receiver's recent associations, newest first."""
    access.require_admin()
    rows = db.session.scalars(select(DicomAssociation).order_by(
        DicomAssociation.id.desc()).limit(RECENT_ASSOCIATIONS)).all()
    return render_template("dicom/associations.html", associations=rows)


def _receiver_form(receiver: Receiver, error: str | None = None, form=None):
    return render_template("dicom/receiver_form.html", receiver=receiver, error=error,
                           form=form, projects=access.visible_projects())


def _save_receiver(receiver: Receiver, message: str):
    try:
        values = parse_receiver_form(request.form, receiver.id)
    except FormError as exc:
        code = 409 if "already" in str(exc) else 400
        return _receiver_form(receiver, str(exc), request.form), code
    for key, value in values.items():
        setattr(receiver, key, value)
    db.session.add(receiver)
    db.session.commit()
    flash(message.format(receiver.ae_title), "info")
    return redirect(url_for(".receivers"), code=303)


def _rules_page(error: str | None = None, form=None, editing: int | None = None):
    rows = db.session.scalars(select(RoutingRule).order_by(
        RoutingRule.position, RoutingRule.id)).all()
    return render_template("dicom/rules.html", rules=rows, error=error, form=form or {},
                           editing=editing, fields=routing.FIELDS)


def parse_receiver_form(form, receiver_id: int | None) -> dict:
    """Return a receiver's values from its form, or raise FormError."""
    ae_title = (form.get("ae_title") or "").strip()
    if not AE_TITLE_RE.fullmatch(ae_title):
        raise FormError("The AE title must be 1 to 16 characters, letters, digits, spaces "
                        "or punctuation other than a backslash.")
    other = db.session.scalar(select(Receiver.id).filter_by(ae_title=ae_title))
    if other is not None and other != receiver_id:
        raise FormError(f"A receiver with AE title {ae_title} already exists.")
    project = (form.get("project") or "").strip() or None
    if project is not None:
        project = access.get_project(project, access.EDIT).label
    allowed = allowed_lines(form.get("allowed"))
    for line in allowed:
        _check_caller(line)
    return {"ae_title": ae_title, "project": project, "enabled": bool(form.get("enabled")),
            "allowed": "\n".join(allowed)}


def _check_caller(line: str) -> None:
    if not _CALLER_RE.fullmatch(line):
        raise FormError(f"Allowed sender {line[:64]!r} is neither an AE title nor a host.")
    if "/" in line:
        try:
            ipaddress.ip_network(line, strict=False)
        except ValueError:
            raise FormError(f"Allowed sender {line!r} is not a network such as "
                            "10.0.0.0/8.") from None


def parse_rule_form(form) -> dict:
    """Return a routing rule's values from its form, or raise FormError with
    the rule parser's explanation."""
    field = (form.get("field") or "").strip()
    text = (form.get("rule") or "").strip()
    try:
        routing.parse_rule(text, field)
    except ValueError as exc:
        raise FormError(str(exc)) from None
    try:
        position = int(form.get("position") or 0)
    except ValueError:
        raise FormError("The position must be a whole number.") from None
    return {"field": field, "rule": text, "position": position,
            "enabled": bool(form.get("enabled"))}


def receiver_address() -> dict:
    """Return the host and port senders use to reach the receiver."""
    return {"scp_host": request.host.rsplit(":", 1)[0] if not request.host.endswith("]")
            else request.host, "scp_port": current_app.config["SCP_PORT"],
            "default_ae": current_app.config["SCP_AE_TITLE"]}


@bp.app_context_processor
def _upload_help():
    def dicom_receivers(projects) -> dict:
        """Return how to send DICOM to the given projects (for the upload page)."""
        labels = {p.label for p in projects}
        rows = db.session.scalars(select(Receiver).order_by(Receiver.ae_title)).all()
        titles = [(r.ae_title, r.project) for r in rows if r.enabled and r.project in labels]
        address = receiver_address()
        default_off = any(r.ae_title == address["default_ae"] and not r.enabled for r in rows)
        return {"titles": titles, "default_on": not default_off, **address}

    return {"dicom_receivers": dicom_receivers}
