"""`flask --app app serve` as a user runs it: a real web server, real RQ
workers in their own processes, a browser session over HTTP, and Ctrl-C."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from tests.dicomgen import make_study, zip_bytes

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flask(env, *args, **kw):
    return subprocess.run([sys.executable, "-m", "flask", "--app", "app", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120, **kw)


def csrf(session, url) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', session.get(url).text).group(1)


@pytest.fixture
def server(tmp_path, redis_url, postgres_url):
    env = dict(os.environ)
    env.update(SCANYARD_DATA_DIR=str(tmp_path / "data"),
               SCANYARD_DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite'}",
               SCANYARD_REDIS_URL=redis_url,
               SCANYARD_QUEUE_NAME=f"serve-test-{os.getpid()}-{tmp_path.name}",
               SCANYARD_SECRET_KEY="test", HOME=str(tmp_path / "home"))
    env.pop("XDG_RUNTIME_DIR", None)
    assert flask(env, "init-db").returncode == 0
    made = flask(env, "create-user", "boss", "--admin", input="a long password\n")
    assert made.returncode == 0, made.stderr
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "app", "serve", "--port", str(port),
         "--workers", "2", "--no-scp"], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                requests.get(base + "/login", timeout=5)
                break
            except requests.RequestException:
                time.sleep(0.2)
        yield base, proc, tmp_path
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_serve_runs_the_whole_path_and_ctrl_c_stops_everything(server):
    base, proc, tmp_path = server
    web = requests.Session()
    token = csrf(web, base + "/login")
    res = web.post(base + "/login", data={"username": "boss", "password": "a long password",
                                          "csrf_token": token})
    assert res.ok and "Log out" in res.text
    token = csrf(web, base + "/projects/new")
    assert web.post(base + "/projects/new", data={"label": "lab", "csrf_token": token}).ok
    _, files = make_study(series=2, per_series=5)
    data = zip_bytes({f"s/{n}.dcm": d for n, d in enumerate(files)})
    res = web.post(base + "/upload", headers={"Accept": "application/json"},
                   data={"project": "lab", "date_unknown": "1", "csrf_token": token},
                   files={"file": ("study.zip", data, "application/zip")})
    assert res.status_code == 202, res.text
    api = base + res.json()["api"]
    for _ in range(150):
        report = web.get(api).json()
        if report["status"] in ("DONE", "FAILED"):
            break
        time.sleep(0.2)
    assert report["status"] == "DONE" and report["stored"] == 10, report
    assert "READY" in web.get(base + "/prearchive/").text

    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 4  # gunicorn master and workers, two RQ workers
    os.kill(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    time.sleep(0.5)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    # Nothing left in the user's home (gunicorn's control socket is off).
    assert not (tmp_path / "home").exists()
