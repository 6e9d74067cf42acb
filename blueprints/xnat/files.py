"""Files of resources: stored from a request body, listed, streamed, zipped.

A file arrives as the raw body (``inbody=true``, or any body that is not
multipart) or as the files of a multipart form; either way it is written
into ``uploads/`` while it streams (blueprints.streaming) and then renamed
into the resource's folder. ``extract=true`` unpacks a zip or tar into the
resource instead.
"""
from __future__ import annotations

from pathlib import Path

from flask import abort, request, send_file

from blueprints import audit, streaming
from blueprints.xnat import listing, output
from blueprints.xnat.paths import Target
from blueprints.zipstream import zip_response
from imaging.extract import ExtractError, archive_kind
from models import Resource, db
from workers import resources
from workers.resources import Owner, ResourceConflict, ResourceError


def _flag(name: str) -> bool:
    return (request.args.get(name) or "").lower() in ("true", "1", "yes")


def _bodies(t: Target) -> dict[str, Path]:
    """Return {name in the resource: where the body is stored} for this request."""
    name = t.ref
    multipart = request.mimetype == "multipart/form-data" and not _flag("inbody")
    if multipart:
        parts = [f for f in request.files.values() if f.filename]
        if not parts:
            abort(400, "The multipart body holds no file.")
        if name and len(parts) == 1:
            return {name: streaming.stored_path(parts[0])}
        prefix = f"{name}/" if name else ""
        return {prefix + (f.filename or "").replace("\\", "/").rsplit("/", 1)[-1]:
                streaming.stored_path(f) for f in parts}
    if not name:
        abort(400, "Name the file in the path: .../files/{name}, or send a multipart form.")
    return {name: streaming.save_body(name.rsplit("/", 1)[-1])}


def _resource_for(t: Target) -> Resource:
    """Return the resource the files go into, created when the path names a new one."""
    if t.missing is not None:
        return resources.get_or_create(t.owner(), t.missing)
    if t.resource is None:
        abort(400, "Name one resource to store files in.")
    return t.resource


def _store(t: Target) -> list[resources.Added]:
    options = {"overwrite": _flag("overwrite"), "format": request.args.get("format"),
               "content": request.args.get("content"), "tags": request.args.get("tags")}
    for key in ("format", "content", "tags"):
        if options[key] is not None:
            options[key] = options[key][:255] or None
    for name in ([t.ref] if t.ref else []):
        resources.check_name(name)  # before the body is read
    bodies = _bodies(t)
    resource = _resource_for(t)
    if not _flag("extract"):
        return [resources.add_new_files(resource, bodies, **options)]
    added = []
    for n, (name, path) in enumerate(bodies.items()):
        try:
            archive_kind(path)
        except ExtractError:
            added.append(resources.add_new_files(resource, {name: path}, **options))
            continue
        prefix = name.rsplit("/", 1)[0] + "/" if "/" in name else ""
        work = streaming.upload_folder() / f"unpacked-{n}"
        added.append(resources.unpack_into(resource, path, work, prefix, **options))
    return added


def store(t: Target):
    """Store the request's file(s) in the resource; answer 200 (with the problems
    noted, if any), 400 or 409."""
    try:
        added = _store(t)
    except ResourceConflict as exc:
        db.session.rollback()
        abort(409, str(exc))
    except ResourceError as exc:
        db.session.rollback()
        abort(400, str(exc))
    stored = [f.path for a in added for f in a.files]
    audit.record("upload", project=t.project.label, target=request.path, files=len(stored))
    db.session.commit()
    # What was stored with a problem (a damaged image header, ...) is said, one per line.
    return output.plain("".join(f"{p['name']}: {p['reason']}\n"
                                for a in added for p in a.problems))


def _zip_prefix(owner: Owner, resource: Resource) -> str:
    """Return where a resource's files go in a zip: XNAT's
    ``{session}/scans/{scan}/resources/{label}/files/``."""
    if owner.session is None:
        top = owner.subject.label if owner.subject else owner.project.label
        return f"{top}/resources/{resource.label}/files/"
    base = owner.session.label
    if owner.scan is not None:
        base += f"/scans/{owner.scan.scan_id}"
    elif owner.assessor is not None:
        base += f"/assessors/{owner.assessor.label}"
    elif owner.reconstruction is not None:
        base += f"/reconstructions/{owner.reconstruction.label}"
    return f"{base}/resources/{resource.label}/files/"


def _zip_name(t: Target) -> str:
    for row in (t.resource, t.reconstruction, t.assessor, t.scan, t.session, t.subject,
                t.project):
        if row is not None:
            return f"{row.label if hasattr(row, 'label') else row.scan_id}.zip"
    return "files.zip"


def _entries(found: list[Resource]) -> list[tuple[str, Path]]:
    entries = []
    for resource in found:
        owner = resources.owner_of(resource)
        folder = resources.resource_dir(resource)
        prefix = _zip_prefix(owner, resource)
        entries += [(prefix + f.path, folder / f.path) for f in resource.files]
    return entries


def download(t: Target):
    """Answer a files path: one file's bytes, the listing, or a zip of them all."""
    if t.file is not None:
        path = resources.resource_dir(t.resource) / t.file.path
        if not path.is_file():
            abort(404, f"The file {t.file.path} is indexed but missing on disk.")
        return send_file(path, download_name=path.name, conditional=True,
                         mimetype=None if "." in path.name else "application/octet-stream")
    fmt = output.wanted_format(("json", "csv", "zip"))
    if fmt == "zip":
        return zip_response(_entries(listing.reached_resources(t)), _zip_name(t))
    rows = listing.filtered(listing.file_rows(listing.reached_resources(t)), request.args)
    return output.result_set(rows, listing.COLUMNS["files"], listing.TITLES["files"])
