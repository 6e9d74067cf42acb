"""Filing instances that the DICOM receiver got into RECEIVING prearchive sessions.

``Receiving.store`` reads the few header values routing needs, finds the
session of the study (or starts one) and writes the bytes as received
under their final name, fsyncing them and their folder
(``workers.instance_files``): when it returns, the instance is on disk.
Counters are kept in memory and written to the session rows about once a
second by ``flush``; ``build_idle_sessions`` queues the build of sessions
that received nothing for SCANYARD_SESSION_IDLE_SECONDS.

A study is one session: the decision "join this session or start one" is
taken under a lock per study in this process and, across processes, inside
a write transaction (SQLite) or under an advisory lock (PostgreSQL).
"""
from __future__ import annotations

import datetime as dt
import errno
import functools
import hashlib
import io
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from flask import Flask
from pydicom.filereader import read_dataset
from pydicom.uid import UID
from sqlalchemy import select, text, update

from imaging import labels, routing, storage
from models import (
    BUILDING,
    QUEUED_BUILDING,
    READY,
    RECEIVING,
    PrearchiveSession,
    db,
    new_id,
    utcnow,
)
from workers import prearchive, queue
from workers.instance_files import write_instance

log = logging.getLogger(__name__)

# Sessions that new instances of their study join; any other status (being
# archived, moved or deleted) makes the study start a new session.
JOINABLE = (RECEIVING, READY, QUEUED_BUILDING, BUILDING)
STUDY_UID, SERIES_UID, SOP_UID = 0x0020000D, 0x0020000E, 0x00080018
SERIES_NUMBER, STUDY_DATE = 0x00200011, 0x00080020
_PIXEL_DATA = 0x7FE00010
_OWN_TAGS = (STUDY_UID, SERIES_UID, SOP_UID, SERIES_NUMBER, STUDY_DATE)
# A slot unused this long is forgotten; the database remembers the session.
SLOT_IDLE_SECONDS = 300


class Unreadable(ValueError):
    """Bytes that are not a DICOM instance Scanyard can file; the message says why."""


class SessionGone(Exception):
    """The session folder was moved or deleted while instances were arriving."""


@dataclass
class Header:
    """What the receiver reads of an instance: routing values and its place."""

    dataset: pydicom.Dataset
    study_uid: str
    series_uid: str
    sop_uid: str | None
    series_number: str | None
    study_date: str | None


@dataclass
class Slot:
    """A session this process writes into, with counts not yet in its row."""

    id: int
    path: Path
    dirs: set = field(default_factory=set)
    pending_files: int = 0
    pending_bytes: int = 0
    last_file: dt.datetime | None = None
    used: float = field(default_factory=time.monotonic)
    gone: bool = False


def _text(ds, tag: int) -> str | None:
    try:
        element = ds.get(tag)
        value = None if element is None else element.value
    except Exception:  # pydicom converts values lazily; a damaged one reads as missing
        return None
    if value is None:
        return None
    text_value = str(value).strip().strip("\x00").strip()
    return text_value or None


def read_header(data: bytes, tags: tuple[int, ...], meta_length: int = 0,
                syntax: str | None = None) -> Header:
    """Return the routing header of a DICOM file's bytes; raise Unreadable.

    With the transfer syntax of the dataset after the `meta_length` bytes
    of file meta (the receiver's, negotiated for the association), only the
    dataset is parsed: pydicom's dcmread, which reads the file meta again
    and makes a FileDataset, took 237 µs a header against 140 µs.
    """
    encoding = _encoding(syntax)
    wanted = list(tags) + list(_OWN_TAGS)
    try:
        if encoding is None:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True,
                                 specific_tags=wanted)
        else:
            f = io.BytesIO(data)
            f.seek(meta_length)
            ds = read_dataset(f, *encoding, stop_when=_at_pixels, specific_tags=wanted)
    except Exception as exc:  # pydicom raises many kinds on bad bytes
        raise Unreadable(f"DICOM header could not be read: {exc}") from exc
    study_uid, series_uid = _text(ds, STUDY_UID), _text(ds, SERIES_UID)
    if study_uid is None:
        raise Unreadable("missing StudyInstanceUID")
    if series_uid is None:
        raise Unreadable("missing SeriesInstanceUID")
    return Header(ds, study_uid, series_uid, _text(ds, SOP_UID), _text(ds, SERIES_NUMBER),
                  _text(ds, STUDY_DATE))


