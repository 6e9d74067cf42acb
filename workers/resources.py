"""Resources: named folders of files beside a project, subject, session or scan,
or an assessor or reconstruction of a session.

A resource (NIFTI, BEHAVIOUR, PHYSIO, REPORTS, ...) is a folder in the
archive and a Resource row; each file in it is a File row with its size,
sha256, format, content, tags and, for an imaging format, the header
summary. add_files() is the one way files get into an existing resource,
for the web pages and the REST layer alike.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from flask import current_app
from sqlalchemy import delete, func, insert, select

from imaging import formats, labels, storage
from imaging.extract import ExtractError, extract_members, list_members
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
from workers.removal import commit_removing

_CHUNK = 2**20
_MAX_PATH = 1024


class ResourceError(ValueError):
    """A resource request that cannot be done; the message is for the user."""


class ResourceConflict(ResourceError):
    """Files are already there and replacing them was not asked for."""


@dataclass
class Owner:
    """What a resource belongs to: a project, and maybe a subject, a session and
    one of its scans, assessors or reconstructions."""

    project: Project
    subject: Subject | None = None
    session: ImagingSession | None = None
    scan: Scan | None = None
    assessor: Assessor | None = None
    reconstruction: Reconstruction | None = None

    def filters(self) -> dict:
        def id_of(row):
            return row.id if row is not None else None
        return {"project_id": self.project.id, "subject_id": id_of(self.subject),
                "session_id": id_of(self.session), "scan_id": id_of(self.scan),
                "assessor_id": id_of(self.assessor),
                "reconstruction_id": id_of(self.reconstruction)}

    def folder(self, data_dir) -> Path:
        """Return the folder that holds this owner's resources (DESIGN.md "On disk")."""
        base = Path(data_dir) / "archive" / self.project.label
        if self.session is not None:
            base = storage.archive_session_dir(data_dir, self.project.label,
                                               self.session.subject.label, self.session.label)
            if self.scan is not None:
                return base / "SCANS" / self.scan.scan_id
            if self.assessor is not None:
                return base / "ASSESSORS" / self.assessor.label
            if self.reconstruction is not None:
                return base / "RECONSTRUCTIONS" / self.reconstruction.label
            return base / "RESOURCES"
        if self.subject is not None:
            base = base / self.subject.label
        return base / "RESOURCES"


@dataclass
class Added:
    """What add_files did: the rows made, and a note for each file left out."""

    files: list[File] = field(default_factory=list)
    problems: list[dict] = field(default_factory=list)


def owner_of(resource: Resource) -> Owner:
    def row(model, row_id):
        return db.session.get(model, row_id) if row_id else None
    return Owner(db.session.get(Project, resource.project_id),
                 row(Subject, resource.subject_id), row(ImagingSession, resource.session_id),
                 row(Scan, resource.scan_id), row(Assessor, resource.assessor_id),
                 row(Reconstruction, resource.reconstruction_id))


def resource_dir(resource: Resource) -> Path:
    return owner_of(resource).folder(current_app.config["DATA_DIR"]) / resource.label


def resources_of(owner: Owner) -> list[Resource]:
    return list(db.session.scalars(select(Resource).filter_by(**owner.filters())
                                   .order_by(Resource.label)))


def get_or_create(owner: Owner, label: str, *, format=None, content=None, tags=None
                  ) -> Resource:
    """Return the owner's resource `label`, created (and flushed) when new.

    Raises ResourceError for a label that may not name a folder.
    """
    try:
        label = labels.check_label(label, "Resource label")
    except labels.LabelError as exc:
        raise ResourceError(str(exc)) from None
    resource = db.session.scalar(select(Resource).filter_by(label=label, **owner.filters()))
    if resource is None:
        resource = Resource(label=label, format=format or None, content=content or None,
                            tags=tags or None, **owner.filters())
        db.session.add(resource)
        db.session.flush()
    return resource


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_entry(path, name: str, fmt: str | None = None, header: dict | None = None) -> dict:
    """Return the record entry of a file: name, size, sha256, format and header."""
    return {"name": name, "size": os.path.getsize(path), "sha256": sha256_of(path),
            "format": fmt, "header": header}


