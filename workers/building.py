"""The build job: read every file of a prearchive session folder and index it.

``build_session`` turns a folder that received files (from the DICOM
receiver, or any prearchive folder a rebuild points it at) into a READY
session: it reads each file's header, groups the files into scans by
SeriesInstanceUID, renames those whose scan folder changes, drops
duplicates, moves unreadable files to quarantine, and writes the record
and its row. It is idempotent: a second run finds everything in place.
Files that arrive while it runs send the session back to RECEIVING, to be
built again once it is quiet.
"""
from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import select

from imaging import dicomio, labels, routing, storage
from models import (
    ARCHIVING,
    BUILDING,
    CONFLICT,
    DELETING,
    MOVING,
    QUEUED_ARCHIVING,
    QUEUED_DELETING,
    QUEUED_MOVING,
    READY,
    RECEIVING,
    PrearchiveSession,
    db,
    new_id,
    utcnow,
)
from workers import anonymization, prearchive, queue
from workers.context import app_job
from workers.scans import Report, plan_scans, study_summary

# Another job holds the session: building it now would race with that job.
HELD_ELSEWHERE = frozenset({ARCHIVING, QUEUED_ARCHIVING, DELETING, QUEUED_DELETING, MOVING,
                            QUEUED_MOVING})


@app_job
def build_session(prearchive_id: int) -> dict | None:
    """Job: read and index one prearchive session folder; return its counts."""
    ps = db.session.get(PrearchiveSession, prearchive_id)
    if ps is None or ps.status in HELD_ELSEWHERE:
        return None
    started = utcnow()
    ps.status = BUILDING
    db.session.commit()
    folder = prearchive.session_dir(ps)
    record = prearchive.load_record(ps)
    receipt = f"build-{ps.project_key}-{ps.timestamp}-{ps.folder}-{new_id()[:6]}"
    # End the read transaction: on SQLite it holds the write lock, and the
    # receiver must go on updating rows while the files are read.
    db.session.commit()
    report = Report()
    items = _read_files(folder, report)
    scans, moves = plan_scans(items, folder, report)
    _quarantine(receipt, folder, report)
    for name in report.duplicate_names:
        (folder / name).unlink(missing_ok=True)
    _rename(folder, moves)
    _remove_empty_scan_dirs(folder)
    _update_record(record, items, scans, report)
    _apply_site_script(record, folder, receipt)
    if _finish(prearchive_id, record, started) == READY:
        _after_build(prearchive_id)
    return {"files": sum(len(s["files"]) for s in scans), "scans": len(scans),
            "duplicates": report.duplicates, "quarantined": len(report.quarantined)}


def session_files(folder: Path) -> list[str]:
    """Return the paths (relative to `folder`) of the DICOM files in a session
    folder, leaving out the receiver's temporary files (names starting with
    "."), snapshots, and the resources a scan or the session holds besides its
    DICOM (SCANS/{scan}/{resource}/ and RESOURCES/)."""
    names = []
    for root, dirs, files in os.walk(folder):
        rel = Path(root).relative_to(folder).parts
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not _other_resource(
            rel + (d,)))
        names.extend(os.path.relpath(os.path.join(root, f), folder)
                     for f in sorted(files) if not f.startswith("."))
    return names


def _other_resource(parts: tuple[str, ...]) -> bool:
    """True for a folder that holds something else than a scan's DICOM files."""
    if parts[0] == "RESOURCES" or "SNAPSHOTS" in parts:
        return True
    return len(parts) == 3 and parts[0] == "SCANS" and parts[2] != "DICOM"


def _read_files(folder: Path, report: Report) -> list:
    items = []
    for name in session_files(folder):
        try:
            items.append((name, dicomio.read_dicom(folder / name)))
        except dicomio.NotDicom as exc:
            report.quarantine(name, str(exc))
    return items


def _quarantine(receipt: str, folder: Path, report: Report) -> None:
    if not report.quarantined:
        return
    qdir = storage.quarantine_dir(prearchive.data_dir(), receipt)
    for entry in report.quarantined:
        src = folder / entry["name"]
        if src.exists():
            storage.move_into(src, qdir / entry["name"])
    storage.write_json_atomic(qdir / "reasons.json", report.quarantined)
    report.messages.append(f"{len(report.quarantined)} file(s) moved to quarantine/"
                           f"{qdir.name}")


