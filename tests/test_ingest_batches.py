"""How an upload's files are split into the batch jobs that read them."""
from __future__ import annotations

import contextlib

from rq import Worker

from workers import queue


def _read_jobs(app):
    jobs = [queue.fetch_job(job_id) for job_id in queue.get_queue().job_ids]
    return [job for job in jobs if job.func_name == "workers.ingest.read_batch"]


def test_a_small_upload_is_read_in_batches_of_the_configured_size(app):
    size = app.config["BATCH_SIZE"]
    with app.app_context():
        queue.enqueue_read_batches("u1", 2 * size + 3)
        sizes = [len(job.args[2]) for job in _read_jobs(app)]
    assert sizes == [size, size, 3]


def test_a_large_upload_is_read_in_at_most_sixteen_batches_that_cover_every_file(app):
    # Each batch opens the zip and reads its whole directory: more batches
    # would cost time in proportion to the square of the number of files.
    with app.app_context():
        queue.enqueue_read_batches("u1", 10_001)
        batches = [job.args[2] for job in _read_jobs(app)]
    assert len(batches) <= queue.MAX_BATCHES == 16
    assert sorted(i for batch in batches for i in batch) == list(range(10_001))



@contextlib.contextmanager
def _workers(count: int):
    """Register `count` workers on the queue (none runs): as serve's would be."""
    workers = [Worker([queue.get_queue()], connection=queue.get_redis(), name=f"w{n}")
               for n in range(count)]
    for worker in workers:
        worker.register_birth()
    try:
        yield
    finally:
        for worker in workers:
            worker.register_death()


def _batch_sizes(app, workers: int, total: int) -> list[int]:
    with app.app_context(), _workers(workers):
        queue.enqueue_read_batches("u1", total)
        return [len(job.args[2]) for job in _read_jobs(app)]


def test_an_upload_has_a_batch_for_each_worker(app):
    assert _batch_sizes(app, 3, 40) == [14, 14, 12]  # not 20 + 20: three workers read it


def test_a_batch_for_each_worker_holds_a_fair_number_of_files(app):
    assert _batch_sizes(app, 4, 12) == [queue.MIN_BATCH, 2]
