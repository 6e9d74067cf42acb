"""Re-queue work whose job Redis no longer holds.

The database (and the prearchive folders) say what is in flight; Redis may
have been restarted or flushed, or a worker killed. Run at worker start and
every minute: anything queued or running whose job is gone, failed for good
or stopped is queued again. Jobs are idempotent, so a spare run is harmless.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import socket

from flask import current_app
from rq import Worker
from rq.registry import StartedJobRegistry
from sqlalchemy import select

from imaging import storage
from models import (
    ARCHIVING,
    BUILDING,
    DELETING,
    MOVING,
    QUEUED_ARCHIVING,
    QUEUED_BUILDING,
    QUEUED_DELETING,
    QUEUED_MOVING,
    UPLOAD_ACTIVE,
    PrearchiveSession,
    Upload,
    db,
    utcnow,
)
from workers import prearchive_tools, queue
from workers.receiving import build_idle_sessions

log = logging.getLogger(__name__)

# A row younger than this may belong to a request that is enqueueing it now.
GRACE = dt.timedelta(seconds=30)

_ALIVE = {"queued", "started", "deferred", "scheduled"}

_REQUEUE = {
    QUEUED_ARCHIVING: queue.enqueue_archive_session, ARCHIVING: queue.enqueue_archive_session,
    QUEUED_DELETING: queue.enqueue_delete_prearchive, DELETING: queue.enqueue_delete_prearchive,
    QUEUED_BUILDING: queue.enqueue_build_session, BUILDING: queue.enqueue_build_session,
}


def worker_alive(name: str | None) -> bool:
    """True unless the worker is gone from Redis or, on this machine, its
    process is dead (a worker killed outright leaves its key for minutes)."""
    if not name:
        return False
    worker = Worker.find_by_key(Worker.redis_worker_namespace_prefix + name,
                                connection=queue.get_redis())
    if worker is None:
        return False
    if worker.hostname == socket.gethostname() and worker.pid:
        try:
            os.kill(worker.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    return True


def requeue_orphans() -> list[str]:
    """Queue again the jobs that were running in a worker that died.

    RQ would notice only when their timeout expires (hours for a big upload);
    the same job is queued again, so what depends on it still waits for it.
    """
    q = queue.get_queue()
    done = []
    for job_id in StartedJobRegistry(queue=q).get_job_ids():
        job = queue.fetch_job(job_id)
        if job is None or getattr(job.get_status(), "value", None) != "started":
            continue
        if worker_alive(job.worker_name):
            continue
        q.enqueue_job(job, at_front=True)
        done.append(f"job {job_id} of a dead worker")
    return done


def job_alive(job_id: str | None) -> bool:
    """True when Redis holds the job and it is waiting, running or retrying."""
    if not job_id:
        return False
    job = queue.fetch_job(job_id)
    if job is None:
        return False
    status = job.get_status(refresh=False)
    status = getattr(status, "value", status)
    if status == "started":
        return worker_alive(job.worker_name)
    return status in _ALIVE


def reconcile(now: dt.datetime | None = None) -> list[str]:
    """Re-queue lost work; return one line per job queued again."""
    now = now or utcnow()
    done = requeue_orphans()
    for upload in db.session.scalars(select(Upload).where(Upload.status.in_(UPLOAD_ACTIVE))):
        if now - upload.created < GRACE:
            continue
        if not (job_alive(upload.id) or job_alive(f"{upload.id}-finish")):
            _requeue_upload(upload)
            done.append(f"upload {upload.id}")
    rows = db.session.scalars(select(PrearchiveSession).where(
        PrearchiveSession.status.in_([*_REQUEUE, QUEUED_MOVING, MOVING])))
    for ps in rows:
        if now - ps.last_modified < GRACE or job_alive(ps.job_id):
            continue
        job = prearchive_tools.requeue(ps) if ps.status in (QUEUED_MOVING, MOVING) \
            else _REQUEUE[ps.status](ps.id)
        if job is None:
            continue
        ps.job_id = job.id
        done.append(f"prearchive session {ps.relpath} ({ps.status})")
    db.session.commit()
    # The receiver queues these itself; this covers a receiver that stopped.
    for prearchive_id in build_idle_sessions(current_app.config["SESSION_IDLE_SECONDS"], now):
        done.append(f"build of quiet received session {prearchive_id}")
    storage.empty_trash(current_app.config["DATA_DIR"])
    for line in done:
        log.warning("re-queued %s", line)
    return done


def _requeue_upload(upload: Upload) -> None:
    """Start the upload's work again from the step it reached."""
    root = storage.upload_dir(current_app.config["DATA_DIR"], upload.id)
    if upload.status in ("READING", "FINISHING") and (root / "members.json").exists():
        saved = storage.read_json(root / "members.json")
        queue.enqueue_read_batches(upload.id, len(saved["members"]))
    else:
        queue.get_queue().remove(upload.id)
        queue.enqueue_extract_upload(upload.id)
