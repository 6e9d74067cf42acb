"""Benchmark: upload a zip of N MR instances to a running ``serve``; time the ingest.

    .venv/bin/python bench/ingest_zip.py [--count 2000] [--series 4] [--workers 2]
        [--database-url postgresql://postgres@127.0.0.1:5432/test]
        [--redis-url redis://127.0.0.1:6379/0] [--batch-size 250]

It generates N MR instances of 256x256 (pydicom's MR_small.dcm with new
pixels and UIDs; the zip is cached in the temp folder), starts its own
``flask --app app serve`` on a free port with a temporary data folder and
database (SQLite unless --database-url; a PostgreSQL URL names the server,
the benchmark creates and drops a database of its own), logs in over HTTP,
creates a project, uploads the zip through the upload form, and waits until
the upload is DONE (its session READY), then archives the session. Meanwhile
it samples the memory (RSS) of the web and worker processes every 50 ms.

In the same run it times a bare single-process loop over the same zip:
unzip -> read header (pydicom, stop before pixels) -> sha256 -> write, no
database, no fsync. Scanyard does more per file: it unpacks each member to
disk, reads it back, hashes it twice (whole, and the dataset after the file
meta), checks the pixel data is complete, then renames it into the
prearchive; it fsyncs folders and its JSON files, not each DICOM file.
Since absolute times on shared machines vary by 2x from run to run, the
figure that counts is Scanyard's rate as a ratio of the bare loop's.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import io
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from pathlib import Path

import numpy as np
import psutil
import pydicom
import requests
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parent.parent
PROJECT, SUBJECT, STUDY_DATE = "BENCH", "SUBJ1", "2024-01-15"
PASSWORD = "bench-password-1"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
GOAL_RATIO, GOAL_MEMORY_MB, GOAL_ARCHIVE_S = 1.3, 300, 1.0


# --- data -------------------------------------------------------------------

def make_zip(count: int, series: int, size: int) -> Path:
    """Return a zip of `count` MR instances in `series` series, made once and cached."""
    cache = Path(tempfile.gettempdir()) / "scanyard-bench"
    path = cache / f"mr-{count}-{series}s-{size}px.zip"
    if path.exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    print(f"Generating {count} instances into {path} ...", flush=True)
    with open(get_testdata_file("MR_small.dcm"), "rb") as fh:
        template = fh.read()
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[:size, :size]
    phantom = (((xx - size / 2) ** 2 + (yy - size / 2) ** 2) < (size * 0.4) ** 2) * 1500.0
    study_uid, tmp = generate_uid(), path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for s in range(series):
            series_uid, per = generate_uid(), count // series + (s < count % series)
            for n in range(per):
                ds = pydicom.dcmread(io.BytesIO(template))
                ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
                ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
                ds.SeriesNumber, ds.InstanceNumber = s + 1, n + 1
                ds.PatientName, ds.PatientID, ds.StudyDate = "BENCH^ONE", "B001", "20240115"
                ds.SeriesDescription = f"bench series {s + 1}"
                # An MR-like image: a bright disc with 12-bit noise (deflates ~1.5x).
                pixels = phantom + rng.normal(300, 120, (size, size))
                ds.Rows = ds.Columns = size
                ds.PixelData = np.clip(pixels, 0, 4095).astype(np.uint16).tobytes()
                buf = io.BytesIO()
                ds.save_as(buf, enforce_file_format=True)
                zf.writestr(f"series{s + 1}/IM{n + 1:05d}.dcm", buf.getvalue())
    tmp.rename(path)
    return path


def bare_loop(zip_path: Path, out: Path) -> tuple[float, float, int, float]:
    """Return (seconds, CPU seconds, files, kernel CPU seconds) of
    unzip -> read header -> sha256 -> write."""
    out.mkdir(parents=True, exist_ok=True)
    files, start, before = 0, time.perf_counter(), os.times()
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            data = zf.read(info)
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            _keys = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
            digest = hashlib.sha256(data).hexdigest()
            with open(out / f"{digest}.dcm", "wb") as fh:
                fh.write(data)
            files += 1
    seconds, after = time.perf_counter() - start, os.times()
    shutil.rmtree(out)
    return (seconds, after.user + after.system - before.user - before.system, files,
            after.system - before.system)


# --- the server ---------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_database(base_url: str):
    """Yield the URL of a new PostgreSQL database on the server of `base_url`; drop it after."""
    from sqlalchemy import create_engine, make_url, text

    name = f"scanyard_bench_{uuid.uuid4().hex[:8]}"
    admin_url = make_url(base_url.replace("postgresql://", "postgresql+psycopg://", 1))
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False).replace(
            "postgresql+psycopg://", "postgresql://", 1)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class Server:
    """``flask --app app serve`` on a free port, a temporary data folder and database."""

    def __init__(self, tmp: Path, database_url: str, args):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / "serve.log"
        self.queue = f"bench-{uuid.uuid4().hex[:8]}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SCANYARD_")}
        self.env.update(SCANYARD_DATA_DIR=str(tmp / "data"), SCANYARD_DATABASE_URL=database_url,
                        SCANYARD_SECRET_KEY=uuid.uuid4().hex, SCANYARD_QUEUE_NAME=self.queue,
                        SCANYARD_BATCH_SIZE=str(args.batch_size))
        if args.redis_url:
            self.env["SCANYARD_REDIS_URL"] = args.redis_url
        self.workers, self.web_workers = args.workers, args.web_workers
        self.proc: subprocess.Popen | None = None

    def flask(self, *command: str, stdin: str | None = None) -> None:
        subprocess.run([sys.executable, "-m", "flask", "--app", "app", *command], cwd=ROOT,
                       env=self.env, input=stdin, text=True, check=True,
                       stdout=subprocess.DEVNULL)

    def start(self) -> None:
        self.flask("init-db")
        self.flask("create-user", "bench", "--admin", stdin=PASSWORD + "\n")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "app", "serve", "--no-scp",
             "--port", str(self.port), "--workers", str(self.workers),
             "--web-workers", str(self.web_workers)],
            cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"serve exited:\n{self.log_path.read_text()[-3000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(self.base + "/login", timeout=10).status_code == 200:
                    return
            time.sleep(0.2)
        sys.exit(f"serve did not answer within 60 s; see {self.log_path}")

    def redis_url(self) -> str:
        match = re.search(r"\(Redis (\S+)\)", self.log_path.read_text())
        return match.group(1)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.proc:
            self.log.close()


class MemorySampler(threading.Thread):
    """Sample the RSS of the web and worker processes (and their children) every 50 ms.

    The process tree is read from /proc/PID/task/TID/children: psutil's
    children() scans every process of the machine, which at this rate would
    take a good part of a core away from the processes being measured.
    """

    def __init__(self, root_pid: int):
        super().__init__(daemon=True)
        self.root = root_pid
        self.peak: dict[str, dict[str, int]] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.05):
            self.sample()

    def processes(self) -> dict[str, list[psutil.Process]]:
        """Return the live processes under serve by role: web, worker (with work horses)."""
        found: dict[str, list[psutil.Process]] = {}
        for child in _children(self.root):
            with contextlib.suppress(psutil.Error):
                role = self.role(psutil.Process(child).cmdline())
                found.setdefault(role, []).extend(
                    psutil.Process(pid) for pid in [child, *_descendants(child)])
        return found

    def sample(self) -> None:
        for role, procs in self.processes().items():
            values = []
            for proc in procs:
                with contextlib.suppress(psutil.Error):
                    values.append(proc.memory_info().rss)
            peak = self.peak.setdefault(role, {"max": 0, "sum": 0})
            peak["max"] = max([peak["max"], *values])
            peak["sum"] = max(peak["sum"], sum(values))

    def cpu_seconds(self) -> dict[str, float]:
        """Return the CPU time used so far by each role, ended children included;
        the key "ROLE sys" holds the part spent in the kernel."""
        used: dict[str, float] = {}
        for role, procs in self.processes().items():
            for proc in procs:
                with contextlib.suppress(psutil.Error):
                    t = proc.cpu_times()
                    system = t.system + t.children_system
                    used[role] = used.get(role, 0.0) + t.user + t.children_user + system
                    used[f"{role} sys"] = used.get(f"{role} sys", 0.0) + system
        return used

    @staticmethod
    def role(cmdline: list[str]) -> str:
        if any("gunicorn" in part for part in cmdline):
            return "web"
        return "worker" if "worker" in cmdline else "other"


def _children(pid: int) -> list[int]:
    """Return the ids of a process's children (Linux /proc; psutil elsewhere)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []
    if not os.path.exists(f"/proc/{pid}/task/{pid}/children"):
        with contextlib.suppress(psutil.Error):
            return [p.pid for p in psutil.Process(pid).children()]
        return []
    ids = []
    for task in tasks:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as fh:
            ids += [int(x) for x in fh.read().split()]
    return ids


