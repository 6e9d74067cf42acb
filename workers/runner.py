"""Running RQ workers inside the application."""
from __future__ import annotations

from flask import current_app
from rq import Worker

from workers.queue import get_queue, get_redis


def run_worker(burst: bool = False) -> bool:
    """Work on Scanyard's queue until stopped (or until it is empty with burst)."""
    queue = get_queue()
    worker = Worker([queue], connection=get_redis(), log_job_description=False)
    current_app.logger.info("worker %s on queue %s", worker.name, queue.name)
    return worker.work(burst=burst, logging_level="WARNING")
