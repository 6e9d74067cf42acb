"""Running jobs inside an application context."""
from __future__ import annotations

import functools
import os

from flask import current_app, has_app_context

_app = None
_engine_pid: int | None = None


def _process_app():
    global _app
    if _app is None:
        from app import create_app

        _app = create_app()
    return _app


def app_job(func):
    """Run a job inside the app context, with database connections of its own.

    A forked RQ work horse inherits the parent's pooled connections; sharing
    them between processes corrupts them, so the pool is dropped (without
    closing the parent's sockets) the first time a new process runs a job.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        global _engine_pid
        if has_app_context():
            return _run(func, current_app._get_current_object(), args, kwargs)
        with _process_app().app_context():
            return _run(func, current_app._get_current_object(), args, kwargs)

    def _run(f, app, args, kwargs):
        global _engine_pid
        from models import db

        if _engine_pid != os.getpid():
            db.engine.dispose(close=False)
            _engine_pid = os.getpid()
        try:
            return f(*args, **kwargs)
        finally:
            db.session.remove()

    return wrapper
