"""Benchmark: upload a zip of N MR instances to a running ``serve``; time the ingest.

    .venv/bin/python bench/ingest_zip.py [--count 2000] [--series 4] [--workers 2]
        [--database-url postgresql://postgres@127.0.0.1:5432/test]
        [--redis-url redis://127.0.0.1:6379/0] [--batch-size 500] [--rounds 3]
        [--size 256] [--site-script on|off] [--timeline] [--keep] [--json figures.json]

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
database, no fsync. Scanyard does more per file: it hashes it twice (whole,
and the dataset after the file meta), checks the pixel data is complete,
writes what it read into a JSON file per batch, then renames the file into
the prearchive; it flushes each batch's files with one syncfs, and fsyncs
folders and its JSON files.
It repeats the upload --rounds times, each between two runs of the bare loop.
What the bare loops write stays until the end when the disk has room
(harness.room_to_keep says why), flushed to the disk (untimed) before the
next upload, whose batches would otherwise wait for it.
Since absolute times on shared machines vary by 2x from run to run, the
figure that counts is Scanyard's rate as a ratio of the bare loop's.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pydicom
from harness import (
    Client,
    MemorySampler,
    Server,
    job_times,
    largest_jobs,
    postgres_database,
    room_to_keep,
)
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from imaging.anonymize import DEFAULT_SITE_SCRIPT  # noqa: E402

GOAL_RATIO, GOAL_MEMORY_MB, GOAL_ARCHIVE_S = 1.3, 300, 1.0
GOAL_ARCHIVE_FILES = 2000  # the archiving goal is for a session of this many files


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


def bare_loop(zip_path: Path, out: Path, keep: bool = True) -> tuple[float, float, int, float]:
    """Return (seconds, CPU seconds, files, kernel CPU seconds) of
    unzip -> read header -> sha256 -> write, into the new folder `out`
    (removed at once unless `keep`)."""
    out.mkdir(parents=True)
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
    if not keep:
        shutil.rmtree(out)
    # Untimed: written back later, its files would be a batch's to wait for
    # (a batch's syncfs flushes all the filesystem holds, not its own files).
    os.sync()
    return (seconds, after.user + after.system - before.user - before.system, files,
            after.system - before.system)


# --- the run ------------------------------------------------------------------

def run(args, tmp: Path, database_url: str) -> dict:
    """Upload the zip `args.rounds` times, with the bare loop before, between and after."""
    zip_path = make_zip(args.count, args.series, args.size)
    with zipfile.ZipFile(zip_path) as zf:
        unpacked = sum(i.file_size for i in zf.infolist())
    # The bare loops' files, and as much again for the archived rounds.
    keep = room_to_keep(tmp, 2 * (args.rounds + 1) * unpacked)
    bare = [bare_loop(zip_path, tmp / "bare0", keep)]
    server, rounds = Server(tmp, database_url, args), []
    try:
        server.start()
        sampler = MemorySampler(server.proc.pid)
        sampler.start()
        client = Client(server.base)
        client.login_and_create_project()
        if args.site_script == "off":
            client.post_form("/admin/anonymization", {"text": DEFAULT_SITE_SCRIPT})
        for n in range(args.rounds):
            rounds.append(one_round(args, client, sampler, zip_path, f"BENCH{n + 1}", bare[0][2]))
            bare.append(bare_loop(zip_path, tmp / f"bare{n + 1}", keep))
        sampler.stopping.set()
        sampler.join()
        jobs = job_times(server.redis_url(), server.queue, args.timeline)
        largest = largest_jobs(sampler, server.redis_url(), server.queue)
    finally:
        server.stop()
    for n, r in enumerate(rounds):
        # The bare loop ran just before and just after: the machine's mood in between.
        r["bare"] = (bare[n][0] + bare[n + 1][0]) / 2
    return {"zip": zip_path, "files": bare[0][2], "bare": bare, "rounds": rounds,
            "jobs": jobs, "memory": sampler.peak, "largest": largest}


def one_round(args, client: Client, sampler: MemorySampler, zip_path: Path, session: str,
              files: int) -> dict:
    """Upload the zip as `session`, wait until it is READY, archive it; return the figures."""
    cpu_before = sampler.cpu_seconds()
    answer, upload_seconds = client.upload(zip_path, session)
    report = client.wait_done(answer["api"], timeout=max(600, args.count / 10))
    # Read at once, not after the work horses have all ended: the finishing
    # job's is counted alive or reaped, and the snapshot job queued at READY
    # (about 0.4 ms of CPU a file) has run for at most one poll on one core.
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
          f"batches of {args.batch_size}, site anonymization script {args.site_script}\n")
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
        (f"archive: the job (slowest round), {r['files']:,} files", f"{archive_job:.2f} s", "",
         _goal(archive_job < GOAL_ARCHIVE_S, f"< {GOAL_ARCHIVE_S:.0f} s")
         if r["files"] <= GOAL_ARCHIVE_FILES else ""),
        ("peak RSS, web: largest process / all", f"{web.get('max', 0) / mb:.0f} MB",
         f"{web.get('sum', 0) / mb:.0f} MB", ""),
        ("peak RSS, workers + work horses: largest / all",
         f"{worker.get('max', 0) / mb:.0f} MB", f"{worker.get('sum', 0) / mb:.0f} MB", ""),
        ("largest process", f"{largest:.0f} MB", "",
         _goal(largest < GOAL_MEMORY_MB, f"< {GOAL_MEMORY_MB} MB")),
    ]
    rows += [(f"  work horse running {name}", f"{rss / mb:.0f} MB", "", "")
             for name, rss in r.get("largest", [])]
    for label, a, b, goal in rows:
        print(f"  {label:<52} {a:>8} {b:>10}  {goal}")
    print("\nOrthanc's import of the same zip, in the same run: bench/run_all.py.")


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
                        default=int(os.environ.get("SCANYARD_BATCH_SIZE", 500)))
    parser.add_argument("--database-url", help="a PostgreSQL server (default: SQLite)")
    parser.add_argument("--redis-url", help="a Redis server (default: the embedded one)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="uploads of the zip, each between two runs of the bare loop")
    parser.add_argument("--site-script", choices=("on", "off"), default="on",
                        help="the site anonymization script (on, as installed, by default)")
    parser.add_argument("--timeline", action="store_true", help="print when each job ran")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
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
        if args.json:
            Path(args.json).write_text(json.dumps(result, default=str))
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
