"""8 web uploads and 4 DICOM associations at once, overlapping on the same
studies, with two real worker processes: every instance is stored exactly
once, each study is one consistent session, and nobody sees a lock error."""
from __future__ import annotations

import io
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from models import PrearchiveSession, Upload, db
from tests.conftest import login
from tests.dicomgen import make_series, write_files, zip_bytes
from tests.scpnet import send
from tests.test_faults import ROOT, worker_env
from tests.test_scp_receiving import scp, settle  # noqa: F401  (the receiver fixture)

pytestmark = pytest.mark.slow


def _studies():
    studies = {}
    for n in range(2):
        uid = generate_uid()
        files = []
        for series in range(3):
            files += make_series(uid, 10, series_number=series + 1, patient_id=f"PAT{n}",
                                 StudyDescription="p1")
        studies[uid] = files
    return studies


def _sop(data: bytes) -> str:
    return str(dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


def test_eight_uploads_and_four_associations_at_once_store_each_instance_once(
        app, make_project, make_user, scp, run_jobs, tmp_path):  # noqa: F811
    make_project("p1")
    make_user("boss", admin=True)
    studies = _studies()
    everything = [f for files in studies.values() for f in files]
    rng = random.Random(7)
    uploads = [rng.sample(everything, 35) for _ in range(8)]
    sends = [write_files(tmp_path / f"send{n}", rng.sample(everything, 35)) for n in range(4)]
    workers = [subprocess.Popen([sys.executable, "-m", "flask", "--app", "app", "worker"],
                                cwd=ROOT, env=worker_env(app), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    answers, statuses, errors = [], [], []

    def web(files):
        client = app.test_client()
        login(client, "boss")
        res = client.post("/upload", headers={"Accept": "application/json"},
                          content_type="multipart/form-data", data={
                              "project": "p1", "date_unknown": "1", "file": (io.BytesIO(
                                  zip_bytes({f"{n}.dcm": d for n, d in enumerate(files)})),
                                  "part.zip")})
        answers.append(res.status_code)

    def dicom(paths):
        try:
            statuses.extend(send(scp.port, paths))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=web, args=(f,)) for f in uploads]
        threads += [threading.Thread(target=dicom, args=(p,)) for p in sends]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=180)
        assert answers == [202] * 8 and not errors
        assert statuses == [0] * 140
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            with app.app_context():
                open_uploads = db.session.scalar(select(Upload.id).where(
                    Upload.status.notin_(("DONE", "FAILED"))).limit(1))
            if open_uploads is None:
                break
            time.sleep(0.5)
        stuck = None
        if open_uploads is not None:
            with app.app_context():
                row = db.session.get(Upload, open_uploads)
                stuck = (row.status, row.files_read, row.files_total, row.error)
    finally:
        for w in workers:
            w.terminate()
        logs = [w.communicate(timeout=60)[1] for w in workers]
    assert stuck is None, f"an upload did not end: {stuck}\n" + "\n".join(
        log[-3000:] for log in logs)
    assert not any("database is locked" in log or "deadlock" in log for log in logs)
    settle(app, scp, run_jobs)
    run_jobs()
    with app.app_context():
        rows = db.session.scalars(select(PrearchiveSession)).all()
        failed = db.session.scalars(select(Upload).where(Upload.status == "FAILED")).all()
    assert not failed, [u.error for u in failed]
    assert sorted(ps.study_uid for ps in rows) == sorted(studies)
    assert {ps.status for ps in rows} == {"READY"}
    stored = list((Path(app.config["DATA_DIR"]) / "prearchive").rglob("*.dcm"))
    sops = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in stored]
    assert len(sops) == len(set(sops)), "an instance is stored twice"
    sent = {_sop(f) for f in (d for part in uploads for d in part)} | \
        {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID)
         for part in sends for p in part}
    assert set(sops) == sent
    assert sum(ps.file_count for ps in rows) == len(sent)
