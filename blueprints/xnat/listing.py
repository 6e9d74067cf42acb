"""What GET answers on the archive's paths: rows of collections with XNAT's
field names, and single objects with their children."""
from __future__ import annotations

from urllib.parse import quote

from flask import request
from sqlalchemy import select
from sqlalchemy.orm import joinedload

from blueprints import access
from blueprints.xnat import output
from blueprints.xnat.paths import Target
from models import (
    Assessor,
    File,
    ImagingSession,
    Project,
    Reconstruction,
    Resource,
    Scan,
    Subject,
    db,
)
from workers import hierarchy
from workers.resources import Owner, owner_of, resources_of

COLUMNS = {
    "projects": ["ID", "secondary_ID", "name", "description", "pi_firstname", "pi_lastname",
                 "URI"],
    "subjects": ["ID", "project", "label", "insert_date", "insert_user", "URI"],
    "experiments": ["ID", "project", "date", "xsiType", "label", "insert_date", "subject_ID",
                    "subject_label", "URI"],
    "scans": ["xsiType", "xnat_imagescandata_id", "note", "series_description", "ID", "type",
              "URI", "quality"],
    "assessors": ["ID", "label", "xsiType", "project", "session_ID", "session_label",
                  "insert_date", "URI"],
    "reconstructions": ["ID", "label", "type", "xsiType", "URI"],
    "resources": ["xnat_abstractresource_id", "cat_id", "label", "element_name", "category",
                  "cat_desc", "format", "content", "tags", "file_count", "file_size", "URI"],
    "files": ["Name", "Size", "URI", "collection", "file_tags", "file_format", "file_content",
              "cat_ID", "digest"],
}
TITLES = {"projects": "Projects", "subjects": "Subjects", "experiments": "Experiments",
          "scans": "Scans", "assessors": "Assessors", "reconstructions": "Reconstructions",
          "resources": "Resources", "files": "Files"}


def when(value) -> str | None:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else None


def project_uri(p: Project) -> str:
    return f"/data/projects/{p.label}"


def subject_uri(s: Subject) -> str:
    return f"/data/subjects/{hierarchy.xnat_id('subject', s.id)}"


def session_uri(e: ImagingSession) -> str:
    return f"/data/experiments/{hierarchy.xnat_id('session', e.id)}"


def owner_uri(o: Owner) -> str:
    if o.session is None:
        return subject_uri(o.subject) if o.subject else project_uri(o.project)
    base = session_uri(o.session)
    if o.scan is not None:
        return f"{base}/scans/{o.scan.scan_id}"
    if o.assessor is not None:
        return f"{base}/assessors/{hierarchy.xnat_id('assessor', o.assessor.id)}"
    if o.reconstruction is not None:
        return f"{base}/reconstructions/{hierarchy.xnat_id('reconstruction', o.reconstruction.id)}"
    return base


def project_row(p: Project) -> dict:
    return {"ID": p.label, "secondary_ID": p.label, "name": p.name,
            "description": p.description, "pi_firstname": "", "pi_lastname": "",
            "accessibility": p.accessibility, "xsiType": "xnat:projectData",
            "insert_date": when(p.created), "URI": project_uri(p)}


def subject_row(s: Subject) -> dict:
    return {"ID": hierarchy.xnat_id("subject", s.id), "project": s.project.label,
            "label": s.label, "insert_date": when(s.created), "insert_user": "",
            "xsiType": "xnat:subjectData", "URI": subject_uri(s)}


def session_row(e: ImagingSession) -> dict:
    return {"ID": hierarchy.xnat_id("session", e.id), "project": e.project.label,
            "label": e.label, "date": e.session_date.isoformat() if e.session_date else None,
            "xsiType": hierarchy.session_type(e), "insert_date": when(e.created),
            "subject_ID": hierarchy.xnat_id("subject", e.subject_id),
            "subject_label": e.subject.label, "modality": e.modality, "UID": e.study_uid,
            "scanner": e.scanner, "accession": e.accession, "URI": session_uri(e)}


def scan_row(s: Scan) -> dict:
    return {"ID": s.scan_id, "xnat_imagescandata_id": s.id, "type": s.type,
            "series_description": s.series_description, "quality": s.quality,
            "xsiType": hierarchy.scan_type(s), "note": "", "modality": s.modality,
            "UID": s.series_uid, "frames": s.instance_count,
            "URI": f"{session_uri(s.session)}/scans/{s.scan_id}"}


