"""Compare the database with the disk, reading only: what `flask verify` prints."""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from flask import current_app
from sqlalchemy import select

from imaging import storage
from models import (
    Assessor,
    File,
    ImagingSession,
    PrearchiveSession,
    Project,
    Reconstruction,
    Resource,
    Scan,
    Subject,
    db,
)

CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def resource_folder(resource: Resource) -> Path:
    """Return the folder of a resource row on disk."""
    def label(model, row_id):
        return db.session.get(model, row_id).label if row_id else None

    scan = db.session.get(Scan, resource.scan_id).scan_id if resource.scan_id else None
    return storage.resource_dir(
        current_app.config["DATA_DIR"], resource.label, label(Project, resource.project_id),
        subject=label(Subject, resource.subject_id),
        session=label(ImagingSession, resource.session_id), scan=scan,
        assessor=label(Assessor, resource.assessor_id),
        reconstruction=label(Reconstruction, resource.reconstruction_id))


def verify(check_hashes: bool = True) -> Iterator[str]:
    """Yield one line per difference between the index and the files on disk."""
    data_dir = Path(current_app.config["DATA_DIR"])
    known: set[Path] = set()
    for resource in db.session.scalars(select(Resource).order_by(Resource.id)):
        folder = resource_folder(resource)
        for row in db.session.scalars(select(File).filter_by(resource_id=resource.id)):
            path = folder / row.path
            known.add(path)
            yield from _check_file(path, row, data_dir, check_hashes)
    archive = data_dir / "archive"
    for path in sorted(archive.rglob("*")):
        if path.is_file() and path not in known and storage.TRASH not in path.parts:
            yield f"orphan file (on disk, not in the database): {path.relative_to(data_dir)}"
    yield from _check_prearchive(data_dir)


def _check_file(path: Path, row: File, data_dir: Path, check_hashes: bool) -> Iterator[str]:
    rel = path.relative_to(data_dir)
    if not path.is_file():
        yield f"missing file (in the database, not on disk): {rel}"
        return
    size = path.stat().st_size
    if size != row.size:
        yield f"size differs: {rel}: database {row.size}, disk {size}"
    elif check_hashes and sha256_of(path) != row.sha256:
        yield f"sha256 differs: {rel}"


def _check_prearchive(data_dir: Path) -> Iterator[str]:
    root = storage.prearchive_root(data_dir)
    rows = {ps.relpath: ps for ps in db.session.scalars(select(PrearchiveSession))}
    on_disk = {str(p.relative_to(root))[:-5] for p in root.glob("*/*/*.json")}
    for rel in sorted(set(rows) - on_disk):
        yield f"prearchive session without its record on disk: {rel}"
    for rel in sorted(on_disk - set(rows)):
        yield f"prearchive record without a database row (run rebuild): {rel}"
    for rel in sorted(on_disk):
        if not (root / rel).is_dir():
            yield f"prearchive record without its folder: {rel}"
