"""A Scanyard ``serve`` under test for the benchmarks: start it on a free port with
a temporary data folder and database, drive it over HTTP as a browser does,
and watch the memory and CPU time of its processes.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
PROJECT, SUBJECT, STUDY_DATE = "BENCH", "SUBJ1", "2024-01-15"
PASSWORD = "bench-password-1"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def room_to_keep(folder: Path, needed: int) -> bool:
    """Whether the disk of `folder` holds `needed` more bytes and 2 GB to spare.

    The benchmarks keep what each run writes until they end, when there is
    room: on ext4 without a journal (as on this kind of machine) a file
    created in the minute after thousands were deleted (six, until they
    are written back) costs up to ten times more: the kernel skips the
    inodes freed in that time one by one. Each run would pay for the
    cleanup of the run before it.
    """
    if shutil.disk_usage(folder).free > needed + (2 << 30):
        return True
    print("  (short of disk space: each run's files are removed as it ends, and the next "
          "run\n  creates its files among freshly freed inodes, which may slow it)")
    return False


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
        # Each process's peak and when it was seen first and last (for work
        # horses: which job it ran, see largest_jobs).
        self.by_pid: dict[int, dict] = {}
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
        now = time.time()
        for role, procs in self.processes().items():
            values = []
            for proc in procs:
                with contextlib.suppress(psutil.Error):
                    values.append(proc.memory_info().rss)
                    seen = self.by_pid.setdefault(proc.pid, {"max": 0, "first": now,
                                                             "role": role})
                    seen["max"], seen["last"] = max(seen["max"], values[-1]), now
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


def largest_jobs(sampler: MemorySampler, redis_url: str, queue_name: str,
                 top: int = 3) -> list[tuple[str, int]]:
    """Return (job name, peak RSS) of the `top` largest work horses: each
    horse is matched with the finished job whose run its life overlaps most."""
    from redis import Redis
    from rq import Queue
    from rq.job import Job

    conn = Redis.from_url(redis_url)
    queue = Queue(queue_name, connection=conn)
    runs = [(job.func_name.rsplit(".", 1)[-1],
             job.started_at.replace(tzinfo=dt.UTC).timestamp(),
             job.ended_at.replace(tzinfo=dt.UTC).timestamp())
            for job in Job.fetch_many(queue.finished_job_registry.get_job_ids(),
                                      connection=conn)
            if job and job.started_at and job.ended_at]
    found = []
    for seen in sampler.by_pid.values():
        if seen["role"] != "worker":
            continue
        overlap = {name: min(end, seen["last"]) - max(start, seen["first"])
                   for name, start, end in runs}
        best = max(overlap, key=overlap.get, default=None)
        if best is not None and overlap[best] > 0:
            found.append((best, seen["max"]))
    return sorted(found, key=lambda x: -x[1])[:top]


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


