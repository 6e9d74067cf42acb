"""Benchmark: the whole of Scanyard in one run, one table, beside its references.

    .venv/bin/python bench/run_all.py [--studies 4 --series 5 --images 100 --size 256]
        [--skip dicom,zip,listing] [--listing-files 50] [--listing-requests 50]
        [--rounds 3] [--zip-rounds 3] [--database-url postgresql://...] [--json figures.json]
        [--site-script on|off]

Makes the data set (default 4 studies x 5 series x 100 MR images of 256x256,
from tests/dicomgen.make_series; one folder per study and a zip of them all),
then measures, in this order:

  dicom    the DICOM receivers of bench/scp_ingest.py on that data, over one
           association (everything) and four at once (a study each): Scanyard
           (`flask scp` and a worker, until every session is READY), a bare
           pynetdicom receiver, and DCMTK's storescp and Orthanc when installed;
           then Scanyard archives the four received sessions (RQ's job times);
  zip      the HTTP upload of a zip to READY through bench/ingest_zip.py (its
           bare single-process loop and memory included; it makes its own zip
           of as many instances, one study), and the same zip POSTed to
           Orthanc's /instances;
  listing  bench/listing.py in a process of its own: pages and REST lists with
           1,000,000 files indexed (--listing-files 5 for 100,000).

and prints one table: Scanyard's figures, the references', the ratios and the
goals of issue 9, and the peak memory of each process (the kernel's VmHWM,
read every 0.1 s over each process tree). Absolute rates on a shared 2-core
machine vary by 2x between runs; the ratios, measured in the same run, much
less. About 6 minutes with the defaults. Not a test.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from bench import cores, harness, orthanc, scp_ingest  # noqa: E402

PROJECT = "BENCH"
STEPS = ("dicom", "zip", "listing")


@dataclass
class Data:
    parts: list[Path]   # one folder per study (one association each)
    all: Path           # every file (hard links), for one association
    zip: Path
    count: int
    bytes: int


def make_data(folder: Path, studies: int, series: int, images: int, size: int) -> Data:
    """Write the studies as DICOM files and one zip; each names its project in its comments."""
    from pydicom.uid import generate_uid

    from tests.dicomgen import make_series

    parts, total, count = [], 0, 0
    (folder / "all").mkdir(parents=True)
    with zipfile.ZipFile(folder / "data.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for st in range(studies):
            part, uid, subject = folder / f"study{st + 1}", generate_uid(), f"BENCH{st + 1:02d}"
            part.mkdir()
            parts.append(part)
            for se in range(series):
                for n, data in enumerate(make_series(
                        uid, images, series_number=se + 1, size=size, patient_id=subject,
                        patient_name=f"BENCH^{subject}", description=f"series {se + 1}",
                        PatientComments=f"Project:{PROJECT} Subject:{subject} "
                                        f"Session:{subject}_MR")):
                    name = f"s{st + 1}_{se + 1:02d}_{n + 1:04d}.dcm"
                    (part / name).write_bytes(data)
                    os.link(part / name, folder / "all" / name)
                    zf.writestr(f"{subject}/series{se + 1}/{name}", data)
                    total, count = total + len(data), count + 1
    return Data(parts, folder / "all", folder / "data.zip", count, total)


# --- memory -------------------------------------------------------------------------

def _tree(pid: int) -> list[int]:
    """Return a process and its descendants (Linux /proc; cheap enough to poll often)."""
    found = [pid]
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as fh:
                for child in fh.read().split():
                    found += _tree(int(child))
    return found


def _high_water(pid: int) -> int:
    """Return the peak resident memory of a process so far, in bytes (VmHWM)."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakMemory(threading.Thread):
    """The largest peak of any one process in each tree, read every 0.1 s until stop()."""

    def __init__(self, roots: dict[str, int]):
        super().__init__(daemon=True)
        self.roots, self.peak = roots, dict.fromkeys(roots, 0)
        self.stopping = threading.Event()
        self.start()

    def run(self) -> None:
        while True:
            for role, pid in self.roots.items():
                self.peak[role] = max([self.peak[role], *map(_high_water, _tree(pid))])
            if self.stopping.wait(0.1):
                return

    def stop(self) -> dict[str, float]:
        """Return the peaks in MB."""
        self.stopping.set()
        self.join()
        return {role: peak / 2**20 for role, peak in self.peak.items()}


