"""Gradual imports: a sender posts a study one file per request
(``import-handler=gradual-DICOM``), and the files join one prearchive session.

Each request is an ordinary upload of a single DICOM file. When its
finishing job has planned the session, join_open_session() sends the files
to the session that an earlier gradual import of the same study made in the
same project, if that session is still open (READY, not being archived or
deleted): new series become new scans, known SOP instances are duplicates
(or quarantined when their content differs). The finishing jobs of gradual
uploads run one at a time (serialised), so two files of a study arriving
together cannot each start a session of their own.
"""
from __future__ import annotations

import functools
from pathlib import Path

from sqlalchemy import select, update

from imaging import labels, storage
from models import READY, RECEIVING, PrearchiveSession, Upload, db, utcnow
from workers import prearchive

LOCK_NAME = "scanyard:gradual-finish"
LOCK_SECONDS = 600


def is_gradual(upload: Upload) -> bool:
    return bool((upload.params or {}).get("gradual"))


def serialised(func):
    """Run a gradual upload's finishing job under a Redis lock shared by all of them."""
    @functools.wraps(func)
    def wrapper(upload_id, *args):
        upload = db.session.get(Upload, upload_id)
        gradual = upload is not None and is_gradual(upload)
        db.session.rollback()  # hold no database lock while waiting for the Redis one
        if not gradual:
            return func(upload_id, *args)
        from workers.queue import get_redis

        with get_redis().lock(LOCK_NAME, timeout=LOCK_SECONDS, blocking_timeout=LOCK_SECONDS):
            return func(upload_id, *args)
    return wrapper


def _open_session(record: dict) -> PrearchiveSession | None:
    """Return the open gradual session of the record's study and project, claimed
    (its row set to RECEIVING so that nobody archives it meanwhile), or None."""
    rows = db.session.scalars(select(PrearchiveSession).filter(
        PrearchiveSession.project_key == storage.project_key(record["project"]),
        PrearchiveSession.study_uid == record["study_uid"],
        PrearchiveSession.status.in_((READY, RECEIVING)))
        .order_by(PrearchiveSession.received.desc()))
    for ps in rows:
        existing = prearchive.load_record(ps)
        if not (existing.get("flags") or {}).get("gradual"):
            continue
        if record.get("session") and existing.get("session") != record["session"]:
            continue
        if ps.status == RECEIVING:
            # Only a gradual finishing job marks its session RECEIVING, under the
            # lock we hold: this one crashed midway, and its retry takes over.
            return ps
        claimed = db.session.execute(update(PrearchiveSession).where(
            PrearchiveSession.id == ps.id, PrearchiveSession.status == READY)
            .values(status=RECEIVING)).rowcount
        db.session.commit()
        if claimed:
            return ps
    return None


def join_open_session(upload: Upload, sessions: list, report) -> list:
    """Return the planned (record, moves) with each study that has an open gradual
    session redirected into it; new sessions are marked gradual."""
    if not is_gradual(upload):
        return sessions
    joined = []
    for record, moves in sessions:
        ps = _open_session(record)
        if ps is None:
            record.setdefault("flags", {})["gradual"] = True
            joined.append((record, moves))
            continue
        existing = prearchive.load_record(ps)
        new_moves = _merge(existing, record, moves, prearchive.session_dir(ps), report)
        existing["status"] = READY
        existing["last_modified"] = utcnow().isoformat()
        prearchive.log(existing, f"{len(new_moves)} file(s) added by upload {upload.id}")
        joined.append((existing, new_moves))
    return joined


def _merge(existing: dict, record: dict, moves: list, target: Path, report) -> list:
    """Add the record's scans and files to the existing record; return the moves
    into the existing session's folder."""
    member_of = {(t.parent.parent.name, t.name): name for name, t in moves}
    by_series = {s.get("series_uid"): s for s in existing.setdefault("scans", [])}
    taken = {s["id"] for s in existing["scans"]}
    new_moves = []
    for scan in record.get("scans", []):
        into = by_series.get(scan.get("series_uid"))
        if into is None:
            scan_id = labels.unique_scan_id(scan["id"], taken)
            taken.add(scan_id)
            into = {**scan, "id": scan_id, "files": []}
            existing["scans"].append(into)
            by_series[scan.get("series_uid")] = into
        known = {f.get("sop_uid"): f for f in into["files"] if f.get("sop_uid")}
        names = {f["name"] for f in into["files"]}
        for entry in scan.get("files", []):
            member = member_of[(scan["id"], entry["name"])]
            old = known.get(entry.get("sop_uid"))
            if old is not None:
                if old.get("dataset_sha256") == entry.get("dataset_sha256"):
                    report.duplicates += 1
                else:
                    report.quarantine(member, f"session {existing['folder']} already holds "
                                              f"SOP Instance UID {entry['sop_uid']} with "
                                              "other content")
                continue
            name = entry["name"]
            if name in names:
                name = labels.instance_filename(None, entry["sha256"])
            names.add(name)
            into["files"].append({**entry, "name": name})
            new_moves.append((member, target / "SCANS" / into["id"] / "DICOM" / name))
    return new_moves
