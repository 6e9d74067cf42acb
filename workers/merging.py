"""Archiving into a session that already exists: `append` merges scans and
files into it, `delete` replaces it.

Rules for `append` (XNAT's, and the ones its users asked for):
- a scan with the same SeriesInstanceUID and number merges into the archived one;
- the same number with another SeriesInstanceUID is renumbered (``3`` -> ``3-2``);
- the same SeriesInstanceUID under another number is a conflict;
- a change of modality is a conflict (``delete`` replaces the session instead);
- an instance already archived with the same dataset bytes is a duplicate and
  is not stored twice; in another transfer syntax it is a duplicate too, the
  archived copy is kept; the same UID and syntax with other bytes is a conflict.

Both modes write their plan into the prearchive record before they move a
file, and each step can run again: a crash anywhere is finished by running
the job again.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from flask import current_app
from sqlalchemy import select

from imaging import labels, storage
from models import File, ImagingSession, Resource, Scan, db
from workers.faults import crash_point


class ArchiveConflict(Exception):
    """The session cannot be merged as it is; `reasons` says what clashes."""

    def __init__(self, reasons: list[str]):
        super().__init__("; ".join(reasons))
        self.reasons = reasons


@dataclasses.dataclass
class MergePlan:
    scan_ids: dict[str, str]       # incoming scan id -> scan id in the archive
    skip: dict[str, list[str]]     # incoming scan id -> file names not moved (duplicates)
    messages: list[str]

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _archived_instances(session: ImagingSession) -> dict[str, tuple]:
    """Return SOP Instance UID -> (scan id, dataset sha256, transfer syntax)."""
    rows = db.session.execute(
        select(File.sop_instance_uid, Scan.scan_id, File.dataset_sha256, File.transfer_syntax)
        .join(Resource, Resource.id == File.resource_id).join(Scan, Scan.id == Resource.scan_id)
        .where(Scan.session_id == session.id, File.sop_instance_uid.isnot(None)))
    return {uid: (scan, digest, syntax) for uid, scan, digest, syntax in rows}


def plan_append(session: ImagingSession, record: dict) -> MergePlan:
    """Work out how the record's scans merge into the archived session.

    Raises ArchiveConflict listing every clash.
    """
    scans = {s.scan_id: s for s in session.scans}
    by_uid = {s.series_uid: s for s in session.scans if s.series_uid}
    instances = _archived_instances(session)
    taken = set(scans)
    plan = MergePlan(scan_ids={}, skip={}, messages=[])
    conflicts: list[str] = []
    incoming_modality = (record.get("study") or {}).get("modality")
    if session.modality and incoming_modality and incoming_modality != session.modality:
        conflicts.append(f"the session is {session.modality} and the upload is "
                         f"{incoming_modality}; a change of modality needs overwrite=delete")
    for scan in record.get("scans", []):
        target = _target_scan(scan, scans, by_uid, taken, plan, conflicts)
        if target is None:
            continue
        plan.scan_ids[scan["id"]] = target
        for f in scan.get("files", []):
            verdict = _compare(f, instances.get(f.get("sop_uid")), target)
            if verdict == "new":
                continue
            if verdict == "conflict":
                conflicts.append(
                    f"instance {f['sop_uid']} of scan {scan['id']} differs from the archived "
                    "copy (same transfer syntax, other bytes)")
                continue
            plan.skip.setdefault(scan["id"], []).append(f["name"])
            if verdict == "other syntax":
                plan.messages.append(
                    f"instance {f['sop_uid']} is archived already in another transfer syntax; "
                    "the archived copy is kept")
    if conflicts:
        raise ArchiveConflict(conflicts)
    dups = sum(len(v) for v in plan.skip.values())
    if dups:
        plan.messages.append(f"{dups} instance(s) were archived already and are not stored "
                             "twice")
    return plan


def _target_scan(scan, scans, by_uid, taken, plan, conflicts) -> str | None:
    same_uid = by_uid.get(scan.get("series_uid"))
    if same_uid is not None:
        if same_uid.scan_id != scan["id"]:
            conflicts.append(
                f"scan {scan['id']} has the SeriesInstanceUID of archived scan "
                f"{same_uid.scan_id}")
            return None
        if same_uid.modality and scan.get("modality") and same_uid.modality != scan["modality"]:
            conflicts.append(f"scan {scan['id']} changes modality from {same_uid.modality} to "
                             f"{scan['modality']}")
            return None
        return scan["id"]
    if scan["id"] in scans:
        new_id = labels.unique_scan_id(scan["id"], taken)
        taken.add(new_id)
        plan.messages.append(f"scan {scan['id']} is another series than archived scan "
                             f"{scan['id']}: archived as scan {new_id}")
        return new_id
    taken.add(scan["id"])
    return scan["id"]


def _compare(f: dict, archived: tuple | None, target: str) -> str:
    if archived is None:
        return "new"
    _scan, digest, syntax = archived
    if digest == f.get("dataset_sha256"):
        return "duplicate"
    if syntax != f.get("transfer_syntax"):
        return "other syntax"
    return "conflict"


def move_appended(src: Path, dst: Path, record: dict, plan: dict) -> None:
    """Rename the record's files into the archived session's folder (idempotent)."""
    dirs = set()
    for scan in record.get("scans", []):
        target = plan["scan_ids"].get(scan["id"])
        if target is None:
            continue
        skip = set(plan["skip"].get(scan["id"], []))
        resource = scan.get("resource") or "DICOM"
        for f in scan.get("files", []):
            if f["name"] in skip:
                continue
            a = src / "SCANS" / scan["id"] / resource / f["name"]
            b = dst / "SCANS" / target / resource / f["name"]
            if a.exists():
                b.parent.mkdir(parents=True, exist_ok=True)
                os.replace(a, b)
                dirs.add(b.parent)
                crash_point("append")
    for d in dirs:
        storage.fsync_dir(d)


def replaced_path(ps_id: int) -> Path:
    """Where the archived session being replaced waits until the new one is indexed."""
    return storage.trash_dir(current_app.config["DATA_DIR"]) / f"replaced-{ps_id}"


def set_aside(dst: Path, ps_id: int) -> None:
    """Move the session being replaced out of the way (idempotent)."""
    aside = replaced_path(ps_id)
    if dst.exists() and not aside.exists():
        storage.move_into(dst, aside)


def drop_aside(ps_id: int) -> None:
    shutil.rmtree(replaced_path(ps_id), ignore_errors=True)