def insert_files(resource_id: int, entries: list[dict], *, content=None, tags=None) -> None:
    """Insert the File rows of a resource's entries, in one statement, and recount
    the resource (no commit)."""
    if entries:
        db.session.execute(insert(File), [
            {"resource_id": resource_id, "path": e["name"], "size": e["size"],
             "sha256": e["sha256"], "format": e.get("format"), "header": e.get("header"),
             "content": content or None, "tags": tags or None} for e in entries])
    recount([resource_id])


def recount(resource_ids) -> None:
    """Set the resources' file_count and size from their File rows; every change
    of a resource's files ends with this (no commit)."""
    ids = sorted(set(resource_ids))
    if not ids:
        return
    mine = File.resource_id == Resource.id
    db.session.execute(
        sa.update(Resource).where(Resource.id.in_(ids)).values(
            file_count=select(func.count(File.id)).where(mine).scalar_subquery(),
            size=select(func.coalesce(func.sum(File.size), 0)).where(mine).scalar_subquery()),
        execution_options={"synchronize_session": "fetch"})


def check_name(name: str) -> str:
    """Return a file's path inside a resource, or raise ResourceError when unsafe:
    empty parts, "." and "..", hidden names, control characters, too long."""
    parts = name.replace("\\", "/").split("/")
    if not name or any(p in ("", ".", "..") or p.startswith(".") for p in parts) \
            or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name) or len(name) > _MAX_PATH \
            or any(len(p.encode("utf-8", "surrogateescape")) > 255 for p in parts):
        raise ResourceError(f"The file name {labels.shown(name)} cannot be stored.")
    return "/".join(parts)


def summarise(groups) -> list[tuple[list[str], str | None, dict | None, str | None]]:
    """Return, per group of formats.pair_files, (names, format, header, problem)."""
    out = []
    for group in groups:
        header, problem = None, group.error
        if group.info is not None and problem is None:
            try:
                header = formats.read_header(group.primary, group.partner, group.info)
            except (formats.FormatError, OSError) as exc:
                problem = str(exc)
        out.append((group.files, group.format, header, problem))
    return out


def add_files(resource: Resource, paths: dict[str, Path], *, content=None, tags=None,
              format=None, overwrite: bool = False) -> Added:
    """Move files into a resource's folder and index them; the caller commits.

    `paths` maps the name each file gets inside the resource to where it is
    now (on the same filesystem: files are renamed, never copied). Imaging
    files get their format and header summary (`format` given wins); a
    damaged one or a header without its data file is still stored, as a plain
    file, with a problem noted. A name already in the resource is refused (a
    problem, file left) unless `overwrite`, which replaces file and row.
    """
    target_dir = resource_dir(resource)
    taken = set(db.session.scalars(select(File.path).filter_by(resource_id=resource.id)))
    blocked = set(clashes(resource, list(paths), overwrite=True))
    names = {Path(p): n for n, p in paths.items()}
    result, entries, replaced = Added(), [], []
    for files, fmt, header, problem in summarise(formats.pair_files(list(paths.values()))):
        for n, path in enumerate(files):
            name = names[path]
            if (name in taken and not overwrite) or name in blocked:
                result.problems.append({"name": name, "reason": "a file or folder of that "
                                        "name is already in the resource; delete it first"})
                continue
            if name in taken:
                replaced.append(name)
            if problem and n == 0:
                result.problems.append({"name": name, "reason": problem})
            target = target_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
            taken.add(name)
            entries.append(file_entry(target, name, format or (None if problem else fmt),
                                      header if n == 0 else None))
    if entries:
        storage.fsync_dir(target_dir)
    if replaced:
        db.session.execute(delete(File).where(File.resource_id == resource.id,
                                              File.path.in_(replaced)))
    insert_files(resource.id, entries, content=content, tags=tags)
    db.session.flush()
    refresh_scan(resource.scan_id, resource.label)
    result.files = list(db.session.scalars(select(File).filter(
        File.resource_id == resource.id, File.path.in_([e["name"] for e in entries]))))
    return result


