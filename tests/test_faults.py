"""Faults survived: workers killed with SIGKILL at the worst moments, Redis
restarted with work queued, the disk full. Real worker processes, a real
Redis; after each fault every file is once in exactly one place and the
database agrees with the disk."""
from __future__ import annotations

import datetime as dt
import io
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from models import PrearchiveSession, Upload, db
from tests.dicomgen import make_study, zip_bytes

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def worker_env(app, **extra) -> dict:
    env = dict(os.environ)
    env.update(SCANYARD_DATA_DIR=app.config["DATA_DIR"],
               SCANYARD_DATABASE_URL=app.config["DATABASE_URL"],
               SCANYARD_REDIS_URL=app.config["REDIS_URL"],
               SCANYARD_QUEUE_NAME=app.config["QUEUE_NAME"],
               SCANYARD_BATCH_SIZE=str(app.config["BATCH_SIZE"]),
               SCANYARD_SECRET_KEY="test", **extra)
    return env


def run_worker(app, crash_at: str | None = None, tmp_path: Path | None = None) -> int:
    """Run `flask worker --burst` in its own process group; return its exit code."""
    extra = {}
    if crash_at:
        marker = tmp_path / f"crash-{crash_at}"
        marker.write_text("once")
        extra = {"SCANYARD_CRASH_AT": crash_at, "SCANYARD_CRASH_MARKER": str(marker)}
    proc = subprocess.run([sys.executable, "-m", "flask", "--app", "app", "worker", "--burst"],
                          cwd=ROOT, env=worker_env(app, **extra), start_new_session=True,
                          capture_output=True, text=True, timeout=300)
    return proc.returncode


def upload(client, files: list[bytes]) -> str:
    res = client.post("/upload", headers={"Accept": "application/json"},
                      content_type="multipart/form-data", data={
                          "project": "p1", "date_unknown": "1", "file": (
                              io.BytesIO(zip_bytes({f"d/{n}.dcm": f
                                                    for n, f in enumerate(files)})), "x.zip")})
    assert res.status_code == 202
    return res.get_json()["id"]


def assert_each_file_once(app, expected: int) -> None:
    data = Path(app.config["DATA_DIR"])
    stored = [p for sub in ("prearchive", "archive") for p in (data / sub).rglob("*.dcm")
              if ".trash" not in p.parts]
    assert len(stored) == expected, f"{len(stored)} files stored, {expected} expected"
    names = [p.name for p in stored]
    assert len(set(names)) == len(names)
    result = app.test_cli_runner().invoke(args=["verify"])
    assert result.exit_code == 0, result.output


@pytest.fixture
def study(app, make_project):
    make_project("p1")
    _uid, files = make_study(series=3, per_series=20)
    return files


@pytest.mark.parametrize("point", ["read_batch", "finish_upload"])
def test_a_worker_killed_while_reading_an_upload_is_resumed(app, client, study, tmp_path,
                                                            point):
    upload_id = upload(client, study)
    assert run_worker(app, crash_at=point, tmp_path=tmp_path) == -9
    with app.app_context():
        assert db.session.get(Upload, upload_id).status != "DONE"
    assert run_worker(app) == 0  # a new worker finds the dead one's job and runs it again
    with app.app_context():
        row = db.session.get(Upload, upload_id)
        assert (row.status, row.stored, row.duplicates, row.quarantined) == ("DONE", 60, 0, 0)
    assert_each_file_once(app, 60)


@pytest.mark.parametrize("point", ["archive", "append"])
def test_a_worker_killed_while_archiving_leaves_every_file_once(app, client, study, tmp_path,
                                                                point):
    first = study[:20]
    upload(client, first if point == "append" else study)
    assert run_worker(app) == 0
    if point == "append":
        with app.app_context():
            ps_id = db.session.scalar(select(PrearchiveSession.id))
        client.post(f"/prearchive/{ps_id}/archive")
        assert run_worker(app) == 0
        upload(client, study[20:])
        assert run_worker(app) == 0
    with app.app_context():
        ps_id = db.session.scalar(select(PrearchiveSession.id))
    res = client.post(f"/prearchive/{ps_id}/archive",
                      data={"overwrite": "append" if point == "append" else "none"})
    assert res.status_code == 303
    assert run_worker(app, crash_at=point, tmp_path=tmp_path) == -9
    assert run_worker(app) == 0
    with app.app_context():
        assert db.session.get(PrearchiveSession, ps_id) is None
    assert_each_file_once(app, 60)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _redis_server(port: int, folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(folder)],
                            stdout=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


@pytest.mark.skipif(not shutil.which("redis-server"), reason="redis-server is not installed")
def test_queued_uploads_survive_a_redis_restart(app, client, study, tmp_path):
    from workers import queue
    from workers.reconcile import reconcile

    port = _free_port()
    server = _redis_server(port, tmp_path)
    shared = app.config["REDIS_URL"]
    try:
        app.config["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        upload_id = upload(client, study)
        server.kill()  # Redis dies with the queue in memory
        server.wait()
        server = _redis_server(port, tmp_path)
        with app.app_context():
            assert queue.fetch_job(upload_id) is None
            assert db.session.get(Upload, upload_id).status == "QUEUED"
            lines = reconcile(now=dt.datetime.now() + dt.timedelta(minutes=5))
            assert any(upload_id in line for line in lines)
        assert run_worker(app) == 0
        with app.app_context():
            assert db.session.get(Upload, upload_id).status == "DONE"
        assert_each_file_once(app, 60)
    finally:
        app.config["REDIS_URL"] = shared
        server.kill()


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_a_full_disk_fails_cleanly_and_stores_nothing_partial(app, client, study, tmp_path):
    data = tmp_path / "small-disk"
    if not _tmpfs(data, "1500k"):
        pytest.skip("cannot mount a small tmpfs here")
    try:
        for sub in ("uploads", "prearchive", "archive", "quarantine"):
            (data / sub).mkdir()
        app.config["DATA_DIR"] = str(data)
        big = zip_bytes({f"{n}.bin": os.urandom(100_000) for n in range(20)})  # 2 MB
        res = client.post("/upload", headers={"Accept": "application/json"},
                          content_type="multipart/form-data",
                          data={"project": "p1", "date_unknown": "1",
                                "file": (io.BytesIO(big), "big.zip")})
        assert res.status_code == 507
        assert "space" in res.get_json()["error"]
        assert not any((data / "uploads").iterdir())  # the partial body was removed
        upload_id = upload(client, study[:6])  # a small upload still fits...
        # ...but its files do not fit twice: fill the disk before the worker runs.
        filler = data / "filler"
        with open(filler, "wb") as fh:
            try:
                while True:
                    fh.write(b"\0" * 65536)
            except OSError:
                pass
        assert run_worker(app) == 0
        with app.app_context():
            row = db.session.get(Upload, upload_id)
            assert row.status == "FAILED" and "space" in (row.error or "")
        assert not list((data / "prearchive").rglob("*.dcm"))
        assert not list((data / "archive").rglob("*.dcm"))
    finally:
        subprocess.run(["umount", "-l", str(data)], capture_output=True)
