"""The prearchive's tools for fixing broken uploads: move a session to another
project, merge two sessions of one study, reset a session stuck after a crash.

Each runs as a job on sessions marked QUEUED_MOVING, writes what it is about
to do into the records first, and can run again after a crash without doing
anything twice.
"""
from __future__ import annotations

import os

from sqlalchemy import select

from imaging import labels, storage
from models import (
    CONFLICT,
    MOVING,
    QUEUED_BUILDING,
    QUEUED_MOVING,
    READY,
    TRANSIENT_STATUSES,
    PrearchiveSession,
    Project,
    db,
    utcnow,
)
from workers import prearchive
from workers.context import app_job


def request_move(ps: PrearchiveSession, project: str | None) -> None:
    """Queue the move of a session to another project's prearchive (None: unassigned)."""
    from workers import queue

    prearchive.check_idle(ps, "moved")
    if project is not None and not db.session.scalar(select(Project.id).filter_by(
            label=project)):
        raise prearchive.Busy(f"Project {project!r} does not exist.")
    if project == ps.project:
        raise prearchive.Busy(f"The session is in project {project or 'unassigned'} already.")
    record = prearchive.load_record(ps)
    record["moving_to"] = project
    prearchive.save_record(record)
    ps.status = QUEUED_MOVING
    db.session.commit()
    ps.job_id = queue.enqueue_prearchive_tool("move_session", ps.id, project).id
    db.session.commit()


@app_job
def move_session(prearchive_id: int, project: str | None) -> None:
    """Job: move a prearchive session's folder and record to another project."""
    ps = db.session.get(PrearchiveSession, prearchive_id)
    if ps is None or ps.status not in (QUEUED_MOVING, MOVING):
        return
    ps.status = MOVING
    db.session.commit()
    _back(ps, prearchive.move_to_project(ps, project))


def request_merge(source: PrearchiveSession, target: PrearchiveSession) -> None:
    """Queue the merge of `source` into `target` (two partial uploads of one study)."""
    from workers import queue

    if source.id == target.id:
        raise prearchive.Busy("A session cannot be merged into itself.")
    prearchive.check_idle(source, "merged")
    prearchive.check_idle(target, "merged into")
    if source.project != target.project:
        raise prearchive.Busy("Both sessions must be in the same project; move one first.")
    for ps, key, other in ((source, "merge_target", target), (target, "merge_source", source)):
        record = prearchive.load_record(ps)
        record[key] = other.id
        prearchive.save_record(record)
    source.status = target.status = QUEUED_MOVING
    db.session.commit()
    source.job_id = target.job_id = queue.enqueue_prearchive_tool(
        "merge_sessions", source.id, target.id).id
    db.session.commit()


@app_job
def merge_sessions(source_id: int, target_id: int) -> None:
    """Job: move every file of one prearchive session into another, then drop the first."""
    source = db.session.get(PrearchiveSession, source_id)
    target = db.session.get(PrearchiveSession, target_id)
    if target is None or target.status not in (QUEUED_MOVING, MOVING):
        return
    if source is None:  # an earlier run finished the move; only the status is left
        record = prearchive.load_record(target)
        record.pop("merge_source", None)
        prearchive.save_record(record)
        _back(target, record.get("status") or READY)
        return
    source.status = target.status = MOVING
    db.session.commit()
    src_record, dst_record = prearchive.load_record(source), prearchive.load_record(target)
    plan = src_record.get("merging_into") or _merge_plan(src_record, dst_record)
    src_record["merging_into"] = plan
    prearchive.save_record(src_record)
    _move_files(prearchive.session_dir(source), prearchive.session_dir(target), plan)
    conflicts = _apply_plan(src_record, dst_record, plan)
    prearchive.log(dst_record, f"merged {source.relpath} into this session"
                   + (f"; {len(plan['duplicates'])} duplicate(s)" if plan["duplicates"] else ""))
    dst_record["last_modified"] = utcnow().isoformat()
    dst_record.pop("merge_source", None)
    if conflicts:
        dst_record["status"] = CONFLICT
        dst_record["conflicts"] = conflicts
        dst_record["message"] = "; ".join(conflicts)
    prearchive.save_record(dst_record)
    prearchive.index_record(dst_record, target)
    target.status = dst_record.get("status") or READY
    prearchive.delete_files(source)
    db.session.delete(source)
    db.session.commit()


def _merge_plan(src: dict, dst: dict) -> dict:
    """Map each scan of `src` to a scan of `dst`, and find its duplicates."""
    by_uid = {s.get("series_uid"): s for s in dst.get("scans", [])}
    taken = {s["id"] for s in dst.get("scans", [])}
    known = {f.get("sop_uid"): (f.get("dataset_sha256"), f.get("transfer_syntax"))
             for s in dst.get("scans", []) for f in s.get("files", []) if f.get("sop_uid")}
    plan = {"scans": {}, "duplicates": [], "conflicts": []}
    for scan in src.get("scans", []):
        same = by_uid.get(scan.get("series_uid"))
        if same is not None:
            target = same["id"]
        else:
            target = labels.unique_scan_id(scan["id"], taken)
            taken.add(target)
        plan["scans"][scan["id"]] = target
        for f in scan.get("files", []):
            other = known.get(f.get("sop_uid"))
            if other is None:
                continue
            if other[0] == f.get("dataset_sha256") or other[1] != f.get("transfer_syntax"):
                plan["duplicates"].append([scan["id"], f["name"]])
            else:
                plan["conflicts"].append(
                    f"instance {f['sop_uid']} is in both sessions with other bytes; the "
                    "copy of the session merged in was not kept")
                plan["duplicates"].append([scan["id"], f["name"]])
    return plan