def _descendants(pid: int) -> list[int]:
    found = []
    for child in _children(pid):
        found += [child, *_descendants(child)]
    return found


# --- the client ---------------------------------------------------------------

class StreamedForm:
    """A multipart/form-data body read from disk as it is sent (the zip is never in memory)."""

    def __init__(self, fields: dict[str, str], name: str, path: Path):
        self.boundary = uuid.uuid4().hex
        head = b"".join(
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
            .encode() for k, v in fields.items())
        head += (f'--{self.boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                 f'filename="{path.name}"\r\nContent-Type: application/zip\r\n\r\n').encode()
        tail = f"\r\n--{self.boundary}--\r\n".encode()
        self.length = len(head) + path.stat().st_size + len(tail)
        self.parts = [io.BytesIO(head), open(path, "rb"), io.BytesIO(tail)]

    def __len__(self) -> int:
        return self.length

    def read(self, size: int = -1) -> bytes:
        while self.parts:
            chunk = self.parts[0].read(1 << 20 if size is None or size < 0 else max(size, 1 << 16))
            if chunk:
                return chunk
            self.parts.pop(0).close()
        return b""


class Client:
    """A browser-like session: login cookie and the CSRF token of each form."""

    def __init__(self, base: str):
        self.base, self.http = base, requests.Session()

    def token(self, path: str) -> str:
        page = self.http.get(self.base + path)
        page.raise_for_status()
        return CSRF_RE.search(page.text).group(1)

    def post_form(self, path: str, data: dict) -> requests.Response:
        """Fill the form shown at `path` and send it; exit when it is refused."""
        data = {**data, "csrf_token": self.token(path)}
        response = self.http.post(self.base + path, data=data, allow_redirects=False)
        if response.status_code >= 400:
            sys.exit(f"POST {path} answered {response.status_code}: {response.text[:500]}")
        return response

    def login_and_create_project(self) -> None:
        self.post_form("/login", {"username": "bench", "password": PASSWORD})
        self.post_form("/projects/new", {"label": PROJECT, "name": "Benchmark",
                                         "accessibility": "private"})

    def upload(self, zip_path: Path, session: str) -> tuple[dict, float]:
        """POST the zip through the upload form; return (its JSON answer, seconds taken)."""
        fields = {"csrf_token": self.token("/upload"), "project": PROJECT, "subject": SUBJECT,
                  "session": session, "session_date": STUDY_DATE}
        body = StreamedForm(fields, "file", zip_path)
        start = time.perf_counter()
        response = self.http.post(
            self.base + "/upload", data=body, headers={
                "Accept": "application/json",
                "Content-Type": f"multipart/form-data; boundary={body.boundary}"})
        if response.status_code != 202:
            sys.exit(f"upload answered {response.status_code}: {response.text[:500]}")
        return response.json(), time.perf_counter() - start

    def wait_done(self, api: str, timeout: float) -> dict:
        """Poll the upload until it ends; return its report."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            report = self.http.get(self.base + api).json()
            if report["status"] in ("DONE", "FAILED"):
                return report
            # Slow enough not to load the web process much: the figure comes
            # from the upload's own created and finished times.
            time.sleep(0.25)
        sys.exit(f"the upload did not end within {timeout:.0f} s")

    def prearchive_id(self) -> int:
        page = self.http.get(self.base + "/prearchive/").text
        return int(re.search(r'href="/prearchive/(\d+)"', page).group(1))

    def archive(self, prearchive_id: int, session: str, timeout: float = 120) -> float:
        """Archive a prearchive session; return seconds until its archive page answers."""
        page = f"/projects/{PROJECT}/sessions/{session}"
        token = self.token(f"/prearchive/{prearchive_id}")
        start = time.perf_counter()
        self.http.post(f"{self.base}/prearchive/{prearchive_id}/archive",
                       data={"csrf_token": token}, allow_redirects=False).raise_for_status()
        while time.perf_counter() - start < timeout:
            if self.http.get(self.base + page, allow_redirects=False).status_code == 200:
                return time.perf_counter() - start
            time.sleep(0.01)
        sys.exit(f"the session was not archived within {timeout:.0f} s")


def job_times(redis_url: str, queue_name: str, timeline: bool = False) -> dict[str, list[float]]:
    """Return the run time of each finished job of the queue, by function name."""
    from redis import Redis
    from rq import Queue
    from rq.job import Job

    conn = Redis.from_url(redis_url)
    queue = Queue(queue_name, connection=conn)
    failed = queue.failed_job_registry.get_job_ids()
    if failed:
        print(f"warning: {len(failed)} job(s) failed: {failed}", file=sys.stderr)
    jobs = [job for job in Job.fetch_many(queue.finished_job_registry.get_job_ids(),
                                          connection=conn)
            if job and job.started_at and job.ended_at]
    jobs.sort(key=lambda job: job.started_at)
    times: dict[str, list[float]] = {}
    for job in jobs:
        name = job.func_name.rsplit(".", 1)[-1]
        times.setdefault(name, []).append((job.ended_at - job.started_at).total_seconds())
        if timeline:
            start = (job.started_at - jobs[0].enqueued_at).total_seconds()
            print(f"  {name:<16} {job.worker_name or '':>34}  enqueued "
                  f"{(job.enqueued_at - jobs[0].enqueued_at).total_seconds():6.2f}  started "
                  f"{start:6.2f}  ran {times[name][-1]:5.2f} s")
    return times


# --- the run ------------------------------------------------------------------

def run(args, tmp: Path, database_url: str) -> dict:
    """Upload the zip `args.rounds` times, with the bare loop before, between and after."""
    zip_path = make_zip(args.count, args.series, args.size)
    bare = [bare_loop(zip_path, tmp / "bare")]
    server, rounds = Server(tmp, database_url, args), []
    try:
        server.start()
        sampler = MemorySampler(server.proc.pid)
        sampler.start()
        client = Client(server.base)
        client.login_and_create_project()
        for n in range(args.rounds):
            rounds.append(one_round(args, client, sampler, zip_path, f"BENCH{n + 1}", bare[0][2]))
            bare.append(bare_loop(zip_path, tmp / "bare"))
        sampler.stopping.set()
        sampler.join()
        jobs = job_times(server.redis_url(), server.queue, args.timeline)
    finally:
        server.stop()
    for n, r in enumerate(rounds):
        # The bare loop ran just before and just after: the machine's mood in between.
        r["bare"] = (bare[n][0] + bare[n + 1][0]) / 2
    return {"zip": zip_path, "files": bare[0][2], "bare": bare, "rounds": rounds,
            "jobs": jobs, "memory": sampler.peak}


def one_round(args, client: Client, sampler: MemorySampler, zip_path: Path, session: str,
              files: int) -> dict:
    """Upload the zip as `session`, wait until it is READY, archive it; return the figures."""
    cpu_before = sampler.cpu_seconds()
    answer, upload_seconds = client.upload(zip_path, session)
    report = client.wait_done(answer["api"], timeout=max(600, args.count / 10))
    time.sleep(0.5)  # let the last work horse end, so that its CPU time is counted
    cpu = {k: v - cpu_before.get(k, 0.0) for k, v in sampler.cpu_seconds().items()}
    if report["status"] != "DONE" or report["stored"] != files:
        sys.exit(f"the upload did not store all files: {report}")
    archive_seconds = client.archive(client.prearchive_id(), session)
    created, finished = (dt.datetime.fromisoformat(report[k].rstrip("Z"))
                         for k in ("created", "finished"))
    return {"upload": upload_seconds, "ready": (finished - created).total_seconds(),
            "cpu": cpu, "archive": archive_seconds}


def show(args, r: dict) -> None:
    """Print the figures as a table, each goal with ok or MISSED."""
    mb, n = 2**20, r["files"]
    unpacked = sum(i.file_size for i in zipfile.ZipFile(r["zip"]).infolist())
    redis = f"Redis {args.redis_url}" if args.redis_url else "embedded Redis"
    print(f"\nScanyard ingest: {n} MR instances {args.size}x{args.size} in "
          f"{args.series} series, zip {r['zip'].stat().st_size / mb:.0f} MB "
          f"({unpacked / mb:.0f} MB unpacked)\nserve: {args.workers} workers, "
          f"{args.web_workers} web processes, {args.database}, {redis}, "
          f"batches of {args.batch_size}\n")
    bare_cpu = statistics.median(b[1] for b in r["bare"]) / n * 1000
    bare_sys = statistics.median(b[3] for b in r["bare"]) / n * 1000
    print(f"  bare loop (1 process: unzip, read header, sha256, write; no fsync): "
          f"{' / '.join(f'{b[0]:.2f}' for b in r['bare'])} s,\n  CPU {bare_cpu:.2f} ms/instance "
          f"({bare_sys:.2f} sys)\n")
    print("  round  upload  ->READY  inst/s  bare loop  ratio  CPU ms/inst: workers (sys)"
          "  web  archive")
    for i, x in enumerate(r["rounds"], 1):
        print(f"  {i:5}  {x['upload']:5.2f}s  {x['ready']:6.2f}s  {n / x['ready']:6.0f}  "
              f"{x['bare']:8.2f}s  {x['bare'] / x['ready']:4.2f}x  "
              f"{x['cpu'].get('worker', 0) / n * 1000:19.2f} "
              f"({x['cpu'].get('worker sys', 0) / n * 1000:.2f})  "
              f"{x['cpu'].get('web', 0) / n * 1000:4.2f}  {x['archive']:6.2f}s")
    ratios = [x["bare"] / x["ready"] for x in r["rounds"]]
    ratio = statistics.median(ratios)
    jobs = {name: (len(t), sum(t), max(t)) for name, t in r["jobs"].items()}
    archive_job = jobs.get("archive_session", (0, 0.0, 0.0))[2]
    web, worker = r["memory"].get("web", {}), r["memory"].get("worker", {})
    largest = max(web.get("max", 0), worker.get("max", 0)) / mb
    print()
    rows = [
        ("Scanyard rate / bare loop rate (median, range)",
         f"{ratio:.2f} x", f"{min(ratios):.2f}-{max(ratios):.2f}",
         _goal(ratio >= GOAL_RATIO, f">= {GOAL_RATIO} x")),
    ]
    rows += [(f"jobs {name}: x{count / args.rounds:.0f} per round, time per round",
              f"{total / args.rounds:.2f} s", "", "")
             for name, (count, total, _) in sorted(jobs.items()) if name != "archive_session"]
    rows += [
        ("archive: the job (slowest round)", f"{archive_job:.2f} s", "",
         _goal(archive_job < GOAL_ARCHIVE_S, f"< {GOAL_ARCHIVE_S:.0f} s")),
        ("peak RSS, web: largest process / all", f"{web.get('max', 0) / mb:.0f} MB",
         f"{web.get('sum', 0) / mb:.0f} MB", ""),
        ("peak RSS, workers + work horses: largest / all",
         f"{worker.get('max', 0) / mb:.0f} MB", f"{worker.get('sum', 0) / mb:.0f} MB", ""),
        ("largest process", f"{largest:.0f} MB", "",
         _goal(largest < GOAL_MEMORY_MB, f"< {GOAL_MEMORY_MB} MB")),
    ]
    for label, a, b, goal in rows:
        print(f"  {label:<52} {a:>8} {b:>10}  {goal}")
    print("\nFor scale: Orthanc's zip import ran at ~480 inst/s on such a machine; "
          "the aim is three times that.")


def _goal(met: bool, text: str) -> str:
    return f"goal {text}: {'ok' if met else 'MISSED'}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="instances in the zip")
    parser.add_argument("--series", type=int, default=4, help="series they are spread over")
    parser.add_argument("--size", type=int, default=256, help="rows and columns of each image")
    parser.add_argument("--workers", type=int, default=2, help="RQ workers of serve")
    parser.add_argument("--web-workers", type=int, default=2, help="web processes of serve")
    parser.add_argument("--batch-size", type=int,
                        default=int(os.environ.get("SCANYARD_BATCH_SIZE", 250)))
    parser.add_argument("--database-url", help="a PostgreSQL server (default: SQLite)")
    parser.add_argument("--redis-url", help="a Redis server (default: the embedded one)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="uploads of the zip, each between two runs of the bare loop")
    parser.add_argument("--timeline", action="store_true", help="print when each job ran")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    args.database = "PostgreSQL" if args.database_url else "SQLite"
    tmp = Path(tempfile.mkdtemp(prefix="scanyard-bench-"))
    try:
        if args.database_url:
            with postgres_database(args.database_url) as url:
                result = run(args, tmp, url)
        else:
            result = run(args, tmp, f"sqlite:///{tmp / 'scanyard.db'}")
        show(args, result)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
