"""Scan snapshots: PNGs made after a session is built, kept as each scan's
SNAPSHOTS resource (``SCANS/{scan}/SNAPSHOTS/``).

The images are drawn in a scratch folder, outside any transaction, then
renamed into the session folder while the session's row is locked and
READY: archiving, deleting or moving the session waits for that short step,
so snapshots never land in a folder that is on its way elsewhere. Archiving
renames the folder, snapshots included, and indexes them.
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from flask import current_app
from sqlalchemy import select

from imaging import storage
from imaging.snapshot import make_snapshot
from models import QUEUED_ARCHIVING, READY, PrearchiveSession, db
from workers import prearchive
from workers.context import app_job

# An auto-archive job waits for the snapshots (it depends on this job).
WAITING = (READY, QUEUED_ARCHIVING)

RESOURCE = "SNAPSHOTS"
SNAPSHOT, THUMBNAIL = "snapshot.png", "thumbnail.png"
SIZES = {SNAPSHOT: 512, THUMBNAIL: 128}


def snapshot_path(scan_dir: Path, kind: str = SNAPSHOT) -> Path:
    """Return where a scan's snapshot (or thumbnail) lives, given its SCANS/{scan} folder."""
    return scan_dir / RESOURCE / kind


@app_job
def make_session_snapshots(prearchive_id: int) -> int:
    """Job: make the snapshots of a READY prearchive session's scans; return how many."""
    ps = db.session.get(PrearchiveSession, prearchive_id)
    if ps is None or ps.status not in WAITING:
        return 0
    record = prearchive.load_record(ps)
    base = prearchive.session_dir(ps)
    scans = [(s["id"], [base / "SCANS" / s["id"] / "DICOM" / f["name"] for f in s["files"]])
             for s in record.get("scans", [])]
    db.session.rollback()  # draw without holding the database
    scratch = storage.upload_dir(current_app.config["DATA_DIR"], f"snapshots-{uuid.uuid4().hex}")
    try:
        drawn = {scan_id: _draw(scratch / scan_id, paths) for scan_id, paths in scans}
        return _install(prearchive_id, drawn)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _draw(folder: Path, paths: list[Path]) -> Path | None:
    """Draw a scan's snapshot and thumbnail into `folder`; None when its files are gone."""
    existing = [str(p) for p in paths if p.exists()]
    if not existing:
        return None
    for kind, size in SIZES.items():
        make_snapshot(existing, str(folder / kind), size=size)
    return folder


def _install(prearchive_id: int, drawn: dict[str, Path | None]) -> int:
    """Rename the drawn images into the session while its row is locked and READY."""
    ps = db.session.scalar(select(PrearchiveSession).filter_by(id=prearchive_id)
                           .with_for_update())
    installed = 0
    try:
        if ps is None or ps.status not in WAITING:
            return 0
        base = prearchive.session_dir(ps)
        for scan_id, folder in drawn.items():
            scan_dir = base / "SCANS" / scan_id
            if folder is None or not scan_dir.is_dir():
                continue
            target = scan_dir / RESOURCE
            target.mkdir(exist_ok=True)  # never its parents: the session may have moved
            for kind in SIZES:
                os.replace(folder / kind, target / kind)
            storage.fsync_dir(target)
            installed += 1
    finally:
        db.session.commit()
    return installed
