"""An upload of a study that already waits in the prearchive joins that session.

DESIGN.md: files for a study that is still RECEIVING or READY in the
prearchive join that session (the DICOM receiver does the same); a session
being archived or moved is left alone and the upload makes a new one.

Each incoming instance is compared with what the session holds:
- the same SOP Instance UID with the same dataset bytes (or in another
  transfer syntax) is a duplicate: counted, not stored twice;
- the same UID and syntax with other bytes is a conflict: the new copy goes
  to quarantine with the reason and the session is marked CONFLICT, unless
  the upload said overwrite, when it replaces the old copy.
The session is then built again, which regroups its scans.
"""
from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import select

from imaging import labels, storage
from models import (
    CONFLICT,
    QUEUED_BUILDING,
    READY,
    RECEIVING,
    PrearchiveSession,
    Upload,
    db,
    utcnow,
)
from workers import prearchive
from workers.receiving import lock_study

# A CONFLICT session is joined too: an upload with overwrite is how its
# conflicts are resolved.
JOINABLE = (RECEIVING, READY, CONFLICT)


def join_existing(upload: Upload, sessions, source_of, report):
    """Move the files of planned sessions whose study waits in the prearchive
    into that session. Returns (sessions still to create, sessions joined)."""
    kept, joined = [], []
    for record, moves in sessions:
        target = _joinable(record)
        if target is None:
            kept.append((record, moves))
            continue
        _join(upload, record, moves, target, source_of, report)
        joined.append(target)
    return kept, joined


def _joinable(record: dict) -> PrearchiveSession | None:
    plain_dicom = record.get("study_uid") and not record.get("resources") and all(
        s.get("resource", "DICOM") == "DICOM" and not s.get("resources")
        for s in record.get("scans", []))
    if not plain_dicom:
        return None
    # Held until the job commits: a receiver or another upload of the study
    # waits, then finds the session this one joins or makes.
    lock_study((storage.project_key(record["project"]), record["study_uid"]))
    return db.session.scalar(
        select(PrearchiveSession)
        .where(PrearchiveSession.project_key == storage.project_key(record["project"]),
               PrearchiveSession.study_uid == record["study_uid"],
               PrearchiveSession.status.in_(JOINABLE))
        .order_by(PrearchiveSession.id.desc()).limit(1))


def _overwrite(upload: Upload) -> bool:
    return str(upload.params.get("overwrite", "")).lower() in ("true", "append", "delete")


def _join(upload, record, moves, target, source_of, report) -> None:
    held = prearchive.load_record(target)
    folder = prearchive.session_dir(target)
    known = {f["sop_uid"]: (s["id"], f) for s in held.get("scans", [])
             for f in s.get("files", []) if f.get("sop_uid")}
    scan_of_series = {s.get("series_uid"): s["id"] for s in held.get("scans", [])}
    taken = set(scan_of_series.values())
    member = {(Path(t).parent.parent.name, Path(t).name): name for name, t in moves}
    conflicts = []
    for scan in record.get("scans", []):
        scan_id = scan_of_series.get(scan.get("series_uid"))
        if scan_id is None:
            scan_id = labels.unique_scan_id(scan["id"], taken)
            taken.add(scan_id)
            scan_of_series[scan.get("series_uid")] = scan_id
        for f in scan.get("files", []):
            name = member[(scan["id"], f["name"])]
            dest = folder / "SCANS" / scan_id / "DICOM" / f["name"]
            held_copy = known.get(f.get("sop_uid"))
            if held_copy is not None:
                verdict = _compare(f, held_copy[1])
                if verdict == "duplicate":
                    report.duplicates += 1
                    continue
                if not _overwrite(upload):
                    reason = (f"instance {f['sop_uid']} is in session {target.relpath} with "
                              "other bytes; upload it again with overwrite to replace it")
                    report.quarantine(name, reason)
                    conflicts.append(reason)
                    continue
                dest = folder / "SCANS" / held_copy[0] / "DICOM" / held_copy[1]["name"]
                held["conflicts"] = [c for c in held.get("conflicts", [])
                                     if f["sop_uid"] not in c]
                report.messages.append(f"{name}: replaced instance {f['sop_uid']} of "
                                       f"{target.relpath}")
            _move(source_of(name), dest)
            report.stored += 1
    _note(target, held, upload, conflicts)


def _compare(incoming: dict, held: dict) -> str:
    if incoming.get("dataset_sha256") == held.get("dataset_sha256"):
        return "duplicate"
    if incoming.get("transfer_syntax") != held.get("transfer_syntax"):
        return "duplicate"  # the same instance in another syntax: the first is kept
    return "conflict"


def _move(src: Path, dest: Path) -> None:
    if not src.exists():
        return  # moved by an earlier run of the job
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dest)
    storage.fsync_dir(dest.parent)


def _note(target: PrearchiveSession, held: dict, upload: Upload, conflicts: list) -> None:
    prearchive.log(held, f"joined by upload {upload.id}")
    if conflicts:
        held["conflicts"] = sorted(set(held.get("conflicts", []) + conflicts))
    held["last_modified"] = utcnow().isoformat()
    prearchive.save_record(held)
    target.last_modified = utcnow()


def rebuild_joined(targets: list[PrearchiveSession]) -> None:
    """Build the joined sessions again (a RECEIVING one is built when it is quiet)."""
    from workers import queue

    for ps in {t.id: t for t in targets}.values():
        if ps.status in (READY, CONFLICT):
            ps.status = QUEUED_BUILDING
            db.session.commit()
            ps.job_id = queue.enqueue_build_session(ps.id).id
            db.session.commit()
