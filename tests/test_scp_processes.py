"""The DICOM receiver as several processes on one listening socket (`flask scp`
with SCANYARD_SCP_PROCESSES > 1, as `serve` runs it on a machine of several
cores): associations spread over the processes, overlapping studies still
make one session each with every instance once, and the processes stop with
the one that started them, even when it is killed."""
from __future__ import annotations

import ctypes
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from sqlalchemy import select

from models import PrearchiveSession, db
from tests.dicomgen import make_series, write_files
from tests.scpnet import send
from tests.test_faults import ROOT, worker_env
from tests.test_serve import free_port

pytestmark = pytest.mark.slow


def _start(app, port: int, processes: int = 2, **extra) -> subprocess.Popen:
    env = worker_env(app, SCANYARD_SCP_PROCESSES=str(processes),
                     SCANYARD_SESSION_IDLE_SECONDS="1", **extra)
    proc = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "app", "scp", "--host", "127.0.0.1",
         "--port", str(port)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if len(_receivers(proc)) == processes:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return proc
            except OSError:
                pass
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("the receiver processes did not start")


def _receivers(proc) -> list[psutil.Process]:
    try:
        return psutil.Process(proc.pid).children()
    except psutil.NoSuchProcess:
        return []


def _wait_gone(pids: list[int], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                   for p in pids):
            return True
        time.sleep(0.2)
    return False


def _spread(port: int, children: list[int], tries: int = 5) -> set[int]:
    """Have four senders connect at once and hold their associations; return
    the receiver processes that took them."""
    served: set[int] = set()
    for _ in range(tries):
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(Verification)
        start, held = threading.Barrier(4), []

        def connect(ae=ae, start=start, held=held):
            start.wait()
            held.append(ae.associate("127.0.0.1", port, ae_title="SCANYARD"))

        threads = [threading.Thread(target=connect) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        try:
            assert len(held) == 4 and all(a.is_established for a in held)
            for pid in children:
                if any(c.status == "ESTABLISHED" and c.laddr.port == port
                       for c in psutil.Process(pid).net_connections("tcp")):
                    served.add(pid)
        finally:
            for a in held:
                a.release()
        if served == set(children):
            break
    return served


def test_associations_spread_over_processes_and_each_study_is_one_session(
        app, make_project, run_jobs, tmp_path):
    make_project("p1")
    studies = {}
    for n in range(2):
        uid = generate_uid()
        studies[uid] = [f for s in range(2) for f in make_series(
            uid, 10, series_number=s + 1, patient_id=f"PAT{n}", StudyDescription="p1")]
    everything = [f for files in studies.values() for f in files]
    rng = random.Random(3)
    sends = [write_files(tmp_path / f"send{n}", rng.sample(everything, 25)) for n in range(4)]
    port = free_port()
    proc = _start(app, port)
    children = [p.pid for p in _receivers(proc)]
    served = _spread(port, children)
    statuses, errors = [], []

    def dicom(paths):
        try:
            statuses.extend(send(port, paths))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=dicom, args=(p,)) for p in sends]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors and statuses == [0] * 100
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the receivers queue the builds when idle
            run_jobs()
            with app.app_context():
                rows = db.session.scalars(select(PrearchiveSession)).all()
                if rows and {ps.status for ps in rows} == {"READY"}:
                    break
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert _wait_gone(children), "a receiver process outlived the one that started it"
    assert served == set(children), f"the associations did not spread: {served} {children}"
    assert sorted(ps.study_uid for ps in rows) == sorted(studies)
    assert {ps.status for ps in rows} == {"READY"}
    stored = list((Path(app.config["DATA_DIR"]) / "prearchive").rglob("*.dcm"))
    sops = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in stored]
    assert len(sops) == len(set(sops)), "an instance is stored twice"
    sent = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID)
            for paths in sends for p in paths}
    assert set(sops) == sent
    assert sum(ps.file_count for ps in rows) == len(sent)


def test_killing_the_first_process_stops_the_receivers_and_frees_the_port(sqlite_app):
    port = free_port()
    proc = _start(sqlite_app, port)
    children = [p.pid for p in _receivers(proc)]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert _wait_gone(children)
    again = _start(sqlite_app, port)  # the port is free for the receiver started again
    again.send_signal(signal.SIGTERM)
    again.wait(timeout=60)


def test_a_receiver_stops_on_sigterm_whichever_of_its_threads_gets_it(sqlite_app):
    # The kernel hands a signal sent to a process to any of its threads; sent
    # to a thread other than the main one (tgkill), as when a killed `flask
    # scp`'s receivers get their SIGTERM, the receiver must still stop.
    tgkill = getattr(ctypes.CDLL(None), "tgkill", None)
    if tgkill is None:
        pytest.skip("this C library has no tgkill()")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "app", "scp", "--host", "127.0.0.1",
         "--port", str(port)], cwd=ROOT, env=worker_env(sqlite_app, SCANYARD_SCP_PROCESSES="1"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the receiver did not start"
                time.sleep(0.2)
        others = [int(t) for t in os.listdir(f"/proc/{proc.pid}/task") if int(t) != proc.pid]
        assert others  # its acceptor and upkeep threads at least
        assert tgkill(proc.pid, others[0], signal.SIGTERM) == 0
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# Run at the start of every Python process the test starts: one receiver
# process (the first to take the marker) starts SLOW_START seconds later,
# and writes down when it goes on.
_SLOW_SITE = """
import os, time
if os.environ.get("SCANYARD_SCP_LISTEN_FD"):
    try:
        os.unlink(os.environ["SLOW_MARKER"])
    except OSError:
        pass
    else:
        time.sleep(float(os.environ["SLOW_START"]))
        with open(os.environ["SLOW_MARKER"] + ".went-on", "w") as fh:
            fh.write(repr(time.time()))
"""


def test_the_port_opens_once_every_process_is_ready(sqlite_app, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_SLOW_SITE)
    marker = tmp_path / "slow"
    marker.touch()
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    port = free_port()
    proc = _start(sqlite_app, port, PYTHONPATH=path, SLOW_MARKER=str(marker), SLOW_START="3")
    opened = time.time()
    try:
        went_on = marker.with_name("slow.went-on")
        assert went_on.exists(), "the port opened while a receiver process was starting"
        assert float(went_on.read_text()) < opened
        children = [p.pid for p in _receivers(proc)]
        # Senders that connect at once spread over both processes, the slow one too.
        assert _spread(port, children) == set(children)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


@pytest.mark.parametrize("cores, processes", [(1, 2), (2, 4), (3, 6), (16, 8), (None, 2)])
def test_the_receiver_runs_two_processes_per_core_by_default(tmp_path, monkeypatch, cores,
                                                             processes):
    import app as app_module

    monkeypatch.delenv("SCANYARD_SCP_PROCESSES", raising=False)
    monkeypatch.setattr(app_module.os, "cpu_count", lambda: cores)
    app = app_module.create_app({"DATA_DIR": str(tmp_path / "data"),
                                 "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}"})
    assert app.config["SCP_PROCESSES"] == processes