# --- DICOM receivers and archiving ---------------------------------------------------

def bench_app(work: Path, redis_url: str):
    """Return an app on a Scanyard receiver's database, data folder and queue."""
    from app import create_app

    return create_app({"DATABASE_URL": f"sqlite:///{work / 'scanyard.db'}",
                       "DATA_DIR": str(work / "data"), "REDIS_URL": redis_url,
                       "QUEUE_NAME": f"bench-{work.name}", "SECRET_KEY": "bench",
                       "WTF_CSRF_ENABLED": False, "PASSWORD_HASH_METHOD": "pbkdf2:sha256:1000"})


def add_project_and_admin(app) -> None:
    from blueprints.auth import set_password
    from models import Project, User, db

    with app.app_context():
        admin = User(username="bench", is_admin=True)
        set_password(admin, "bench-password")
        db.session.add_all([Project(label=PROJECT, name=PROJECT), admin])
        db.session.commit()


def archive_everything(app, redis_url: str, timeout: float = 300) -> dict:
    """Archive every READY prearchive session; return the wall time and RQ's job times."""
    from redis import Redis
    from rq import Queue
    from rq.job import Job
    from sqlalchemy import func, select

    from models import PrearchiveSession, db

    client = app.test_client()
    client.post("/login", data={"username": "bench", "password": "bench-password"})
    with app.app_context():
        ids = db.session.scalars(select(PrearchiveSession.id)).all()
    start = time.perf_counter()
    for ps_id in ids:
        answer = client.post(f"/prearchive/{ps_id}/archive")
        if answer.status_code != 303:
            raise RuntimeError(f"archiving answered {answer.status_code}")
    while time.perf_counter() - start < timeout:
        with app.app_context():
            left = db.session.scalar(select(func.count()).select_from(PrearchiveSession))
            db.session.remove()
        if not left:
            break
        time.sleep(0.05)
    wall = time.perf_counter() - start
    conn = Redis.from_url(redis_url)
    registry = Queue(app.config["QUEUE_NAME"], connection=conn).finished_job_registry
    jobs = [(job.ended_at - job.started_at).total_seconds()
            for job in Job.fetch_many(registry.get_job_ids(), connection=conn)
            if job and job.func_name.endswith("archive_session") and job.ended_at]
    return {"sessions": len(ids), "wall": wall, "jobs": sorted(jobs)}


def receive(kind: str, data: Data, associations: int, work: Path, redis_url: str) -> dict:
    """Send the data to one receiver; return its rate, and for Scanyard until READY,
    its memory and (one association) the archiving of what it received."""
    scp_ingest.settle_disk()
    if kind == "scanyard":
        receiver = scp_ingest.Scanyard(work, redis_url)
        app = bench_app(work, redis_url)
        add_project_and_admin(app)
        memory = PeakMemory({"receiver": receiver.proc.pid,
                             "receiver's worker": receiver.worker.pid})
    elif kind == "orthanc":
        receiver = orthanc.Orthanc(work)
        memory = PeakMemory({"Orthanc": receiver.proc.pid})
    else:
        receiver = scp_ingest.Bare(work) if kind == "bare" else \
            scp_ingest.StoreSCP(work, fork=associations > 1)
        memory = None
    try:
        folders = data.parts if associations > 1 else [data.all]
        seconds = scp_ingest.send(receiver.port, folders, receiver.called)
        result = {"rate": data.count / seconds, "mb_per_s": data.bytes / seconds / 1e6}
        if kind == "scanyard":
            result["ready"] = seconds + receiver.until_ready(data.count)
            if associations == 1:
                result["archive"] = archive_everything(app, redis_url)
        if kind == "orthanc" and receiver.instances() != data.count:
            raise RuntimeError("Orthanc did not store every instance")
        return result | ({"memory": memory.stop()} if memory else {})
    finally:
        if memory:
            memory.stopping.set()
        receiver.stop()


