"""Settings of the web processes that `serve` starts (gunicorn -c python:workers.gunicorn_conf)."""
from __future__ import annotations

import gc


def post_worker_init(_worker=None) -> None:
    """Keep what loading the app made out of the garbage collector's full passes.

    A full pass walks every tracked object: with the app and its libraries
    loaded (some 140,000 objects) it took 70-90 ms, added to whichever
    request set it off. Those objects live as long as the process anyway.
    """
    gc.freeze()