def assessor_row(a: Assessor, e: ImagingSession) -> dict:
    return {"ID": hierarchy.xnat_id("assessor", a.id), "label": a.label, "xsiType": a.type,
            "project": e.project.label, "session_ID": hierarchy.xnat_id("session", e.id),
            "session_label": e.label, "insert_date": when(a.created),
            "URI": f"{session_uri(e)}/assessors/{hierarchy.xnat_id('assessor', a.id)}"}


def reconstruction_row(r: Reconstruction, e: ImagingSession) -> dict:
    rid = hierarchy.xnat_id("reconstruction", r.id)
    return {"ID": rid, "label": r.label, "type": r.type,
            "xsiType": hierarchy.RECONSTRUCTION_TYPE, "insert_date": when(r.created),
            "URI": f"{session_uri(e)}/reconstructions/{rid}"}


def resource_rows(found: list[Resource]) -> list[dict]:
    # file_count and size are kept on the row (workers.resources.recount).
    rows = []
    for r in found:
        count, size = r.file_count or 0, r.size or 0
        category = "scans" if r.scan_id else "resources"
        rows.append({"xnat_abstractresource_id": r.id, "cat_id": r.id, "label": r.label,
                     "element_name": "xnat:resourceCatalog", "category": category,
                     "cat_desc": "", "format": r.format, "content": r.content,
                     "tags": r.tags, "file_count": count, "file_size": size,
                     "xsiType": "xnat:resourceCatalog",
                     "URI": f"{owner_uri(owner_of(r))}/resources/{r.id}"})
    return rows


def file_rows(found: list[Resource]) -> list[dict]:
    rows = []
    for r in found:
        base = f"{owner_uri(owner_of(r))}/resources/{r.id}/files/"
        for f in db.session.scalars(select(File).filter_by(resource_id=r.id)
                                    .order_by(File.path)):
            rows.append({"Name": f.path.rsplit("/", 1)[-1], "Size": f.size,
                         "URI": base + quote(f.path), "collection": r.label,
                         "file_tags": f.tags, "file_format": f.format,
                         "file_content": f.content, "cat_ID": r.id, "digest": f.sha256,
                         "path": f.path})
    return rows


def reached_resources(t: Target) -> list[Resource]:
    """Return the resources a files path covers: the one named, all of an
    owner's (``resources/ALL``), or everything under the object (``.../files``)."""
    if t.resources is not None:
        return t.resources
    owners = t.owners()
    found = [r for o in owners for r in resources_of(o)]
    if t.session is not None and t.scans is None and t.assessor is None \
            and t.reconstruction is None:
        # An experiment's files: its scans', assessors' and reconstructions' too.
        found = list(db.session.scalars(select(Resource).filter_by(session_id=t.session.id)
                                        .order_by(Resource.id)))
    return found


def collection_rows(t: Target) -> tuple[list[dict], str]:
    """Return the rows of the collection a path ends on, and its name."""
    kind = t.leaf
    if kind == "projects":
        return [project_row(p) for p in access.visible_projects(access.SEE)], kind
    if kind == "subjects":
        query = select(Subject).options(joinedload(Subject.project)).order_by(Subject.label)
        query = query.filter_by(project_id=t.project.id) if t.project else query.where(
            Subject.project_id.in_([p.id for p in access.visible_projects(access.READ)]))
        return [subject_row(s) for s in db.session.scalars(query)], kind
    if kind == "experiments":
        query = select(ImagingSession).order_by(ImagingSession.label).options(
            joinedload(ImagingSession.project), joinedload(ImagingSession.subject))
        if t.subject is not None:
            query = query.filter_by(subject_id=t.subject.id)
        elif t.project is not None:
            query = query.filter_by(project_id=t.project.id)
        else:
            query = query.where(ImagingSession.project_id.in_(
                [p.id for p in access.visible_projects(access.READ)]))
        return [session_row(e) for e in db.session.scalars(query)], kind
    if kind == "scans":
        return [scan_row(s) for s in t.session.scans], kind
    if kind == "assessors":
        found = db.session.scalars(select(Assessor).filter_by(session_id=t.session.id)
                                   .order_by(Assessor.label))
        return [assessor_row(a, t.session) for a in found], kind
    if kind == "reconstructions":
        found = db.session.scalars(select(Reconstruction).filter_by(session_id=t.session.id)
                                   .order_by(Reconstruction.label))
        return [reconstruction_row(r, t.session) for r in found], kind
    if kind == "resources":
        found = [r for o in t.owners() for r in resources_of(o)]
        return resource_rows(found), kind
    return file_rows(reached_resources(t)), kind


