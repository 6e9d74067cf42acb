"""The Redis connection and the RQ queue, and one ``enqueue_<job>`` helper per job.

Redis holds nothing we cannot lose: each helper is called after the row that
tracks the work is committed, and the reconciler re-queues work whose job
has vanished.
"""
from __future__ import annotations

import os

from flask import current_app
from redis import Redis
from rq import Queue, Retry, Worker
from rq.job import Dependency, Job

_connections: dict[str, Redis] = {}

JOB_TIMEOUT = 6 * 3600
# Each batch job opens the zip, which reads its whole central directory (a few
# microseconds per entry): with batches of a fixed size that cost grew with the
# square of the number of files. Past MAX_BATCHES, batches grow instead.
MAX_BATCHES = 16
# Each job runs in a process forked for it, which costs some 50 ms before the
# first file: batches are large, but an upload has at least one per worker
# (of MIN_BATCH files or more) so that every worker reads a part of it.
MIN_BATCH = 10
RESULT_TTL = 3600
FAILURE_TTL = 7 * 24 * 3600


def redis_url() -> str:
    """Return the configured Redis URL, starting the embedded one when none is set."""
    url = current_app.config.get("REDIS_URL")
    if url:
        return url
    from workers.embedded_redis import start_embedded_redis
    url = start_embedded_redis(current_app.instance_path)
    current_app.config["REDIS_URL"] = url
    return url


def get_redis() -> Redis:
    """Return this process's Redis connection (a new one after a fork)."""
    url = redis_url()
    key = f"{os.getpid()}:{url}"
    conn = _connections.get(key)
    if conn is None:
        conn = Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30)
        _connections[key] = conn
    return conn


def get_queue() -> Queue:
    return Queue(current_app.config["QUEUE_NAME"], connection=get_redis(),
                 default_timeout=JOB_TIMEOUT)


def fetch_job(job_id: str) -> Job | None:
    """Return the RQ job or None when Redis no longer knows it."""
    try:
        return Job.fetch(job_id, connection=get_redis())
    except Exception:  # NoSuchJobError, or a job whose data was lost
        return None


def _enqueue(func: str, *args, job_id: str | None = None, depends_on=None, at_front=False):
    return get_queue().enqueue_call(
        func, args=args, job_id=job_id, depends_on=depends_on, at_front=at_front,
        retry=Retry(max=3), result_ttl=RESULT_TTL,
        failure_ttl=FAILURE_TTL, timeout=JOB_TIMEOUT)


def enqueue_extract_upload(upload_id: str):
    return _enqueue("workers.ingest.extract_upload", upload_id, job_id=upload_id)


def enqueue_read_batches(upload_id: str, total: int):
    """Enqueue one read job per batch of members and the finishing job that
    depends on them all (and runs even when a batch failed, to report it)."""
    size = current_app.config["BATCH_SIZE"]
    workers = worker_count()
    if workers > 1:
        size = min(size, max(MIN_BATCH, -(-total // workers)))
    size = max(size, -(-total // MAX_BATCHES))
    batches = [list(range(i, min(i + size, total))) for i in range(0, total, size)]
    jobs = [_enqueue("workers.ingest.read_batch", upload_id, n, members)
            for n, members in enumerate(batches)]
    depends = Dependency(jobs=jobs, allow_failure=True, enqueue_at_front=True) if jobs else None
    return _enqueue("workers.ingest.finish_upload", upload_id, len(batches),
                    job_id=f"{upload_id}-finish", depends_on=depends)


def worker_count() -> int:
    """Return how many workers serve the queue now (0 when Redis cannot say)."""
    try:
        return Worker.count(queue=get_queue())
    except Exception:  # a count for sizing batches: never worth failing a job over
        return 0


def enqueue_build_session(prearchive_id: int):
    return _enqueue("workers.building.build_session", prearchive_id)


def enqueue_archive_session(prearchive_id: int, options: dict | None = None, after=None):
    """Queue the archive job; `after` is a job it waits for (allowed to fail)."""
    depends = Dependency(jobs=[after], allow_failure=True) if after is not None else None
    return _enqueue("workers.archiving.archive_session", prearchive_id, options or {},
                    depends_on=depends)


def enqueue_prearchive_tool(job: str, *args):
    """Queue one of the prearchive's tools (workers/prearchive_tools.py) by name."""
    return _enqueue(f"workers.prearchive_tools.{job}", *args)


def enqueue_delete_prearchive(prearchive_id: int):
    return _enqueue("workers.prearchive.delete_prearchive_session", prearchive_id)


def enqueue_make_snapshots(prearchive_id: int):
    return _enqueue("workers.snapshots.make_session_snapshots", prearchive_id)
