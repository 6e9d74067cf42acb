"""Ingest jobs read files outside database transactions: on SQLite a
transaction holds the database's write lock, so other jobs (the batches of
the same upload) and web requests would wait until the files are done.
(The finishing job moves files while it holds the study's lock on purpose:
an upload and the receiver must not both start a session for one study.)"""
from __future__ import annotations

import workers.ingest as ingest
from models import db
from tests.dicomgen import make_study, zip_bytes
from tests.test_upload_flow import upload


def test_ingest_jobs_hold_no_transaction_while_they_work_on_files(
        app, client, run_jobs, make_project, monkeypatch):
    make_project("study1")
    _, files = make_study(series=2, per_series=3)
    seen = []

    def watch(module, name):
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            seen.append((name, db.session().in_transaction()))
            return real(*args, **kwargs)
        monkeypatch.setattr(module, name, wrapper)

    watch(ingest, "list_members")                   # extract_upload lists the archive
    watch(ingest.ingest_formats, "read_member")     # read_batch reads each file,
    watch(ingest.site_script.BatchScript, "read")   # ... with the site script when it is on
    res = upload(client, zip_bytes({f"{n}.dcm": data for n, data in enumerate(files)}))
    run_jobs()

    assert client.get(res.get_json()["api"]).get_json()["status"] == "DONE"
    assert {name for name, _ in seen} == {"list_members", "read"}
    assert [name for name, in_transaction in seen if in_transaction] == []
