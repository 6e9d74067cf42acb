"""Shared fixtures: an app on a fresh database and data folder, a real Redis
queue and a real RQ worker, and DICOM data made from pydicom's test files.

SCANYARD_TEST_DATABASE_URL (PostgreSQL) and SCANYARD_TEST_REDIS_URL point the
tests at real services; each run creates and drops its own database and uses
its own queue name. Without them the tests use SQLite and a private Redis.
With CI=true a configured service that cannot be reached fails the run.
"""
from __future__ import annotations

import contextlib
import os
import uuid

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app import create_app
from models import db

RUN_ID = uuid.uuid4().hex[:10]
IN_CI = os.environ.get("CI", "").lower() == "true"


def _service_failed(message: str):
    if IN_CI:
        pytest.exit(f"CI: {message}", returncode=3)
    pytest.skip(message)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    url = os.environ.get("SCANYARD_TEST_REDIS_URL")
    if url:
        from redis import Redis

        try:
            Redis.from_url(url, socket_connect_timeout=3).ping()
        except Exception as exc:
            _service_failed(f"Redis at {url} cannot be reached: {exc}")
        yield url
        return
    from workers.embedded_redis import start_embedded_redis, stop_embedded_redis

    yield start_embedded_redis(str(tmp_path_factory.mktemp("redis")))
    stop_embedded_redis()


@pytest.fixture(scope="session")
def postgres_url():
    """Create this run's PostgreSQL database; drop it at the end."""
    base = os.environ.get("SCANYARD_TEST_DATABASE_URL")
    if not base:
        yield None
        return
    name = f"scanyard_test_{RUN_ID}"
    admin_url = make_url(base.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        _service_failed(f"PostgreSQL at {base} cannot be reached: {exc}")
    yield admin_url.set(database=name).render_as_string(hide_password=False).replace(
        "postgresql+psycopg://", "postgresql://", 1)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _backends():
    backends = ["sqlite"]
    if os.environ.get("SCANYARD_TEST_DATABASE_URL"):
        backends.append("postgresql")
    return backends


@contextlib.contextmanager
def make_app(backend, tmp_path, redis_url, postgres_url):
    """Yield an app on a fresh database and data folder; clean up after."""
    if backend == "sqlite":
        database_url = f"sqlite:///{tmp_path / 'scanyard.db'}"
    else:
        database_url = postgres_url
    app = create_app({
        "TESTING": True,
        "SECRET_KEY": "test",
        "WTF_CSRF_ENABLED": False,
        "DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "QUEUE_NAME": f"scanyard-test-{RUN_ID}-{uuid.uuid4().hex[:6]}",
        "BATCH_SIZE": 20,
        # Tests log in hundreds of times; scrypt's cost is for real passwords.
        "PASSWORD_HASH_METHOD": "pbkdf2:sha256:1000",
    })
    with app.app_context():
        if backend == "postgresql":
            db.drop_all()
        db.create_all()
    yield app
    with app.app_context():
        from workers.queue import get_queue

        queue = get_queue()
        queue.empty()
        db.session.remove()
        if backend == "postgresql":
            db.drop_all()
        db.engine.dispose()


@pytest.fixture(params=_backends())
def app(request, tmp_path, redis_url, postgres_url):
    with make_app(request.param, tmp_path, redis_url, postgres_url) as app:
        yield app


@pytest.fixture
def sqlite_app(tmp_path, redis_url, postgres_url):
    """An app on SQLite alone, for what does not depend on the database."""
    with make_app("sqlite", tmp_path, redis_url, postgres_url) as app:
        yield app


PASSWORD = "correct horse battery"


@pytest.fixture
def make_user(app):
    return user_maker(app)


def user_maker(app):
    """Return a function that creates a user (optionally with a role in a
    project) and returns its name."""
    from blueprints.auth import set_password
    from models import Membership, Project, User

    def make(username, *, admin=False, project=None, role=None):
        with app.app_context():
            user = User(username=username, is_admin=admin)
            set_password(user, PASSWORD)
            db.session.add(user)
            db.session.flush()
            if project:
                pid = db.session.query(Project.id).filter_by(label=project).scalar()
                db.session.add(Membership(project_id=pid, user_id=user.id, role=role))
            db.session.commit()
        return username
    return make


def login(client, username, password=PASSWORD):
    return client.post("/login", data={"username": username, "password": password})


@pytest.fixture
def anon_client(app):
    return app.test_client()


@pytest.fixture
def client(app, make_user):
    """A browser logged in as a site administrator."""
    client = app.test_client()
    make_user("admin", admin=True)
    assert login(client, "admin").status_code == 303
    return client


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


def jobs_runner(app):
    """Return a function that runs a real RQ worker (in this process) until the
    queue is empty."""
    from workers.runner import ThreadWorker

    def run():
        with app.app_context():
            from workers.queue import get_queue, get_redis

            worker = ThreadWorker([get_queue()], connection=get_redis())
            worker.work(burst=True, logging_level="WARNING")
    return run


@pytest.fixture
def run_jobs(app):
    return jobs_runner(app)


@pytest.fixture
def make_project(app):
    return project_maker(app)


def project_maker(app):
    from models import Project

    def make(label="study1", **fields):
        with app.app_context():
            db.session.add(Project(label=label, name=fields.pop("name", label), **fields))
            db.session.commit()
        return label
    return make


def basic_auth(username: str, password: str = PASSWORD) -> dict:
    """Return the headers of a script that authenticates with HTTP Basic."""
    import base64

    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def worker(app):
    """A real RQ worker running the app's jobs in a background thread, so that a
    request that waits for its job (the REST import) gets an answer."""
    from workers.runner import BackgroundWorker

    with BackgroundWorker(app):
        yield


@pytest.fixture
def live_server(app):
    """The app served on a loopback port by a threaded server; yields its URL."""
    import threading

    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join()


@pytest.fixture
def api_headers(app):
    """Return a function giving a user's script headers: a personal token sent as
    a bearer (checked with one sha256, where a password costs a slow hash)."""
    from blueprints.auth import new_token
    from models import User

    tokens: dict[str, str] = {}

    def headers(username: str) -> dict:
        if username not in tokens:
            with app.app_context():
                user = db.session.query(User).filter_by(username=username).one()
                tokens[username] = new_token(user, "tests")
                db.session.commit()
        return {"Authorization": f"Bearer {tokens[username]}"}
    return headers
