"""PUT and DELETE on the archive's paths: create, update and delete projects,
subjects, experiments, scans, assessors, reconstructions and resources.

Fields come as query parameters, by their short name (``date``) or with
XNAT's data type in front (``xnat:mrSessionData/date``). A create answers
the new object's ID as text; an update answers the ID of what it changed.
"""
from __future__ import annotations

from flask import abort, request

from blueprints import access, audit
from blueprints.xnat import output
from blueprints.xnat.paths import Target
from imaging.labels import shown
from models import db
from workers import hierarchy, resources
from workers.archiving import delete_archived_session
from workers.hierarchy import Conflict, HierarchyError


def param(name: str) -> str | None:
    """Return a parameter given as ``name`` or as ``<datatype>/name``."""
    value = request.args.get(name)
    if value is None:
        for key, val in request.args.items():
            if key.rsplit("/", 1)[-1] == name and "/" in key:
                return val
    return value


def _given(names: dict) -> dict:
    """Return {field: value} for the parameters present, XNAT name -> our field."""
    found = {}
    for xnat_name, field in names.items():
        value = param(xnat_name)
        if value is not None:
            found[field] = value.strip()[:255] or None
    return found


def _new_label(t: Target) -> str:
    """Return the label of an object being created: ``label=`` when given (the path
    may name it by the ID a script chose), else the path's last part."""
    return param("label") or t.missing


def _no_relabel(current: str) -> None:
    label = param("label")
    if label and label != current:
        abort(400, f"Renaming {shown(current)} to {shown(label)} is not available.")


def _session_fields() -> dict:
    fields = _given({"modality": "modality", "scanner": "scanner", "UID": "study_uid",
                     "accession": "accession", "note": "study_description"})
    if param("xsiType"):
        fields["xsi_type"] = hierarchy.check_xsi_type(param("xsiType"))
    if param("date") is not None:
        fields["session_date"] = hierarchy.parse_date(param("date"))
    return fields


def _scan_fields() -> dict:
    fields = _given({"type": "type", "series_description": "series_description",
                     "quality": "quality", "modality": "modality", "UID": "series_uid"})
    if "quality" in fields:
        fields["quality"] = (fields["quality"] or "usable")[:32]
    if param("xsiType"):
        fields["xsi_type"] = hierarchy.check_xsi_type(param("xsiType"))
    return fields


def put(t: Target) -> tuple[str, bool]:
    """Create or update what the path names; return (its ID, whether it is new).

    Raises HierarchyError (400), Conflict (409) or resources.ResourceError.
    """
    kind, new = t.leaf, t.missing is not None
    if t.is_listing:
        abort(405, "PUT names the object to create: .../" + kind + "/{label}.")
    if kind == "projects":
        return _put_project(t)
    if kind == "subjects":
        if new:
            return hierarchy.xnat_id("subject", hierarchy.create_subject(
                t.project, _new_label(t)).id), True
        _no_relabel(t.subject.label)
        return hierarchy.xnat_id("subject", t.subject.id), False
    if kind == "experiments":
        return _put_session(t)
    if kind == "scans":
        if t.scans is not None and t.scan is None:
            abort(400, "PUT names one scan.")
        if new:
            return hierarchy.create_scan(t.session, t.missing, _scan_fields()).scan_id, True
        hierarchy.update_scan(t.scan, _scan_fields())
        return t.scan.scan_id, False
    if kind == "assessors":
        if new:
            xsi = hierarchy.check_xsi_type(param("xsiType"))
            row = hierarchy.create_assessor(t.session, _new_label(t), xsi)
            return hierarchy.xnat_id("assessor", row.id), True
        _no_relabel(t.assessor.label)
        return hierarchy.xnat_id("assessor", t.assessor.id), False
    if kind == "reconstructions":
        if new:
            row = hierarchy.create_reconstruction(t.session, _new_label(t), param("type"))
            return hierarchy.xnat_id("reconstruction", row.id), True
        _no_relabel(t.reconstruction.label)
        return hierarchy.xnat_id("reconstruction", t.reconstruction.id), False
    return _put_resource(t)


def _put_project(t: Target) -> tuple[str, bool]:
    fields = {"name": param("name"), "description": param("description"),
              "accessibility": param("accessibility")}
    if t.project is None:
        project = hierarchy.create_project(t.missing, owner_id=access.user().id,
                                           **{k: v or "" for k, v in fields.items()})
        audit.record("project_change", project=project.label, target=project.label,
                     action="created")
        return project.label, True
    hierarchy.update_project(t.project, **fields)
    if any(v is not None for v in fields.values()):
        audit.record("project_change", project=t.project.label, target=t.project.label,
                     action="updated")
    return t.project.label, False


def _put_session(t: Target) -> tuple[str, bool]:
    fields = _session_fields()
    if t.missing is None:
        _no_relabel(t.session.label)
        hierarchy.update_session(t.session, fields)
        return hierarchy.xnat_id("session", t.session.id), False
    subject = t.subject
    if subject is None:
        ref = param("subject_ID") or param("subject_label")
        subject = access.find_subject(t.project, ref) if ref else None
        if subject is None:
            raise HierarchyError("Create the experiment under its subject: "
                                 ".../subjects/{subject}/experiments/{label}.")
    session = hierarchy.create_session(t.project, subject, _new_label(t), fields)
    return hierarchy.xnat_id("session", session.id), True


def _put_resource(t: Target) -> tuple[str, bool]:
    options = {k: request.args.get(k) for k in ("format", "content", "tags")}
    if t.missing is not None:
        resource = resources.get_or_create(t.owner(), t.missing, **options)
        return str(resource.id), True
    if t.resource is None:
        abort(400, "PUT names one resource.")
    resources.update(t.resource, **options)
    return str(t.resource.id), False


def delete(t: Target) -> None:
    """Delete what the path names, rows and files (XNAT's removeFiles=true; the
    files always go, since the rows are only an index of them). Commits."""
    kind = t.leaf
    if t.is_listing:
        abort(405, f"DELETE names what to delete: .../{kind}/{{id}}.")
    what = f"{kind[:-1]} {t.ref}"
    audit.record("delete", project=t.project.label, target=request.path, what=what)
    if kind == "projects":
        hierarchy.delete_project(t.project)
    elif kind == "subjects":
        hierarchy.delete_subject(t.subject)
    elif kind == "experiments":
        db.session.commit()
        delete_archived_session(t.session.id)
    elif kind == "scans":
        for scan in t.scans:
            hierarchy.delete_scan(scan)
    elif kind == "assessors":
        hierarchy.delete_assessor(t.assessor)
    elif kind == "reconstructions":
        hierarchy.delete_reconstruction(t.reconstruction)
    elif kind == "resources":
        for resource in t.resources:
            resources.delete_resource(resource)
    else:
        resources.delete_file(t.file)
    db.session.commit()


def answer_put(t: Target):
    """Do a PUT and answer its ID as text, or the reason it was refused."""
    try:
        object_id, _created = put(t)
        db.session.commit()
    except Conflict as exc:
        db.session.rollback()
        abort(409, str(exc))
    except (HierarchyError, resources.ResourceError) as exc:
        db.session.rollback()
        abort(409 if isinstance(exc, resources.ResourceConflict) else 400, str(exc))
    return output.plain(object_id)


def answer_delete(t: Target):
    try:
        delete(t)
    except Conflict as exc:
        db.session.rollback()
        abort(409, str(exc))
    return output.plain("")
