"""Scanyard: a lightweight imaging archive for small research labs.

``create_app()`` builds the Flask application; configuration comes from
``SCANYARD_*`` environment variables (see the README).
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

from flask import Flask, current_app, render_template, request
from flask.sessions import SecureCookieSessionInterface
from flask_migrate import Migrate
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError, InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from models import db

migrate = Migrate()
csrf = CSRFProtect()

DEFAULTS = {
    "SECRET_KEY": None,
    "DATA_DIR": None,
    "DATABASE_URL": None,
    "REDIS_URL": None,
    "QUEUE_NAME": "scanyard",
    "SCP_PORT": 8104,
    "SCP_AE_TITLE": "SCANYARD",
    "SCP_PROCESSES": None,
    "SESSION_IDLE_SECONDS": 30,
    "IMPORT_WAIT_SECONDS": 600,
    "BATCH_SIZE": 500,
    "PAGE_SIZE": 50,
    "PROXY_COUNT": 0,
    "PASSWORD_HASH_METHOD": "scrypt",
    "SESSION_COOKIE_SAMESITE": "Lax",
    "SESSION_COOKIE_HTTPONLY": True,
    # CSRF is checked by _check_csrf, which leaves script endpoints out.
    "WTF_CSRF_CHECK_DEFAULT": False,
    "WTF_CSRF_TIME_LIMIT": None,
}


def create_app(test_config: dict | None = None) -> Flask:
    """Return a configured Scanyard application."""
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_mapping(DEFAULTS)
    app.config.from_prefixed_env("SCANYARD")
    if test_config:
        app.config.from_mapping(test_config)
    _finish_config(app)

    db.init_app(app)
    migrate.init_app(app, db, directory=str(Path(__file__).with_name("migrations")))
    with app.app_context():
        _tune_engine(db.engine)

    from blueprints import register_blueprints
    from blueprints.streaming import StreamingRequest, discard_unclaimed

    app.request_class = StreamingRequest
    app.teardown_request(discard_unclaimed)
    app.session_interface = _SessionInterface()
    csrf.init_app(app)
    app.before_request(_limit_plain_forms)
    app.before_request(_check_csrf)
    register_blueprints(app)
    if app.config["PROXY_COUNT"]:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=app.config["PROXY_COUNT"],
                                x_proto=app.config["PROXY_COUNT"],
                                x_host=app.config["PROXY_COUNT"])

    import cli
    cli.register(app)

    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(DataError, _bad_value)
    app.register_error_handler(OSError, _storage_error)
    app.register_error_handler(OperationalError, _database_down)
    app.register_error_handler(InterfaceError, _database_down)
    app.jinja_env.filters["filesize"] = filesize
    return app


def _finish_config(app: Flask) -> None:
    os.makedirs(app.instance_path, exist_ok=True)
    if not app.config["DATA_DIR"]:
        app.config["DATA_DIR"] = os.path.join(app.instance_path, "data")
    app.config["DATA_DIR"] = os.path.abspath(app.config["DATA_DIR"])
    if not app.config["DATABASE_URL"]:
        app.config["DATABASE_URL"] = "sqlite:///" + os.path.join(app.instance_path, "scanyard.db")
    app.config["SQLALCHEMY_DATABASE_URI"] = app.config["DATABASE_URL"]
    if app.config["DATABASE_URL"].startswith("postgresql://"):
        # psycopg 3 is the driver we install.
        app.config["SQLALCHEMY_DATABASE_URI"] = app.config["DATABASE_URL"].replace(
            "postgresql://", "postgresql+psycopg://", 1)
    if app.config["DATABASE_URL"].startswith("sqlite"):
        app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", {"connect_args": {"timeout": 30}})
    else:
        app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", {"pool_pre_ping": True})
    if not app.config["SECRET_KEY"]:
        app.config["SECRET_KEY"] = _instance_secret(app)
    if not app.config["SCP_PROCESSES"]:
        # pynetdicom handles the associations of a process under one
        # interpreter lock, and two associations sharing one wait for each
        # other even with a core idle: two receiver processes per core, up to 8.
        app.config["SCP_PROCESSES"] = max(2, min(8, 2 * (os.cpu_count() or 1)))
    for key in ("SCP_PORT", "SCP_PROCESSES", "SESSION_IDLE_SECONDS", "IMPORT_WAIT_SECONDS",
                "BATCH_SIZE", "PAGE_SIZE", "PROXY_COUNT"):
        app.config[key] = int(app.config[key])
    for sub in ("uploads", "prearchive", "archive", "quarantine"):
        os.makedirs(os.path.join(app.config["DATA_DIR"], sub), exist_ok=True)


def _instance_secret(app: Flask) -> str:
    """Return a random secret kept in the instance folder, made on first use."""
    path = os.path.join(app.instance_path, "secret_key")
    if not os.path.exists(path):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(os.urandom(32).hex())
    with open(path) as fh:
        return fh.read().strip()


class _SessionInterface(SecureCookieSessionInterface):
    """Session cookies marked Secure whenever the request came over HTTPS."""

    def get_cookie_secure(self, app) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"] or request.is_secure)


def _limit_plain_forms():
    """Cap url-encoded forms: Werkzeug reads them whole into memory. (File
    uploads are multipart and stream to disk, so they have no such cap.)"""
    if request.mimetype == "application/x-www-form-urlencoded":
        request.max_content_length = current_app.config["MAX_FORM_MEMORY_SIZE"]


def _check_csrf():
    """Check the CSRF token of forms; script endpoints authenticate otherwise."""
    from blueprints.auth import is_api_request

    if current_app.config["WTF_CSRF_ENABLED"] and request.method not in (
            "GET", "HEAD", "OPTIONS", "TRACE") and not is_api_request():
        csrf.protect()


def _tune_engine(engine: Engine) -> None:
    """SQLite: WAL, a busy timeout, and write locks taken when a transaction begins."""
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        # Let SQLAlchemy's "begin" event below open transactions itself.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        # Without IMMEDIATE two readers that both upgrade to writers deadlock
        # and one gets "database is locked" at once, whatever the busy timeout.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _http_error(err: HTTPException):
    from blueprints import wants_json

    if wants_json():
        return {"error": err.description, "status": err.code}, err.code
    return render_template("error.html", error=err), err.code


def _bad_value(err: DataError):
    """A value the database refuses (a NUL byte, an absurd number): the
    client's mistake, answered as such."""
    from werkzeug.exceptions import BadRequest

    db.session.rollback()
    return _http_error(BadRequest("A value in the request is not acceptable."))


def _database_down(err):
    """The database went away for a moment: say so (503); the pool reconnects
    (pre-ping) on the next request."""
    current_app.logger.warning("database unreachable: %s", err)
    try:
        db.session.rollback()
    except Exception:  # the connection is gone; nothing to roll back
        pass
    db.session.remove()
    message = ("The database cannot be reached at the moment; nothing was changed. Try "
               "again shortly.")
    from blueprints import wants_json

    if wants_json():
        return {"error": message, "status": 503}, 503
    # Not the site's template: drawing its menu would ask the database again.
    return (f"<!doctype html><title>503 Service Unavailable</title>"
            f"<h1>Service Unavailable</h1><p>{message}</p>", 503)


class InsufficientStorage(HTTPException):
    code = 507
    description = "The server has no space left to store this; nothing of it was kept."


def _storage_error(err: OSError):
    """A full disk while a request stores its body: 507, and the partial body
    goes (the request's teardown removes what it had written)."""
    if err.errno not in (errno.ENOSPC, errno.EDQUOT):
        raise err
    db.session.rollback()
    return _http_error(InsufficientStorage())


def filesize(n: int | None) -> str:
    """Format a byte count for people: 1.2 MB."""
    n = n or 0
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"