def dicom_step(data: Data, tmp: Path, rounds: int) -> dict:
    """Return {"KIND xN": figures} for each receiver and 1 or 4 associations, the medians
    of `rounds` rounds (each starting with another receiver, as bench/scp_ingest.py does)."""
    redis_url, _server = scp_ingest.redis_for(tmp)
    kinds = ["scanyard", "bare"] + (["storescp"] if scp_ingest.dcmtk_tool("storescp") else []) \
        + (["orthanc"] if orthanc.available() else [])
    runs: dict[str, list[dict]] = {}
    # Orthanc keeps a copy as large as the data; the others write it once.
    keep = harness.room_to_keep(tmp, data.bytes * rounds * 2 * (len(kinds) + 1))
    for round_no in range(rounds):
        order = kinds[round_no % len(kinds):] + kinds[:round_no % len(kinds)]
        for associations in (1, 4):
            for kind in order:
                work = tmp / f"{kind}{associations}-{uuid.uuid4().hex[:6]}"
                result = receive(kind, data, associations, work, redis_url)
                runs.setdefault(f"{kind} x{associations}", []).append(result)
                print(f"  {kind} x{associations}: {result['rate']:.0f} instances/s", flush=True)
                if not keep:
                    shutil.rmtree(work, ignore_errors=True)
    return {key: _median_run(results) for key, results in runs.items()}