def _move_files(src_dir, dst_dir, plan: dict) -> None:
    skip = {tuple(d) for d in plan["duplicates"]}
    for scan_id, target in plan["scans"].items():
        folder = src_dir / "SCANS" / scan_id
        if not folder.is_dir():
            continue
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = path.relative_to(folder)
            if (scan_id, path.name) in skip or rel.parts[0] == "SNAPSHOTS":
                continue
            dest = dst_dir / "SCANS" / target / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)


def _apply_plan(src: dict, dst: dict, plan: dict) -> list[str]:
    """Add the source's scan entries to the target record; return the conflicts."""
    skip = {tuple(d) for d in plan["duplicates"]}
    scans = {s["id"]: s for s in dst.setdefault("scans", [])}
    for scan in src.get("scans", []):
        target = plan["scans"][scan["id"]]
        entry = scans.get(target)
        if entry is None:
            entry = {**scan, "id": target, "files": []}
            dst["scans"].append(entry)
            scans[target] = entry
        names = {f["name"] for f in entry["files"]}
        entry["files"] += [f for f in scan.get("files", [])
                           if (scan["id"], f["name"]) not in skip and f["name"] not in names]
    return plan["conflicts"]


def reset_session(ps: PrearchiveSession) -> None:
    """Put a session stuck in a transient status back to READY, when no job holds it."""
    from workers.reconcile import job_alive

    if ps.status not in TRANSIENT_STATUSES:
        raise prearchive.Busy(f"The session is {ps.status}: nothing to reset.")
    if job_alive(ps.job_id):
        raise prearchive.Busy("A job is working on the session; wait for it to end.")
    if not prearchive.session_dir(ps).exists():
        raise prearchive.Busy("The session's folder is gone (it may have been archived): "
                              "rebuild the prearchive instead.")
    record = prearchive.load_record(ps)
    for key in ("archiving_to", "merging_into", "moving_to", "merge_source", "merge_target"):
        record.pop(key, None)
    prearchive.log(record, f"reset from {ps.status} by hand")
    prearchive.save_record(record)
    _back(ps, record.get("status") if record.get("status") in prearchive.DURABLE_STATUSES
          else READY)


def _back(ps: PrearchiveSession, status: str) -> None:
    ps.status = status
    ps.job_id = None
    db.session.commit()


def requeue(ps: PrearchiveSession):
    """Queue again the tool job a MOVING session was waiting for (the reconciler
    calls this when the job is lost); return the job, or None."""
    from workers import queue

    record = prearchive.load_record(ps)
    if "moving_to" in record:
        return queue.enqueue_prearchive_tool("move_session", ps.id, record["moving_to"])
    if "merge_source" in record:
        return queue.enqueue_prearchive_tool("merge_sessions", record["merge_source"], ps.id)
    if "merge_target" in record:
        return queue.enqueue_prearchive_tool("merge_sessions", ps.id, record["merge_target"])
    return None


def request_rebuild(ps: PrearchiveSession) -> None:
    """Queue a build of the session: its folder is read again and its index rewritten."""
    from workers import queue

    if ps.status not in prearchive.DURABLE_STATUSES:
        raise prearchive.Busy(f"The session is {ps.status}; reset it first if it is stuck.")
    ps.status = QUEUED_BUILDING
    db.session.commit()
    ps.job_id = queue.enqueue_build_session(ps.id).id
    db.session.commit()


def rebuild_index() -> list[str]:
    """Recreate the prearchive's rows from its folders and records; return what changed.

    A record gets its row back (people's label edits included, since they are
    in the record); a folder without a record gets a new one and is built; a
    row whose folder and record are both gone is dropped.
    """
    from workers import queue

    root = storage.prearchive_root(prearchive.data_dir())
    rows = {ps.relpath: ps for ps in db.session.scalars(select(PrearchiveSession))}
    changes, seen = [], set()
    for key_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for ts_dir in sorted(p for p in key_dir.iterdir() if p.is_dir()):
            for folder in sorted(p for p in ts_dir.iterdir() if p.is_dir()):
                rel = f"{key_dir.name}/{ts_dir.name}/{folder.name}"
                seen.add(rel)
                if rel in rows:
                    continue
                ps = _restore(key_dir.name, ts_dir.name, folder.name)
                changes.append(f"{rel}: index row restored ({ps.status})")
                if ps.status == QUEUED_BUILDING:
                    ps.job_id = queue.enqueue_build_session(ps.id).id
                    db.session.commit()
    for rel, ps in rows.items():
        if rel not in seen and not prearchive.record_path(ps).exists():
            db.session.delete(ps)
            changes.append(f"{rel}: folder and record gone, row dropped")
    db.session.commit()
    return changes


def _restore(key: str, timestamp: str, folder: str) -> PrearchiveSession:
    project = None if key == storage.UNASSIGNED else key
    record = storage.read_json(storage.prearchive_json(prearchive.data_dir(), project,
                                                       timestamp, folder))
    if record is None:
        record = prearchive.new_record(project, timestamp, folder, source="rebuild")
        record["status"] = QUEUED_BUILDING
        prearchive.log(record, "found on disk without its record; rebuilt")
        prearchive.save_record(record)
    ps = prearchive.index_record(record)
    if record.get("status") not in prearchive.DURABLE_STATUSES:
        ps.status = QUEUED_BUILDING
    db.session.commit()
    return ps
