"""Settings of the web processes that `serve` starts (gunicorn -c python:workers.gunicorn_conf)."""
from __future__ import annotations

import gc

# gunicorn 25.1 and later open a control socket for `gunicornc` at one path
# per user ($XDG_RUNTIME_DIR or ~/.gunicorn): a second Scanyard, or any other
# gunicorn of the same user, would take it over. `serve` supervises its web
# processes itself. (Older gunicorns ignore the setting.)
control_socket_disable = True


def post_worker_init(_worker=None) -> None:
    """Keep what loading the app made out of the garbage collector's full passes.

    A full pass walks every tracked object: with the app and its libraries
    loaded (some 140,000 objects) it took 70-90 ms, added to whichever
    request set it off. Those objects live as long as the process anyway.
    """
    gc.freeze()
