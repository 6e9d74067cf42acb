"""Where things live under the data folder, and writing files that survive a crash.

Layout (see DESIGN.md):
    uploads/{upload_id}/...
    prearchive/{project|_unassigned}/{timestamp}/{session}/SCANS/{scan}/DICOM/{file}
    prearchive/{project|_unassigned}/{timestamp}/{session}.json
    archive/{project}/{subject}/{session}/SCANS/{scan}/{resource}/{file}
    quarantine/{upload_id or receipt}/...
"""
from __future__ import annotations

import ctypes
import datetime as dt
import functools
import json
import os
import shutil
import threading
from pathlib import Path

UNASSIGNED = "_unassigned"
TRASH = ".trash"


def project_key(project: str | None) -> str:
    """Return the prearchive folder name of a project (or of no project)."""
    return project or UNASSIGNED


def new_timestamp(now: dt.datetime | None = None) -> str:
    """Return a prearchive timestamp folder name: yyyyMMdd_HHmmssfff."""
    now = now or dt.datetime.now()
    return now.strftime("%Y%m%d_%H%M%S") + f"{now.microsecond // 1000:03d}"


def prearchive_root(data_dir: str | Path) -> Path:
    return Path(data_dir) / "prearchive"


def prearchive_session_dir(data_dir, project: str | None, timestamp: str, folder: str) -> Path:
    return prearchive_root(data_dir) / project_key(project) / timestamp / folder


def prearchive_json(data_dir, project: str | None, timestamp: str, folder: str) -> Path:
    return prearchive_root(data_dir) / project_key(project) / timestamp / f"{folder}.json"


def archive_session_dir(data_dir, project: str, subject: str, session: str) -> Path:
    return Path(data_dir) / "archive" / project / subject / session


def upload_dir(data_dir, upload_id: str) -> Path:
    return Path(data_dir) / "uploads" / upload_id


def quarantine_dir(data_dir, key: str) -> Path:
    return Path(data_dir) / "quarantine" / key


def trash_dir(data_dir) -> Path:
    return Path(data_dir) / "archive" / TRASH


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (renames, new files) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_filesystem(path: str | Path) -> None:
    """Flush every file written on the filesystem of `path` to disk: one call
    for the many files of an upload instead of an fsync each (Linux's
    syncfs; os.sync elsewhere)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc() is None or _libc().syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


@functools.cache
def _libc():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    if not hasattr(libc, "syncfs"):
        return None
    if hasattr(libc, "sync_file_range"):
        libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64,
                                         ctypes.c_uint]
    return libc


_SYNC_FILE_RANGE_WRITE = 2


class WriteBehind:
    """A file being written whose pages go to disk while it is written.

    The kernel keeps what is written in memory and writes it out seconds
    later: after a large upload, the first batch that flushes its files
    (sync_filesystem) waited for the whole upload to reach the disk. Every
    STEP bytes this starts writing the part just written (Linux's
    sync_file_range, which does not wait for the disk's answer), so the
    upload reaches the disk as it arrives and never holds gigabytes of
    unwritten pages. Elsewhere it is a plain file.
    """

    STEP = 8 << 20

    def __init__(self, file):
        self._file = file
        self._written = self._sent = 0
        libc = _libc()
        self._range = getattr(libc, "sync_file_range", None)

    def write(self, data) -> int:
        count = self._file.write(data)
        self._written += count
        if self._range is not None and self._written - self._sent >= self.STEP:
            self._file.flush()
            self._range(self._file.fileno(), self._sent, self._written - self._sent,
                        _SYNC_FILE_RANGE_WRITE)
            self._sent = self._written
        return count

    def __getattr__(self, name):
        return getattr(self._file, name)


def write_atomic(path: str | Path, data: bytes, make_parents: bool = True) -> None:
    """Write bytes to path so that a crash leaves the old file or the new one.

    With make_parents False a missing folder is an error (FileNotFoundError),
    for a rewrite whose folder may have been moved away meanwhile.
    """
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    # Named by process and thread: two threads writing one path never share it.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, say: no partial file is left beside it
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: str | Path, obj) -> None:
    # Compact: json's C encoder writes it; with an indent the pure-Python one
    # does, several times slower (seconds for a session of 40,000 files).
    write_atomic(path, json.dumps(obj, sort_keys=True, default=str,
                                  separators=(",", ":")).encode())


def read_json(path: str | Path) -> dict | None:
    """Return the parsed JSON file, or None when it does not exist."""
    try:
        with open(path, "rb") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None


def move_into(src: Path, dst: Path) -> None:
    """Rename src to dst (same filesystem), creating dst's parents; never copies."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.rename(src, dst)


def to_trash(path: Path) -> Path | None:
    """Rename a folder into the trash (atomic); return where it went, or None
    when there was nothing to move."""
    if not path.exists():
        return None
    trash = trash_dir(_data_dir_of(path))
    trash.mkdir(parents=True, exist_ok=True)
    target = trash / f"{os.getpid()}-{os.urandom(6).hex()}"
    os.rename(path, target)
    return target


def remove_tree(path: Path) -> None:
    """Delete a folder by first renaming it into the trash, so a crash never
    leaves half a folder where a whole one is expected."""
    target = to_trash(path)
    if target is not None:
        shutil.rmtree(target, ignore_errors=True)


def empty_trash(data_dir) -> None:
    trash = trash_dir(data_dir)
    if trash.is_dir():
        for child in trash.iterdir():
            shutil.rmtree(child, ignore_errors=True)


def remove_empty_parents(path: Path, stop: Path) -> None:
    """Remove path and its parents while they are empty, up to (not including) stop."""
    path, stop = Path(path), Path(stop)
    while path != stop and stop in path.parents:
        try:
            path.rmdir()
        except OSError:
            return
        path = path.parent


def _data_dir_of(path: Path) -> Path:
    for parent in path.parents:
        if parent.name in ("archive", "prearchive", "uploads", "quarantine"):
            return parent.parent
    raise ValueError(f"{path} is not under a Scanyard data folder")


def resource_dir(data_dir, label: str, project: str, subject: str | None = None,
                 session: str | None = None, scan: str | None = None,
                 assessor: str | None = None, reconstruction: str | None = None) -> Path:
    """Return the folder of a resource, by the labels of its owner (DESIGN.md layout)."""
    base = Path(data_dir) / "archive" / project
    if subject is None:
        return base / "RESOURCES" / label
    base = base / subject
    if session is None:
        return base / "RESOURCES" / label
    base = base / session
    if scan is not None:
        return base / "SCANS" / scan / label
    if assessor is not None:
        return base / "ASSESSORS" / assessor / label
    if reconstruction is not None:
        return base / "RECONSTRUCTIONS" / reconstruction / label
    return base / "RESOURCES" / label
