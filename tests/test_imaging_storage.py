"""Files written to survive a crash, and written out while they arrive."""

import errno
import os
import threading

import pytest

from imaging import storage


class SmallSteps(storage.WriteBehind):
    STEP = 1000


def test_a_file_written_behind_holds_every_byte(tmp_path):
    path = tmp_path / "upload.zip"
    chunks = [os.urandom(n) for n in (10, 999, 1, 2500, 7, 4000)]
    with open(path, "w+b") as raw:
        fh = SmallSteps(raw)
        for chunk in chunks:
            assert fh.write(chunk) == len(chunk)
        assert fh.name == str(path)  # the rest of the file's interface is the file's
        fh.seek(0)
        assert fh.read() == b"".join(chunks)
    assert path.read_bytes() == b"".join(chunks)


def test_writing_behind_sends_each_step_to_disk_as_it_is_written(tmp_path):
    with open(tmp_path / "upload.zip", "wb") as raw:
        fh = SmallSteps(raw)
        fh.write(b"x" * 999)
        assert fh._sent == 0
        fh.write(b"x" * 2)
        if fh._range is not None:  # Linux: the first 1,001 bytes are on their way
            assert fh._sent == 1001


def test_a_write_that_fails_leaves_the_old_file_and_nothing_beside_it(tmp_path, monkeypatch):
    path = tmp_path / "record.json"
    path.write_bytes(b"old")

    def disk_full(_fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError):
        storage.write_atomic(path, b"new")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]


def test_a_rewrite_whose_folder_was_moved_away_does_not_make_it_again(tmp_path):
    gone = tmp_path / "session" / "scan" / "1.dcm"
    with pytest.raises(FileNotFoundError):
        storage.write_atomic(gone, b"new", make_parents=False)
    assert list(tmp_path.iterdir()) == []
    storage.write_atomic(gone, b"new")
    assert gone.read_bytes() == b"new"


def test_threads_writing_one_file_at_once_leave_one_whole_version(tmp_path):
    path = tmp_path / "record.json"
    versions = [bytes([n]) * 200_000 for n in (1, 2, 3, 4)]
    errors = []

    def write(data):
        try:
            for _ in range(25):
                storage.write_atomic(path, data)
        except OSError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert path.read_bytes() in versions
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]
