"""How an upload's files are split into the batch jobs that read them."""
from __future__ import annotations

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