def filtered(rows: list[dict], args) -> list[dict]:
    """Keep the rows matching filters such as ?project=P or ?xsiType=xnat:mrSessionData
    (several values separated by commas, * as a wildcard)."""
    from fnmatch import fnmatchcase

    for key, value in args.items():
        if key in ("format", "columns") or not rows or key not in rows[0]:
            continue
        wanted = value.split(",")
        rows = [r for r in rows if any(fnmatchcase(output.text(r[key]), w) for w in wanted)]
    return rows


def _fields(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "URI"}


def _resource_items(found: list[Resource]) -> list[dict]:
    return [output.item("xnat:resourceCatalog", _fields(row)) for row in resource_rows(found)]


def _scan_item(s: Scan, owner: Owner) -> dict:
    children = [output.child("file", _resource_items(resources_of(owner)))]
    return output.item(hierarchy.scan_type(s), _fields(scan_row(s)), children)


def _session_item(e: ImagingSession) -> dict:
    def owner(**kw):
        return Owner(e.project, e.subject, e, **kw)
    scans = [_scan_item(s, owner(scan=s)) for s in e.scans]
    assessors = [output.item(a.type, _fields(assessor_row(a, e)), [output.child(
        "out/file", _resource_items(resources_of(owner(assessor=a))))])
        for a in db.session.scalars(select(Assessor).filter_by(session_id=e.id))]
    recons = [output.item(hierarchy.RECONSTRUCTION_TYPE, _fields(reconstruction_row(r, e)),
                          [output.child("out/file", _resource_items(
                              resources_of(owner(reconstruction=r))))])
              for r in db.session.scalars(select(Reconstruction).filter_by(session_id=e.id))]
    children = [output.child("scans/scan", scans),
                output.child("assessors/assessor", assessors),
                output.child("reconstructions/reconstructedImage", recons),
                output.child("resources/resource", _resource_items(resources_of(owner())))]
    return output.item(hierarchy.session_type(e), _fields(session_row(e)),
                       [c for c in children if c["items"]])


def object_item(t: Target) -> dict:
    """Return the object a path ends on, with its children, in XNAT's JSON shape."""
    kind = t.leaf
    if kind == "projects":
        fields = _fields(project_row(t.project))
        if not access.can(t.project, access.READ):
            return output.item("xnat:projectData", fields)  # protected: title only
        return output.item("xnat:projectData", fields, [output.child(
            "resources/resource", _resource_items(resources_of(Owner(t.project))))])
    if kind == "subjects":
        s = t.subject
        sessions = db.session.scalars(select(ImagingSession).filter_by(subject_id=s.id)
                                      .order_by(ImagingSession.label))
        children = [output.child("experiments/experiment",
                                 [_session_item(e) for e in sessions]),
                    output.child("resources/resource",
                                 _resource_items(resources_of(Owner(t.project, s))))]
        return output.item("xnat:subjectData", _fields(subject_row(s)),
                           [c for c in children if c["items"]])
    if kind == "experiments":
        return _session_item(t.session)
    if kind == "scans":
        return _scan_item(t.scan, t.owner())
    if kind == "assessors":
        a = t.assessor
        return output.item(a.type, _fields(assessor_row(a, t.session)), [output.child(
            "out/file", _resource_items(resources_of(t.owner())))])
    if kind == "reconstructions":
        return output.item(hierarchy.RECONSTRUCTION_TYPE,
                           _fields(reconstruction_row(t.reconstruction, t.session)),
                           [output.child("out/file", _resource_items(resources_of(t.owner())))])
    return _resource_items([t.resource])[0]


def answer(t: Target):
    """Answer GET on a path that ends on a collection (ResultSet) or an object (items);
    several scans (scans/1,2 or scans/ALL) are a collection too."""
    if t.is_listing or (t.scans is not None and t.scan is None):
        rows, kind = collection_rows(t)
        if not t.is_listing:
            rows = [scan_row(s) for s in t.scans]
        return output.result_set(filtered(rows, request.args), COLUMNS[kind], TITLES[kind])
    return output.items(object_item(t))