def _median_run(results: list[dict]) -> dict:
    """Return the median of each figure over the rounds, the rate of each round
    (`rates`, in order), the largest memory."""
    merged = {key: statistics.median(r[key] for r in results)
              for key in ("rate", "mb_per_s", "ready") if key in results[0]}
    merged["rates"] = [r["rate"] for r in results]
    if "archive" in results[0]:  # the round whose archiving took the median time
        archives = sorted((r["archive"] for r in results), key=lambda a: sum(a["jobs"]))
        merged["archive"] = archives[len(archives) // 2]
    if "memory" in results[0]:
        merged["memory"] = {role: max(r["memory"][role] for r in results)
                            for role in results[0]["memory"]}
    return merged | {"rounds": len(results)}


# --- zip upload ------------------------------------------------------------------------

def zip_step(args, data: Data, tmp: Path, after_dicom: bool = False) -> dict:
    """Return Scanyard's zip upload figures and Orthanc's for the same zip: the one
    bench/ingest_zip.py made (it makes its own), else the data set's."""
    if after_dicom:
        # The receivers' sessions were built with the site script, which
        # replaces each file (a new file, renamed over the old): thousands of
        # inodes freed in the last minute, among which the bare loop's and
        # Scanyard's new files would be made. Settled as for Orthanc's import.
        scp_ingest.settle_disk(75)
    results = {"scanyard": scanyard_zip(args, data)}
    if orthanc.available():
        zip_path = Path(results["scanyard"].get("zip") or data.zip)
        with zipfile.ZipFile(zip_path) as zf:
            members = [i for i in zf.infolist() if not i.is_dir()]
        # bench/ingest_zip.py removed its files as it ended: past the minute in
        # which new files cost more (harness.room_to_keep), as they did for it.
        scp_ingest.settle_disk(75)
        server = orthanc.Orthanc(tmp / "orthanc-zip")
        memory = PeakMemory({"Orthanc": server.proc.pid})
        try:
            seconds, stored = server.upload_zip(zip_path)
        finally:
            results["orthanc memory"] = memory.stop()
            server.stop()
        if stored != len(members):
            raise RuntimeError(f"Orthanc stored {stored} of {len(members)} instances")
        results["orthanc"] = {"rate": stored / seconds,
                              "mb_per_s": sum(i.file_size for i in members) / seconds / 1e6}
    return results


def scanyard_zip(args, data: Data) -> dict:
    """Return the zip upload figures of bench/ingest_zip.py: zip (its path),
    files, rate (instances/s to READY), mb_per_s, bare_ratio (over its bare
    single-process loop), archive_s (until the archived session's page
    answers), archive_job_s and memory ({process: MB}); {"missing": why}
    when it fails."""
    argv = ["--count", str(data.count), "--series", str(args.studies * args.series),
            "--size", str(args.size), "--rounds", str(args.zip_rounds),
            "--site-script", args.site_script]
    argv += ["--database-url", args.database_url] if args.database_url else []
    out = Path(tempfile.mkstemp(suffix=".json")[1])
    try:
        subprocess.run([sys.executable, str(BENCH / "ingest_zip.py"), *argv, "--json", str(out)],
                       cwd=ROOT, check=True)
        return _ingest_zip_figures(json.loads(out.read_text()))
    except (OSError, ValueError, KeyError, subprocess.CalledProcessError) as exc:
        return {"missing": f"bench/ingest_zip.py failed: {exc}"}
    finally:
        out.unlink(missing_ok=True)


def _ingest_zip_figures(shown: dict) -> dict:
    rounds, mb = shown["rounds"], 2**20
    ready = statistics.median(r["ready"] for r in rounds)
    bare_ratios = [r["bare"] / r["ready"] for r in rounds]
    unpacked = sum(i.file_size for i in zipfile.ZipFile(shown["zip"]).infolist())
    memory = shown.get("memory", {})
    return {"zip": shown["zip"], "rate": shown["files"] / ready,
            "rates": [shown["files"] / r["ready"] for r in rounds],
            "mb_per_s": unpacked / ready / 1e6,
            "bare_ratio": statistics.median(bare_ratios), "bare_ratios": bare_ratios,
            "archive_s": max(r["archive"] for r in rounds),
            "archive_job_s": max(shown.get("jobs", {}).get("archive_session") or [0.0]),
            "files": shown["files"],
            "memory": {"web (zip upload)": memory.get("web", {}).get("max", 0) / mb,
                       "worker (zip upload)": memory.get("worker", {}).get("max", 0) / mb}}


# --- listings --------------------------------------------------------------------------

def listing_step(args, tmp: Path) -> dict:
    out = tmp / "listing.json"
    cmd = [sys.executable, str(BENCH / "listing.py"), "--json", str(out),
           "--files", str(args.listing_files), "--requests", str(args.listing_requests)]
    cmd += ["--database-url", args.database_url] if args.database_url else []
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"bench/listing.py: {(done.stderr or done.stdout)[-500:]}")
    return json.loads(out.read_text())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=4)
    parser.add_argument("--series", type=int, default=5, help="series per study")
    parser.add_argument("--images", type=int, default=100, help="images per series")
    parser.add_argument("--size", type=int, default=256, help="rows and columns of each image")
    parser.add_argument("--skip", default="", help=f"comma-separated steps of {STEPS}")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the DICOM step")
    parser.add_argument("--zip-rounds", type=int, default=3, help="uploads of the zip")
    parser.add_argument("--listing-files", type=int, default=50,
                        help="files per scan of the listing data (50: 1,000,000 files)")
    parser.add_argument("--listing-requests", type=int, default=50)
    parser.add_argument("--database-url", help="PostgreSQL for the zip upload and listings")
    parser.add_argument("--site-script", choices=("on", "off"), default="on",
                        help="the site anonymization script in the zip upload (on, as installed)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    skip = {s for s in args.skip.split(",") if s}
    if skip - set(STEPS):
        parser.error(f"unknown steps: {', '.join(sorted(skip - set(STEPS)))}")
    if "dicom" not in skip and scp_ingest.dcmtk_tool("storescu") is None:
        parser.error("the DICOM step needs DCMTK's storescu (apt-get install dcmtk), "
                     "or --skip dicom")
    from bench.report import show

    figures = {"started": dt.datetime.now().isoformat(timespec="minutes"),
               "cores": os.cpu_count(), "load": os.getloadavg()[0],
               "parallel": cores.speedup()["speedup"]}
    if "zip" not in skip:
        figures["site_script"] = args.site_script
    (ROOT / "instance").mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="run-all-", dir=ROOT / "instance"))
    try:
        figures["file_creation"] = cores.file_creation(tmp / "file-creation")
        print("Making the data set ...", flush=True)
        data = make_data(tmp / "data", args.studies, args.series, args.images, args.size)
        figures["data"] = {"count": data.count, "bytes": data.bytes,
                           "zip_bytes": data.zip.stat().st_size, "studies": args.studies,
                           "series": args.series, "images": args.images, "size": args.size}
        steps = {"dicom": lambda: dicom_step(data, tmp, args.rounds),
                 "zip": lambda: zip_step(args, data, tmp, after_dicom="dicom" not in skip),
                 "listing": lambda: listing_step(args, tmp)}
        for name in STEPS:
            if name not in skip:
                print(f"Step {name} ...", flush=True)
                try:
                    figures[name] = steps[name]()
                except Exception as exc:  # one step failing leaves the others' figures
                    figures[name] = {"missing": f"failed: {exc}"}
                    print(f"  {name} failed: {exc}", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    show(figures)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