def _rename(folder: Path, moves) -> None:
    """Move files to their scan folders; a file already in place stays."""
    dirs = set()
    for name, target in moves:
        src = folder / name
        if src == target:
            continue
        if target.exists():
            raise RuntimeError(f"{target} exists; the session folder needs a look.")
        if target.parent not in dirs:
            target.parent.mkdir(parents=True, exist_ok=True)
            dirs.add(target.parent)
        os.rename(src, target)
        dirs.add(src.parent)
    for d in dirs:
        if d.exists():
            storage.fsync_dir(d)


def _remove_empty_scan_dirs(folder: Path) -> None:
    scans = folder / "SCANS"
    if scans.is_dir():
        for scan in scans.iterdir():
            storage.remove_empty_parents(scan / "DICOM", scans)


def _update_record(record: dict, items, scans: list, report: Report) -> None:
    first = min((info for _name, info in items), key=_first_key, default=None)
    if first is not None:
        record["study"] = study_summary(first)
        record["study_uid"] = record.get("study_uid") or first.study_uid
        if not record.get("scan_date") and first.study_date:
            record["scan_date"] = first.study_date.isoformat()
        if not record.get("subject") or not record.get("session"):
            _fill_labels(record, first)
    record["scans"] = scans
    record["message"] = None
    counts = (f"{sum(len(s['files']) for s in scans)} files in {len(scans)} scans, "
              f"{report.duplicates} duplicate(s), {len(report.quarantined)} quarantined")
    prearchive.log(record, f"built: {counts}")
    for message in report.messages:
        prearchive.log(record, message)


def _first_key(info):
    return (info.series_number or "", info.instance_number or 0, info.sop_uid or "")


def _fill_labels(record: dict, info) -> None:
    """Give a record without labels (a folder found on disk) the header's."""
    header = {routing.PATIENT_NAME: info.patient_name, routing.PATIENT_ID: info.patient_id,
              routing.STUDY_DESCRIPTION: info.study_description,
              routing.PATIENT_COMMENTS: info.patient_comments,
              routing.STUDY_COMMENTS: info.study_comments,
              routing.ADDITIONAL_PATIENT_HISTORY: info.additional_patient_history}
    ident = routing.identify(header)
    record["subject"] = record.get("subject") or ident.subject
    record["session"] = record.get("session") or labels.label_from_header(
        ident.session, record["folder"])


def _apply_site_script(record: dict, folder: Path, receipt: str) -> None:
    """Run the site's anonymization script on the files before the session is READY
    (routing read the original headers; files already rewritten are skipped)."""
    script = anonymization.active_script(anonymization.SITE)
    if script is None:
        return

    def path_of(scan, entry):
        return folder / "SCANS" / scan["id"] / "DICOM" / entry["name"]

    changed, rejected = anonymization.anonymize_record(script, record, path_of)
    anonymization.quarantine(receipt, [
        (path, f"{scan['id']}/{entry['name']}",
         f"rejected by the site anonymization script: {why}")
        for scan, entry, path, why in rejected])
    if changed or rejected:
        prearchive.log(record, f"site anonymization script: {changed} file(s) changed, "
                               f"{len(rejected)} rejected")


def _after_build(prearchive_id: int) -> None:
    """Snapshots, then the archive job when the project or the data ask for it."""
    ps = db.session.get(PrearchiveSession, prearchive_id)
    if ps is not None:
        prearchive.auto_archive(ps, after=queue.enqueue_make_snapshots(ps.id))


def _finish(prearchive_id: int, record: dict, started) -> str | None:
    """Save the record and its row as READY, or RECEIVING when files arrived
    during the build; the row is locked so that the receiver's count updates
    wait for this decision."""
    ps = db.session.scalar(select(PrearchiveSession).where(
        PrearchiveSession.id == prearchive_id).with_for_update())
    if ps is None:
        db.session.rollback()
        return None
    arrived = ps.last_modified is not None and ps.last_modified > started
    record["status"] = RECEIVING if arrived else CONFLICT if record.get("conflicts") else READY
    if record.get("conflicts") and not arrived:
        record["message"] = "; ".join(record["conflicts"])
    record["last_modified"] = (ps.last_modified if arrived else utcnow()).isoformat()
    if arrived:
        prearchive.log(record, "more instances arrived while building; built again later")
    prearchive.save_record(record)
    prearchive.index_record(record, ps)
    ps.job_id = None
    db.session.commit()
    return record["status"]
