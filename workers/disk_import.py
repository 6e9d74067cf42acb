"""``flask import``: a folder tree or an archive on the server's disk, read
through the upload pipeline (like XNAT's inbox import).

The source is never changed: its files are copied into ``uploads/{id}/``
(a folder's files straight into ``files/``, where an unpacked tar's would
be, with a members list of kind "folder"), then the Upload row is made and
its jobs queued exactly as for a web upload.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from flask import current_app
from werkzeug.utils import secure_filename

from imaging import storage
from imaging.extract import ExtractError, is_junk, normalise_name
from models import Upload, db, new_id
from workers.ingest import start_upload

_CHUNK = 2**20


class ImportError_(ValueError):
    """The path cannot be imported; the message says why."""


def folder_members(folder: Path) -> list[tuple[str, Path, int]]:
    """Return (name inside the folder, path, size) of its regular files, in a
    stable order; macOS clutter is left out and links to folders not followed."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            if not path.is_file():
                continue  # sockets, pipes, broken links
            try:
                rel = normalise_name(path.relative_to(folder).as_posix())
            except ExtractError as exc:
                raise ImportError_(str(exc)) from None
            if not is_junk(rel):
                found.append((rel, path, path.stat().st_size))
    return found


def _copy(src: Path, dst: Path, progress: Callable[[int], None]) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while chunk := fin.read(_CHUNK):
            fout.write(chunk)
            progress(len(chunk))


def size_of(path: Path) -> int:
    """Return the bytes that importing `path` copies."""
    if path.is_dir():
        return sum(size for _, _, size in folder_members(path))
    return path.stat().st_size


def stage(path: Path, params: dict, *, progress: Callable[[int], None] = lambda n: None
          ) -> Upload:
    """Copy a folder or archive into a new upload's folder and queue its jobs.

    Raises ImportError_ for a path that holds nothing to import.
    """
    root = storage.upload_dir(current_app.config["DATA_DIR"], new_id())
    try:
        if path.is_dir():
            members = folder_members(path)
            if not members:
                raise ImportError_(f"The folder {path} holds no files.")
            for name, src, _size in members:
                _copy(src, root / "files" / name, progress)
            storage.write_json_atomic(root / "members.json", {
                "kind": "folder", "members": [[n, i, s] for i, (n, _, s) in enumerate(members)]})
            return start_upload(root / "files", path.name or str(path), params, source="cli",
                                size=sum(size for _, _, size in members))
        if path.stat().st_size == 0:
            raise ImportError_(f"The file {path} is empty.")
        target = root / (secure_filename(path.name) or "import.bin")
        _copy(path, target, progress)
        return start_upload(target, path.name, params, source="cli")
    except BaseException:
        if not db.session.scalar(db.select(Upload.id).filter_by(id=root.name)):
            shutil.rmtree(root, ignore_errors=True)
        raise
