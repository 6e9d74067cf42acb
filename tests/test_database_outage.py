"""The database unreachable for a moment: clear errors, then recovery. The
tests reach PostgreSQL through a TCP proxy they cut, never stopping the
machine's server."""
from __future__ import annotations

import socket
import threading

import pytest
from sqlalchemy.engine import make_url

from app import create_app
from tests.conftest import login

pytestmark = pytest.mark.slow


class Proxy:
    """A TCP proxy on loopback that can be cut (refusing and dropping
    connections) and restored on the same port."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.port = None
        self.conns: list[socket.socket] = []
        self.listener = None
        self.start()

    def start(self) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port or 0))
        self.port = self.listener.getsockname()[1]
        self.listener.listen(16)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def _accept(self, listener) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        # shutdown() wakes the thread blocked in accept(); close() alone would not.
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        for s in self.conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass
        self.conns.clear()


def test_the_database_away_for_a_moment_gives_503_then_recovers(app, make_user, make_project):
    url = make_url(app.config["DATABASE_URL"])
    if url.get_backend_name() != "postgresql":
        pytest.skip("the outage is played through a TCP proxy to PostgreSQL")
    make_user("boss", admin=True)
    make_project("p1")
    proxy = Proxy((url.host or "127.0.0.1", url.port or 5432))
    proxied = create_app({**{k: app.config[k] for k in (
        "TESTING", "SECRET_KEY", "WTF_CSRF_ENABLED", "DATA_DIR", "REDIS_URL", "QUEUE_NAME",
        "PASSWORD_HASH_METHOD")}, "DATABASE_URL": url.set(
            host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)})
    client = proxied.test_client()
    assert login(client, "boss").status_code == 303
    assert client.get("/").status_code == 200
    proxy.cut()
    page = client.get("/")
    assert page.status_code == 503 and b"database cannot be reached" in page.data
    api = client.get("/api/projects/p1/subjects")
    assert api.status_code == 503 and "database" in api.get_json()["error"]
    proxy.start()
    assert client.get("/").status_code == 200
    assert client.post("/projects/new", data={"label": "after"}).status_code == 303
    proxy.cut()
    with proxied.app_context():
        from models import db

        db.engine.dispose()
