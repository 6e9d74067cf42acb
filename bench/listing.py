"""Benchmark: how fast the listing pages and REST lists answer with 1,000,000 files indexed.

    .venv/bin/python bench/listing.py [--database-url postgresql://postgres@127.0.0.1:5432/test]
        [--projects 10 --subjects 50 --sessions 4 --scans 10 --files 50]
        [--requests 50] [--queries] [--json out.json]

It makes a Scanyard database of its own (SQLite in a temporary folder, or a
new PostgreSQL database on the server of --database-url, dropped at the end),
brings it up to date with the migrations (as ``init-db`` does), and fills it
with bulk inserts: by default 10 projects x 50 subjects x 4 sessions x 10
scans x 50 files = 1,000,000 DICOM File rows (no files on disk), a SNAPSHOTS
resource of two files per scan as the build makes them, and prearchive
sessions and uploads for the prearchive and "Needs attention" pages.

Then, through Flask's test client (no HTTP server: the figures are the
application's own time), logged in as a site admin and as a plain member of
one project (access filtering changes the queries), it asks each listing
REQUESTS times, each time for another subject, session or scan of that
project, and prints the median and 95th percentile latency, and with
--queries how many SQL statements one request runs. Goal: p95 under 200 ms.
Not a test.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.listing_data import PASSWORD, Shape, fill, postgres_database, settle  # noqa: E402
from workers.gunicorn_conf import post_worker_init  # noqa: E402

GOAL_P95_MS = 200


def make_app(tmp: Path, database_url: str):
    from app import create_app

    return create_app({
        "SECRET_KEY": "bench", "WTF_CSRF_ENABLED": False,
        "DATA_DIR": str(tmp / "data"), "DATABASE_URL": database_url,
        "PASSWORD_HASH_METHOD": "pbkdf2:sha256:1000",
    })


# --- the requests -----------------------------------------------------------------

def listings(picked: dict, rng: random.Random) -> dict[str, callable]:
    """Return {name: function returning the next URL to ask} for every listing."""
    p = picked["project"]

    def session():
        return rng.choice(picked["sessions"])

    def scan_path():
        return f"/projects/{p}/sessions/{session()}/scans/{rng.choice(picked['scans'])}"

    def rest_scan():
        label = session()
        return f"/data/projects/{p}/subjects/{label.split('_')[0]}/experiments/{label}"

    scan_files = "/scans/{}/resources/DICOM/files?format=json"
    return {
        "projects index /": lambda: "/",
        "project page": lambda: f"/projects/{p}",
        "subject page": lambda: f"/projects/{p}/subjects/{rng.choice(picked['subjects'])}",
        "session page": lambda: f"/projects/{p}/sessions/{session()}",
        "scan page (files)": scan_path,
        "search": lambda: f"/search?q={rng.choice(picked['subjects'])}",
        "search (no match)": lambda: "/search?q=nothing-like-this",
        "prearchive": lambda: "/prearchive/",
        "needs attention": lambda: "/attention",
        "REST projects": lambda: "/data/projects?format=json",
        "REST subjects": lambda: f"/data/projects/{p}/subjects?format=json",
        "REST experiments": lambda: f"/data/projects/{p}/experiments?format=json",
        "REST scans": lambda: rest_scan() + "/scans?format=json",
        "REST scan files": lambda: rest_scan() + scan_files.format(rng.choice(picked["scans"])),
    }


class QueryCounter:
    """Count the SQL statements and their time while active."""

    def __init__(self, engine):
        from sqlalchemy import event

        self.active, self.count, self.seconds, self._start = False, 0, 0.0, 0.0
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, *_args):
        self._start = time.perf_counter()

    def _after(self, *_args):
        if self.active:
            self.count += 1
            self.seconds += time.perf_counter() - self._start

    @contextlib.contextmanager
    def counting(self):
        self.active, self.count, self.seconds = True, 0, 0.0
        try:
            yield self
        finally:
            self.active = False


def login(app, username: str):
    client = app.test_client()
    response = client.post("/login", data={"username": username, "password": PASSWORD})
    if response.status_code != 303:
        sys.exit(f"could not log in as {username}: {response.status_code}")
    return client


USERS = ("bench-admin", "bench-member")


def measure(app, picked: dict, requests: int, counter: QueryCounter) -> dict:
    """Return {user: {listing: {"median", "p95", "max", "queries", "sql_ms"}}}."""
    clients = {user: login(app, user) for user in USERS}
    post_worker_init()  # as serve's web processes do once the app is loaded
    results: dict = {user: {} for user in USERS}
    for name, next_url in listings(picked, random.Random(11)).items():
        samples: dict[str, list[float]] = {user: [] for user in USERS}
        for n in range(requests + 2):  # the first two warm the caches, as a server's are
            for user in USERS:  # in turns, so that both meet the same conditions
                url = next_url()
                start = time.perf_counter()
                _get(clients[user], url)
                if n >= 2:
                    samples[user].append((time.perf_counter() - start) * 1000)
        for user in USERS:
            with counter.counting():
                _get(clients[user], next_url())
            results[user][name] = {
                "median": statistics.median(samples[user]),
                "p95": percentile(samples[user], 95), "max": max(samples[user]),
                "queries": counter.count, "sql_ms": counter.seconds * 1000}
    return results


def _get(client, url: str):
    response = client.get(url)
    if response.status_code != 200:
        sys.exit(f"GET {url} answered {response.status_code}: {response.text[:300]}")
    return response


def percentile(samples: list[float], pct: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[pct - 1]


# --- the run -----------------------------------------------------------------------

def run(shape: Shape, database_url: str | None, requests: int, tmp: Path,
        keep: bool = False) -> dict:
    """Fill a new database with `shape` and time the listings; return the figures."""
    from flask_migrate import upgrade

    from models import db

    with (postgres_database(database_url, keep) if database_url
          else contextlib.nullcontext(f"sqlite:///{tmp / 'scanyard.db'}")) as url:
        app = make_app(tmp, url)
        with app.app_context():
            logging.disable(logging.INFO)  # the migrations' log lines
            upgrade(directory=app.extensions["migrate"].directory)
            logging.disable(logging.NOTSET)
            start = time.perf_counter()
            picked = fill(shape)
            settle()
            fill_seconds = time.perf_counter() - start
            counter = QueryCounter(db.engine)
            db.session.remove()
        timings = measure(app, picked, requests, counter)
        with app.app_context():
            db.session.remove()
            db.engine.dispose()
    return {"database": "PostgreSQL" if database_url else "SQLite", "files": shape.total_files,
            "fill_seconds": fill_seconds, "requests": requests, "timings": timings,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def show(result: dict, queries: bool) -> None:
    print(f"\nListings with {result['files']:,} DICOM files indexed ({result['database']}, "
          f"filled in {result['fill_seconds']:.0f} s); {result['requests']} requests each, in ms")
    admin, member = result["timings"]["bench-admin"], result["timings"]["bench-member"]
    head = f"  {'listing':<20} {'admin median':>12} {'p95':>7}  {'member median':>13} {'p95':>7}"
    print(head + ("  queries (admin/member)" if queries else ""))
    worst = 0.0
    for name, a in admin.items():
        m = member[name]
        worst = max(worst, a["p95"], m["p95"])
        line = (f"  {name:<20} {a['median']:>12.1f} {a['p95']:>7.1f}  {m['median']:>13.1f} "
                f"{m['p95']:>7.1f}")
        if queries:
            line += f"  {a['queries']:>3} / {m['queries']:<3} ({a['sql_ms']:.1f} ms SQL)"
        print(line)
    verdict = "ok" if worst < GOAL_P95_MS else "MISSED"
    print(f"  worst p95 {worst:.0f} ms: goal < {GOAL_P95_MS} ms {verdict}; peak RSS of this "
          f"process {result['peak_rss_mb']:.0f} MB")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    defaults = Shape()
    for field in ("projects", "subjects", "sessions", "scans", "files", "prearchive"):
        parser.add_argument(f"--{field}", type=int, default=getattr(defaults, field),
                            help=f"default {getattr(defaults, field)}")
    parser.add_argument("--no-snapshots", action="store_true",
                        help="no SNAPSHOTS resource (2 files) per scan")
    parser.add_argument("--requests", type=int, default=50, help="requests per listing")
    parser.add_argument("--database-url", help="a PostgreSQL server (default: SQLite)")
    parser.add_argument("--queries", action="store_true",
                        help="show the SQL statements of one request and their time (SQLite "
                        "reads rows lazily: its figure leaves the reading out)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--keep", action="store_true",
                        help="keep the database (and the temporary folder) to look into")
    args = parser.parse_args(argv)
    shape = Shape(args.projects, args.subjects, args.sessions, args.scans, args.files,
                  args.prearchive, not args.no_snapshots)
    tmp = Path(tempfile.mkdtemp(prefix="scanyard-listing-"))
    try:
        result = run(shape, args.database_url, args.requests, tmp, args.keep)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    show(result, args.queries)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
