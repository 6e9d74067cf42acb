"""Request bodies written straight into ``uploads/{upload_id}/`` as they arrive.

Werkzeug spools uploaded files larger than 500 kB to the system temp folder
(often a RAM disk) and a raw body is read into memory by ``request.data``.
Scanyard's request class writes every uploaded file of a request into the
data folder instead, so that a multi-GB upload costs neither memory nor a
second copy: the job later renames the files, it never copies them.

A stored file is on the disk (fsynced, with its folder's entries) before
the request that stored it answers: an upload acknowledged to its sender
survives a power cut, as an instance the DICOM receiver acknowledges does.
Flushing it there also spares the upload's first job from waiting for the
disk to take in the rest of the upload.
"""
from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

from flask import Request, current_app, request
from werkzeug.formparser import FormDataParser
from werkzeug.utils import secure_filename

from imaging import storage
from models import new_id

CHUNK = 1 << 20
UPLOAD_ID_KEY = "scanyard.upload_id"
CLAIMED_KEY = "scanyard.upload_claimed"


def upload_id() -> str:
    """Return this request's upload id, chosen when its first byte is stored."""
    return request.environ.setdefault(UPLOAD_ID_KEY, new_id())


def upload_folder() -> Path:
    return storage.upload_dir(current_app.config["DATA_DIR"], upload_id())


def _unique_path(folder: Path, filename: str | None) -> Path:
    name = secure_filename(filename or "") or "upload.bin"
    path, n = folder / name, 1
    while path.exists():
        stem, dot, ext = name.partition(".")
        path = folder / f"{stem}-{n}{dot}{ext}"
        n += 1
    return path


class _RawReader(io.RawIOBase):
    """A request's input stream as raw I/O, for io.BufferedReader."""

    def __init__(self, stream):
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._stream.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


class BufferedFormParser(FormDataParser):
    """Werkzeug's form parser, fed from a 1 MB read buffer.

    Werkzeug reads a multipart body 64 KB at a time. gunicorn's body reader
    receives up to 1 MB at once and, for each 64 KB it hands out, copies all
    it holds: for a 190 MB zip that copying took a third of the web
    process's time. A 1 MB buffer in between asks the server for 1 MB at a
    time and hands out the 64 KB pieces without copying the rest.
    """

    def _parse_multipart(self, stream, mimetype, content_length, options):
        buffered = io.BufferedReader(_RawReader(stream), CHUNK)
        _, form, files = super()._parse_multipart(buffered, mimetype, content_length, options)
        return stream, form, files


class StreamingRequest(Request):
    """A request whose uploaded files are written into the data folder."""

    form_data_parser_class = BufferedFormParser

    def _get_file_stream(self, total_content_length, content_type, filename=None,
                         content_length=None):
        folder = upload_folder()
        folder.mkdir(parents=True, exist_ok=True)
        return storage.WriteBehind(open(_unique_path(folder, filename), "w+b"))


def save_body(filename: str) -> Path:
    """Write the raw request body into this request's upload folder; return the path."""
    # The body streams to disk, so the cap on url-encoded forms (read into memory)
    # does not apply: curl --data-binary labels any file a form.
    request.max_content_length = None
    folder = upload_folder()
    folder.mkdir(parents=True, exist_ok=True)
    path = _unique_path(folder, filename)
    with open(path, "wb") as fh:
        shutil.copyfileobj(request.stream, storage.WriteBehind(fh), CHUNK)
        _flush(fh, path)
    return path


def stored_path(file_storage) -> Path:
    """Return where a multipart file of this request was written, closing it
    once it is on the disk."""
    stream = file_storage.stream
    path = Path(stream.name)
    try:
        _flush(stream, path)
    finally:
        stream.close()
    return path


def _flush(file, path: Path) -> None:
    """Put the file being stored at `path` on the disk, with the entries
    naming it: its folder's, and the uploads folder's for its folder."""
    file.flush()
    os.fsync(file.fileno())
    storage.fsync_dir(path.parent)
    storage.fsync_dir(path.parent.parent)


def claim_upload() -> None:
    """Keep the files of this request: a job will take them from here."""
    request.environ[CLAIMED_KEY] = True


def discard_unclaimed(_exc=None) -> None:
    """Teardown: remove what a request stored but did not hand to a job."""
    uid = request.environ.get(UPLOAD_ID_KEY)
    if uid and not request.environ.get(CLAIMED_KEY):
        folder = storage.upload_dir(current_app.config["DATA_DIR"], uid)
        # Only files already parsed: touching request.files would read the body.
        for f in (request.__dict__.get("files") or {}).values():
            f.close()
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)

