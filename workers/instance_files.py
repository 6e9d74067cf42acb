"""Writing a received instance to disk durably, never replacing another file.

``write_instance`` creates the file under its final name, fsyncs it and
its folder before it returns (the receiver acknowledges the instance only
then); threads writing into one folder share that folder's fsync.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
from pathlib import Path

from imaging import dicomio, labels, storage


class FolderSync:
    """fsync of folders, shared by the threads that wait for the same folder.

    Each new file's name must be flushed with its folder. When several
    associations write into one folder at once, a thread whose file was
    created before a running folder fsync began can wait for the next one
    to finish instead of starting its own: one flush serves them all. A
    flush that fails serves nobody: its thread raises, and those waiting on
    it flush the folder again themselves.
    """

    def __init__(self):
        self._mutex = threading.Lock()
        self._folders: dict[Path, _Folder] = {}

    def sync(self, folder: Path) -> None:
        with self._mutex:
            state = self._folders.get(folder)
            if state is None:
                state = self._folders[folder] = _Folder(threading.Condition(self._mutex))
            state.asked += 1
            state.users += 1
            ticket = state.asked
            while state.done < ticket:
                if not state.running:
                    state.running = True
                    covered = state.asked
                    break
                state.flushed.wait()
            else:
                self._leave(folder, state)
                return
        flushed = False
        try:
            storage.fsync_dir(folder)
            flushed = True
        finally:
            with self._mutex:
                state.running = False
                if flushed:
                    state.done = max(state.done, covered)
                state.flushed.notify_all()
                self._leave(folder, state)

    def _leave(self, folder: Path, state: _Folder) -> None:
        state.users -= 1
        if not state.users:  # nobody is flushing or waiting for it: forget the folder
            self._folders.pop(folder, None)


@dataclasses.dataclass(slots=True)
class _Folder:
    """What FolderSync knows of one folder: its flushes are numbered by the
    calls that asked for one (`asked`); `done` is the last call a finished
    flush covered."""

    flushed: threading.Condition
    asked: int = 0
    done: int = 0
    running: bool = False
    users: int = 0  # threads in sync() for this folder


folder_sync = FolderSync()


def write_instance(path: Path, data: bytes, meta_length: int) -> bool:
    """Write `data` at `path` durably, never replacing another file.

    Returns False when `path` already holds the same dataset (a duplicate).
    A different dataset under the same name is stored beside it, named by
    its sha256, for the build job to sort out. Raises FileNotFoundError when
    the folder is gone.
    """
    try:
        _write_new(path, data)
    except FileExistsError:
        if _same_dataset(path, data, meta_length):
            return False
        path = path.with_name(labels.instance_filename(None, hashlib.sha256(data).hexdigest()))
        try:
            _write_new(path, data)
        except FileExistsError:
            return False  # the same bytes, already kept under their sha256
    folder_sync.sync(path.parent)
    return True


def _write_new(path: Path, data: bytes) -> None:
    """Create `path` (never replacing a file), write `data` and fsync it.

    The file gets its final name at once rather than through a rename: one
    directory change instead of three, so that the fsync of the file also
    commits its name on journalling filesystems and the folder's fsync that
    follows finds little left to do. An instance cut short by a crash was not
    acknowledged: the sender sends it again, that copy is kept under its
    sha256, and the build job quarantines the truncated one.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def _same_dataset(path: Path, data: bytes, meta_length: int) -> bool:
    """True when the file at `path` holds the same dataset (its file meta may differ)."""
    try:
        existing = path.read_bytes()
        offset = dicomio.dataset_offset(existing)
    except (OSError, dicomio.NotDicom):
        return False
    return memoryview(existing)[offset:] == memoryview(data)[meta_length:]
