"""Resources: named folders of files beside a project, subject, session or scan.

A resource (NIFTI, BEHAVIOUR, PHYSIO, REPORTS, ...) is a folder in the
archive and a Resource row; each file in it is a File row with its size,
sha256, format, content, tags and, for an imaging format, the header
summary. add_files() is the one way files get into an existing resource,
for the web pages and the REST layer alike.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from flask import current_app
from sqlalchemy import delete, func, insert, select

from imaging import formats, labels, storage
from models import File, ImagingSession, Project, Resource, Scan, Subject, db

_CHUNK = 2**20


class ResourceError(ValueError):
    """A resource request that cannot be done; the message is for the user."""


@dataclass
class Owner:
    """What a resource belongs to: a project, and maybe a subject, session and scan."""

    project: Project
    subject: Subject | None = None
    session: ImagingSession | None = None
    scan: Scan | None = None

    def filters(self) -> dict:
        return {"project_id": self.project.id,
                "subject_id": self.subject.id if self.subject else None,
                "session_id": self.session.id if self.session else None,
                "scan_id": self.scan.id if self.scan else None}

    def folder(self, data_dir) -> Path:
        """Return the folder that holds this owner's resources (DESIGN.md "On disk")."""
        base = Path(data_dir) / "archive" / self.project.label
        if self.session is not None:
            base = storage.archive_session_dir(data_dir, self.project.label,
                                               self.session.subject.label, self.session.label)
            return base / "SCANS" / self.scan.scan_id if self.scan else base / "RESOURCES"
        if self.subject is not None:
            base = base / self.subject.label
        return base / "RESOURCES"


@dataclass
class Added:
    """What add_files did: the rows made, and a note for each file left out."""

    files: list[File] = field(default_factory=list)
    problems: list[dict] = field(default_factory=list)


def owner_of(resource: Resource) -> Owner:
    return Owner(db.session.get(Project, resource.project_id),
                 db.session.get(Subject, resource.subject_id) if resource.subject_id else None,
                 db.session.get(ImagingSession, resource.session_id)
                 if resource.session_id else None,
                 db.session.get(Scan, resource.scan_id) if resource.scan_id else None)


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
    """Return a file's path inside a resource, or raise ResourceError when unsafe."""
    parts = name.replace("\\", "/").split("/")
    if not name or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
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


def add_files(resource: Resource, paths: dict[str, Path], *, content=None, tags=None
              ) -> Added:
    """Move files into a resource's folder and index them; the caller commits.

    `paths` maps the name each file gets inside the resource to where it is
    now (on the same filesystem: files are renamed, never copied). Imaging
    files get their format and header summary; a damaged one or a header
    without its data file is still stored, as a plain file, with a problem
    noted. A name already in the resource is refused (a problem, file left).
    """
    target_dir = resource_dir(resource)
    taken = set(db.session.scalars(select(File.path).filter_by(resource_id=resource.id)))
    names = {Path(p): n for n, p in paths.items()}
    result, entries = Added(), []
    for files, fmt, header, problem in summarise(formats.pair_files(list(paths.values()))):
        for n, path in enumerate(files):
            name = names[path]
            if name in taken:
                result.problems.append({"name": name, "reason": "a file of that name is "
                                        "already in the resource; delete it first"})
                continue
            if problem and n == 0:
                result.problems.append({"name": name, "reason": problem})
            target = target_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
            taken.add(name)
            entries.append(file_entry(target, name, None if problem else fmt,
                                      header if n == 0 else None))
    if entries:
        storage.fsync_dir(target_dir)
    insert_files(resource.id, entries, content=content, tags=tags)
    db.session.flush()
    result.files = list(db.session.scalars(select(File).filter(
        File.resource_id == resource.id, File.path.in_([e["name"] for e in entries]))))
    return result


def delete_file(file: File) -> None:
    """Delete one file of a resource: its row (committed), then its bytes."""
    path = resource_dir(file.resource) / file.path
    db.session.delete(file)
    db.session.flush()
    recount([file.resource_id])
    db.session.commit()
    # After the commit: a crash between the two leaves a stray file, never a
    # row without its file.
    path.unlink(missing_ok=True)


def delete_resource(resource: Resource) -> None:
    """Delete a resource: its folder goes to the trash, then its rows go; commits."""
    folder = resource_dir(resource)
    db.session.execute(delete(File).where(File.resource_id == resource.id))
    db.session.delete(resource)
    trashed = storage.to_trash(folder)
    try:
        db.session.commit()
    except Exception:
        db.session.rollback()
        if trashed is not None:
            storage.move_into(trashed, folder)
        raise
    if trashed is not None:
        shutil.rmtree(trashed, ignore_errors=True)