@functools.cache
def _encoding(syntax: str | None) -> tuple[bool, bool] | None:
    """Return (implicit VR, little endian) of a transfer syntax pydicom knows,
    None for one it must find out itself (deflated, private, unknown)."""
    if not syntax:
        return None
    uid = UID(syntax)
    if not uid.is_transfer_syntax or uid.is_deflated:
        return None
    return uid.is_implicit_VR, uid.is_little_endian


def _at_pixels(tag, _vr, _length) -> bool:
    return tag == _PIXEL_DATA


def instance_name(sop_uid: str | None, data: bytes) -> str:
    """Return the file name: the SOP Instance UID when it is safe, else the sha256."""
    name = labels.instance_filename(sop_uid, "")
    if name == ".dcm":
        name = labels.instance_filename(None, hashlib.sha256(data).hexdigest())
    return name


class Receiving:
    """The receiver's filing desk; one per process, shared by its associations."""

    def __init__(self, app: Flask, directory, source: str = "scp"):
        self.app = app
        self.directory = directory
        self.source = source  # "rest" for the import service's gradual-DICOM
        self.data_dir = Path(app.config["DATA_DIR"])
        self._slots: dict[tuple[str, str], Slot] = {}
        self._study_locks: dict[tuple[str, str], threading.Lock] = {}
        self._mutex = threading.Lock()

    def store(self, data: bytes, meta_length: int, receiver_project: str | None,
              calling_ae: str, called_ae: str, explicit: dict | None = None,
              syntax: str | None = None) -> bool:
        """File one instance (the file's bytes); return False for a duplicate.

        `explicit` project, subject and session labels (the import service's)
        come first. `syntax`, the transfer syntax of the dataset when it is
        known (the association's), spares reading the file meta back.
        Raises Unreadable, or OSError (ENOSPC when the disk is full).
        """
        header = read_header(data, routing.header_tags(self.directory.rules()), meta_length,
                             syntax)
        ident = routing.identify(header.dataset, explicit=explicit,
                                 receiver_project=receiver_project,
                                 rules=self.directory.rules())
        project = ident.project if self.directory.project_exists(ident.project) else None
        key = (storage.project_key(project), header.study_uid)
        scan = labels.scan_id_from_header(header.series_number, "unknown")
        name = instance_name(header.sop_uid, data)
        for _attempt in range(3):
            slot = self._slot(key, ident, project, header, calling_ae, called_ae)
            try:
                folder = self._scan_dir(slot, scan)
                stored = write_instance(folder / name, data, meta_length)
            except (SessionGone, FileNotFoundError):
                self._forget(key, slot)
                continue
            if stored:
                self._count(slot, len(data))
            return stored
        raise OSError(errno.ENOENT, "the session folder keeps disappearing")

    def _count(self, slot: Slot, size: int) -> None:
        with self._mutex:
            slot.pending_files += 1
            slot.pending_bytes += size
            slot.last_file = utcnow()

    def _forget(self, key, slot: Slot) -> None:
        with self._mutex:
            slot.gone = True
            if self._slots.get(key) is slot:
                del self._slots[key]

    def _scan_dir(self, slot: Slot, scan: str) -> Path:
        folder = slot.path / "SCANS" / scan / "DICOM"
        if scan in slot.dirs:
            return folder
        if not slot.path.is_dir():
            raise SessionGone(str(slot.path))
        made = False
        # One level at a time: never re-create a session folder that was moved away.
        for path in (slot.path / "SCANS", folder.parent, folder):
            try:
                os.mkdir(path)
                made = True
            except FileExistsError:
                pass
        if made:
            for path in (slot.path, slot.path / "SCANS", folder.parent):
                storage.fsync_dir(path)
        slot.dirs.add(scan)
        return folder

    def _slot(self, key, ident, project, header, calling_ae, called_ae) -> Slot:
        slot = self._slots.get(key)
        if slot is not None:
            slot.used = time.monotonic()
            return slot
        with self._mutex:
            lock = self._study_locks.setdefault(key, threading.Lock())
        with lock:
            slot = self._slots.get(key)
            if slot is None:
                with self.app.app_context():
                    slot = self._find_or_start(key, ident, project, header, calling_ae,
                                               called_ae)
                with self._mutex:
                    self._slots[key] = slot
        return slot

    def _find_or_start(self, key, ident, project, header, calling_ae, called_ae) -> Slot:
        """Return the slot of the study's joinable session, starting one if there is none."""
        try:
            lock_study(key)
            ps = db.session.scalar(
                select(PrearchiveSession)
                .where(PrearchiveSession.project_key == key[0],
                       PrearchiveSession.study_uid == key[1],
                       PrearchiveSession.status.in_(JOINABLE))
                .order_by(PrearchiveSession.id.desc()).limit(1))
            reopened = ps is not None and ps.status == READY
            if ps is None:
                # The folder is made while the lock is held, so that no other
                # process starts a second session for the study meanwhile.
                record = self._start_session(project, ident, header, calling_ae, called_ae)
                ps = prearchive.index_record(record)
            elif reopened:
                ps.status = RECEIVING
            db.session.commit()
            if reopened:
                reopen_record(ps, f"new instances from {calling_ae} at {called_ae}")
            return Slot(ps.id, prearchive.session_dir(ps))
        finally:
            db.session.remove()

    def _start_session(self, project, ident, header, calling_ae, called_ae) -> dict:
        folder = labels.label_from_header(ident.session, "session")
        now = dt.datetime.now()
        while True:
            timestamp = storage.new_timestamp(now)
            path = storage.prearchive_session_dir(self.data_dir, project, timestamp, folder)
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                path.mkdir()
                break
            except FileExistsError:
                now += dt.timedelta(milliseconds=1)
        storage.fsync_dir(path.parent)
        record = prearchive.new_record(
            project, timestamp, folder, source=self.source, subject=ident.subject,
            session=folder, study_uid=header.study_uid, sender_ae=calling_ae)
        record.update(status=RECEIVING, receiver=called_ae,
                      flags={"auto_archive": ident.auto_archive},
                      scan_date=_iso_date(header.study_date))
        if ident.project and project is None:
            prearchive.log(record, f"Project {ident.project!r} named by the data does not "
                                   "exist; the session waits in the unassigned prearchive.")
        prearchive.log(record, f"receiving from {calling_ae} at {called_ae}")
        prearchive.save_record(record)
        return record

    def flush(self) -> None:
        """Write the counts of the last second to the session rows.

        A session that was READY goes back to RECEIVING; one that is no longer
        joinable (archived, deleted) is forgotten, and its study's next
        instance starts a new session.
        """
        with self._mutex:
            work = [(key, slot, slot.pending_files, slot.pending_bytes, slot.last_file)
                    for key, slot in self._slots.items() if slot.pending_files]
            for _key, slot, *_ in work:
                slot.pending_files = slot.pending_bytes = 0
        with self.app.app_context():
            try:
                reopened = self._write_counts(work)
                for ps in reopened:
                    reopen_record(ps, "new instances arrived")
            finally:
                db.session.remove()
        self._evict()

    def _write_counts(self, work) -> list[PrearchiveSession]:
        reopened, gone = [], []
        for key, slot, files, size, last in work:
            values = {"file_count": PrearchiveSession.file_count + files,
                      "size": PrearchiveSession.size + size, "last_modified": last}
            ready = db.session.execute(
                update(PrearchiveSession).where(PrearchiveSession.id == slot.id,
                                                PrearchiveSession.status == READY)
                .values(status=RECEIVING, **values))
            if ready.rowcount:
                reopened.append(slot.id)
                continue
            joined = db.session.execute(
                update(PrearchiveSession).where(PrearchiveSession.id == slot.id,
                                                PrearchiveSession.status.in_(JOINABLE))
                .values(**values))
            if not joined.rowcount:
                gone.append((key, slot))
        db.session.commit()
        for key, slot in gone:
            log.warning("session %s was taken away while receiving", slot.path)
            self._forget(key, slot)
        return [db.session.get(PrearchiveSession, i) for i in reopened]

    def _evict(self) -> None:
        cutoff = time.monotonic() - SLOT_IDLE_SECONDS
        with self._mutex:
            for key, slot in list(self._slots.items()):
                if slot.used < cutoff and not slot.pending_files:
                    del self._slots[key]
                    self._study_locks.pop(key, None)

    def quarantine(self, data: bytes, reason: str, **context) -> Path:
        """Keep bytes that could not be filed in quarantine/scp-.../ with the reason."""
        receipt = f"scp-{storage.new_timestamp()}-{new_id()[:8]}"
        folder = storage.quarantine_dir(self.data_dir, receipt)
        storage.write_atomic(folder / "instance.dcm", data)
        storage.write_json_atomic(folder / "reasons.json",
                                  [{"name": "instance.dcm", "reason": reason, **context}])
        return folder


