"""Multipart bodies read through the request's 1 MB buffer, as gunicorn hands them over."""
from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from flask import request
from sqlalchemy import func, select
from werkzeug.test import EnvironBuilder

from blueprints import streaming
from models import Upload, db


class ServerBody:
    """A request body as gunicorn gives it: read() only, and every size asked noted."""

    def __init__(self, data: bytes):
        self._data, self.asked = io.BytesIO(data), []

    def read(self, size=-1):
        self.asked.append(size)
        return self._data.read(size)


def parse(app, payload: bytes, fields: dict[str, str]):
    """Parse a form of `fields` and a file `payload` in `app`; return (form, file bytes, body)."""
    environ = EnvironBuilder(method="POST", data={
        **fields, "file": (io.BytesIO(payload), "scan.zip")}).get_environ()
    body = ServerBody(environ["wsgi.input"].read())
    environ.update({"wsgi.input": body, "wsgi.input_terminated": True})
    with app.request_context(environ):
        form, stored = dict(request.form), request.files["file"]
        path = streaming.stored_path(stored)
        return form, path.read_bytes(), body


@pytest.mark.parametrize("extra", [-300, -1, 0, 1, 300])
def test_a_file_ending_at_a_buffer_edge_is_read_whole(sqlite_app, extra):
    # The closing boundary falls across the first 1 MB buffer's end.
    payload = os.urandom(streaming.CHUNK - 250 + extra)
    form, stored, _ = parse(sqlite_app, payload, {"project": "P1"})
    assert stored == payload
    assert form == {"project": "P1"}


def test_the_body_is_read_a_megabyte_at_a_time(sqlite_app):
    payload = os.urandom(3 * streaming.CHUNK + 12345)
    form, stored, body = parse(sqlite_app, payload, {"project": "P1", "subject": "S1"})
    assert stored == payload
    assert form == {"project": "P1", "subject": "S1"}
    # Werkzeug alone asks for 64 KB at a time (49 reads here).
    assert len(body.asked) <= 6
    assert min(body.asked) > streaming.CHUNK // 2, body.asked


def test_an_upload_whose_body_ends_early_is_refused_and_leaves_nothing(app, client,
                                                                       make_project):
    # The browser closed mid-upload: the server reads less than Content-Length.
    make_project("study1")
    environ = EnvironBuilder(method="POST", data={
        "project": "study1", "date_unknown": "1",
        "file": (io.BytesIO(os.urandom(3 * streaming.CHUNK)), "study.zip")}).get_environ()
    whole = environ["wsgi.input"].read()
    body = ServerBody(whole[:len(whole) // 2])
    res = client.post("/upload", headers={"Accept": "application/json"}, environ_overrides={
        "wsgi.input": body, "wsgi.input_terminated": True,
        "CONTENT_LENGTH": str(len(whole)), "CONTENT_TYPE": environ["CONTENT_TYPE"]})
    assert res.status_code == 400
    assert res.get_json()["error"]
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Upload)) == 0
    uploads = Path(app.config["DATA_DIR"]) / "uploads"
    assert not uploads.exists() or not any(uploads.iterdir())


def test_an_upload_is_on_the_disk_before_it_is_acknowledged(app, client, make_project,
                                                            monkeypatch):
    # An acknowledged upload survives a power cut: its file and the folder
    # entries that name it are flushed before the answer (and before the row
    # that the jobs read is written).
    make_project("study1")
    flushed, real_fsync = [], os.fsync

    def fsync(fd):
        flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    res = client.post("/upload", content_type="multipart/form-data",
                      headers={"Accept": "application/json"}, data={
                          "project": "study1", "date_unknown": "1",
                          "file": (io.BytesIO(os.urandom(3 * streaming.CHUNK)), "study.zip")})
    assert res.status_code == 202
    folder = Path(app.config["DATA_DIR"]).resolve() / "uploads" / res.get_json()["id"]
    assert flushed[:3] == [str(folder / "study.zip"), str(folder), str(folder.parent)]
