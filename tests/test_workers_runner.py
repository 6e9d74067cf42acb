"""The RQ workers Scanyard runs: they stop at once when told to."""
from __future__ import annotations

import time

from workers.queue import get_queue, get_redis
from workers.runner import ForkingWorker, ThreadWorker


def _until(condition, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_worker_stops_at_once_after_its_unsubscribe_reply_came_in(sqlite_app):
    """The order of a worker's exit, with the command thread a step ahead:
    the reply to its unsubscribe has been read when the thread is told to
    stop. RQ's own thread then waited up to 60 s for a next command."""
    with sqlite_app.app_context():
        worker = ForkingWorker([get_queue()], connection=get_redis())
        worker.subscribe()
        try:
            assert _until(lambda: worker.pubsub.subscribed)
            worker.pubsub.unsubscribe()
            assert _until(lambda: not worker.pubsub.subscribed)
            time.sleep(0.2)  # the thread is waiting for a command again
        finally:
            started = time.monotonic()
            worker.pubsub_thread.stop()
        assert time.monotonic() - started < 5
        assert not worker.pubsub_thread.is_alive()


def test_a_worker_in_a_thread_opens_no_command_channel(sqlite_app):
    """The in-process worker (tests, `flask import` without workers) runs a
    burst every tenth of a second: no channel, no thread, nothing to wait for."""
    with sqlite_app.app_context():
        worker = ThreadWorker([get_queue()], connection=get_redis())
        started = time.monotonic()
        for _ in range(20):
            worker.work(burst=True, logging_level="WARNING")
        assert worker.pubsub is None and worker.pubsub_thread is None
        assert time.monotonic() - started < 10
        assert get_redis().pubsub_channels(f"rq:pubsub:{worker.name}") == []