def lock_study(key: tuple[str, str]) -> None:
    """Serialise "join or start a session" for one study across processes.

    SQLite: the first statement begins an IMMEDIATE transaction, which already
    excludes every other writer. PostgreSQL: a transaction-scoped advisory lock.
    """
    if db.session.get_bind().dialect.name != "postgresql":
        return
    digest = hashlib.sha256("\0".join(key).encode()).digest()
    lock_id = int.from_bytes(digest[:8], "big", signed=True)
    db.session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": lock_id})


def _iso_date(text_value: str | None) -> str | None:
    try:
        return dt.datetime.strptime((text_value or "")[:8], "%Y%m%d").date().isoformat()
    except ValueError:
        return None


def reopen_record(ps: PrearchiveSession, message: str) -> None:
    """Note in the record of a READY session that it receives again."""
    record = prearchive.load_record(ps)
    record["status"] = RECEIVING
    prearchive.log(record, message)
    prearchive.save_record(record)


def build_idle_sessions(idle_seconds: int, now: dt.datetime | None = None) -> list[int]:
    """Queue the build of RECEIVING sessions quiet for `idle_seconds`; return their ids."""
    cutoff = (now or utcnow()) - dt.timedelta(seconds=idle_seconds)
    ids = list(db.session.scalars(select(PrearchiveSession.id).where(
        PrearchiveSession.status == RECEIVING, PrearchiveSession.last_modified <= cutoff)))
    db.session.commit()
    queued = []
    for prearchive_id in ids:
        claimed = db.session.execute(
            update(PrearchiveSession).where(PrearchiveSession.id == prearchive_id,
                                            PrearchiveSession.status == RECEIVING,
                                            PrearchiveSession.last_modified <= cutoff)
            .values(status=QUEUED_BUILDING))
        db.session.commit()
        if claimed.rowcount:
            job = queue.enqueue_build_session(prearchive_id)
            db.session.execute(update(PrearchiveSession)
                               .where(PrearchiveSession.id == prearchive_id)
                               .values(job_id=job.id))
            db.session.commit()
            queued.append(prearchive_id)
    return queued