def clashes(resource: Resource, names: list[str], overwrite: bool = False) -> list[str]:
    """Return the names that cannot be stored: taken (unless `overwrite`), or a
    file where a folder of the resource is, or the other way round."""
    taken = set(db.session.scalars(select(File.path).filter_by(resource_id=resource.id)))
    folders = {p.rsplit("/", i)[0] for p in taken for i in range(1, p.count("/") + 1)}
    bad = []
    for name in names:
        parents = ["/".join(name.split("/")[:i]) for i in range(1, name.count("/") + 1)]
        if name in folders or any(p in taken for p in parents) or \
                (name in taken and not overwrite):
            bad.append(name)
    return bad


def add_new_files(resource: Resource, paths: dict[str, Path], *, overwrite: bool = False,
                  **options) -> Added:
    """add_files, all or nothing: raise ResourceConflict, before anything moves,
    when a name cannot be stored (taken and no `overwrite`, or a file/folder clash)."""
    names = {check_name(name): path for name, path in paths.items()}
    bad = clashes(resource, list(names), overwrite)
    if bad:
        raise ResourceConflict(
            f"{len(bad)} file(s) already exist in resource {resource.label}, e.g. "
            f"{labels.shown(bad[0])}; send overwrite=true to replace them.")
    return add_files(resource, names, overwrite=overwrite, **options)


def unpack_into(resource: Resource, archive: Path, work_dir: Path, prefix: str = "",
                **options) -> Added:
    """Unpack a zip or tar safely (imaging.extract) and add its files under `prefix`,
    all or nothing. Raises ResourceError, or ResourceConflict as add_new_files."""
    try:
        members = list_members(archive)
        unpacked = {m.name: path for m, path in extract_members(archive, members, work_dir)}
    except ExtractError as exc:
        raise ResourceError(str(exc)) from None
    if not unpacked:
        raise ResourceError("The archive holds no files.")
    return add_new_files(resource, {prefix + name: path for name, path in unpacked.items()},
                         **options)


def find(owner: Owner, ref: str) -> Resource | None:
    """Return the owner's resource named by its label, or else by its numeric id."""
    resource = None
    if labels.LABEL_RE.fullmatch(ref):
        resource = db.session.scalar(select(Resource).filter_by(label=ref, **owner.filters()))
    if resource is None and ref.isdigit() and len(ref) < 16:
        resource = db.session.scalar(select(Resource).filter_by(id=int(ref),
                                                                **owner.filters()))
    return resource


def update(resource: Resource, *, format=None, content=None, tags=None) -> None:
    """Change a resource's format, content and tags (those given)."""
    for key, value in (("format", format), ("content", content), ("tags", tags)):
        if value is not None:
            setattr(resource, key, value[:64 if key == "format" else 255] or None)


# The resources that hold a scan's own images (the rest are derived files).
SCAN_IMAGES = ("DICOM", "ECAT")


def refresh_scan(scan_id: int | None, label: str) -> None:
    """Recount a scan's images and their bytes after the files of its resource
    `label` changed (only the image resources count, as when it was archived)."""
    if not scan_id or label not in SCAN_IMAGES:
        return
    scan = db.session.get(Scan, scan_id)
    count, size = db.session.execute(
        select(func.count(File.id), func.coalesce(func.sum(File.size), 0))
        .join(Resource, Resource.id == File.resource_id)
        .where(Resource.scan_id == scan_id, Resource.label.in_(SCAN_IMAGES))).one()
    scan.instance_count, scan.size = int(count), int(size)


def delete_file(file: File) -> None:
    """Delete one file of a resource: its row (committed), then its bytes."""
    path = resource_dir(file.resource) / file.path
    scan_id, label = file.resource.scan_id, file.resource.label
    db.session.delete(file)
    db.session.flush()
    recount([file.resource_id])
    refresh_scan(scan_id, label)
    db.session.commit()
    # After the commit: a crash between the two leaves a stray file, never a
    # row without its file.
    path.unlink(missing_ok=True)


def delete_resource(resource: Resource) -> None:
    """Delete a resource: its folder goes to the trash, then its rows go; commits."""
    folder = resource_dir(resource)
    scan_id, label = resource.scan_id, resource.label
    db.session.execute(delete(File).where(File.resource_id == resource.id))
    db.session.delete(resource)
    db.session.flush()
    refresh_scan(scan_id, label)
    commit_removing(folder)
