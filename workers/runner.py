"""Running RQ workers inside the application."""
from __future__ import annotations

import gc
import threading

from flask import current_app
from rq import SimpleWorker, Worker
from rq.timeouts import TimerDeathPenalty

from workers.queue import get_queue, get_redis

# How long the thread that reads a worker's commands waits for one at a time.
COMMAND_WAIT_SECONDS = 1


class ForkingWorker(Worker):
    """RQ's worker (each job in a forked work horse), quick to stop.

    RQ's worker reads commands (shutdown, kill the work horse) from a Redis
    channel in a thread that waits up to 60 s for each. On its way out the
    worker unsubscribes, then stops that thread; when the unsubscribe's
    reply arrives in between, the thread starts another wait and the exit
    waits for it (rq/rq#1613): a minute, under load. Here the thread wakes
    every COMMAND_WAIT_SECONDS.
    """

    def subscribe(self):
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(
            sleep_time=COMMAND_WAIT_SECONDS, daemon=True,
            exception_handler=self._pubsub_exception_handler)


def run_worker(burst: bool = False) -> bool:
    """Work on Scanyard's queue until stopped (or until it is empty with burst)."""
    queue = get_queue()
    worker = ForkingWorker([queue], connection=get_redis(), log_job_description=False)
    current_app.logger.info("worker %s on queue %s", worker.name, queue.name)
    # Each job runs in a forked work horse. Without this, the garbage
    # collector's full passes there walk every object the app loaded (and
    # touch their pages, which the fork then copies): a fifth of the time
    # of reading an upload's files went to them.
    gc.freeze()
    return worker.work(burst=burst, logging_level="WARNING")


class ThreadWorker(SimpleWorker):
    """A SimpleWorker that may run in any thread: no signal handlers (Python
    only lets the main thread install them) and job timeouts kept by a timer.

    It reads no commands from Redis (RQ's are for worker processes: shutdown,
    kill the work horse), so a burst opens no channel and starts no thread,
    and its end never waits for one (see ForkingWorker).
    """

    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self):
        pass

    def subscribe(self):
        pass


class BackgroundWorker:
    """Run the queue's jobs in a thread of this process until the block ends:
    for ``flask import`` when no worker runs, and for tests.

        with BackgroundWorker(app):
            ...
    """

    def __init__(self, app, poll_seconds: float = 0.1):
        self.app = app
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scanyard-jobs", daemon=True)

    def _run(self) -> None:
        with self.app.app_context():
            while not self._stop.is_set():
                worker = ThreadWorker([get_queue()], connection=get_redis())
                worker.work(burst=True, logging_level="WARNING")
                self._stop.wait(self.poll_seconds)

    def __enter__(self) -> BackgroundWorker:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()


def workers_running() -> int:
    """Return how many RQ workers listen on Scanyard's queue now."""
    return len(Worker.all(queue=get_queue()))
