"""Jobs that turn an uploaded archive into prearchive sessions.

extract_upload  checks the archive and splits its members into batches;
read_batch      (several at once, on several workers) unpacks and reads a batch;
finish_upload   groups what was read into sessions and scans, moves the files
                into the prearchive (renames), writes the records and rows.

Each job can run twice without changing more: batches leave their results in
``uploads/{id}/batches/{n}.json`` and the finishing job skips moves already done.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import os
from pathlib import Path

from flask import current_app
from rq import get_current_job
from sqlalchemy import select, update

from imaging import dicomio, labels, routing, storage
from imaging.extract import (
    CHUNK,
    ExtractError,
    Member,
    archive_kind,
    extract_members,
    list_members,
    unpack_members,
)
from models import (
    READY,
    UPLOAD_DONE,
    UPLOAD_EXTRACTING,
    UPLOAD_FAILED,
    UPLOAD_FINISHING,
    UPLOAD_READING,
    Project,
    Upload,
    db,
    utcnow,
)
from workers import prearchive, queue
from workers.context import app_job

MAX_LISTED_QUARANTINE = 1000


@dataclasses.dataclass(frozen=True)
class _Where:
    """An upload's paths, taken from its row before the transaction ends.

    The jobs end their transaction before working on files: on SQLite a
    transaction holds the write lock (BEGIN IMMEDIATE), and every other
    job and web request would wait for the files to be done.
    """

    root: Path
    files: Path
    source: Path
    quarantine: Path


def _where(upload: Upload) -> _Where:
    root = storage.upload_dir(current_app.config["DATA_DIR"], upload.id)
    return _Where(root, root / "files", root / upload.params["file"],
                  storage.quarantine_dir(current_app.config["DATA_DIR"], upload.id))


def _last_attempt() -> bool:
    job = get_current_job()
    return job is None or not job.should_retry


def _fail(upload: Upload, message: str) -> None:
    upload.status = UPLOAD_FAILED
    upload.error = message
    upload.finished = utcnow()
    db.session.commit()


def _guard(func):
    """Record an unexpected error on the upload when no retry is left, then re-raise."""
    def wrapper(upload_id, *args):
        try:
            return func(upload_id, *args)
        except Exception as exc:
            db.session.rollback()
            upload = db.session.get(Upload, upload_id)
            if upload is not None and _last_attempt():
                _fail(upload, f"The upload could not be processed: {exc}")
            raise
    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper


@app_job
@_guard
def extract_upload(upload_id: str) -> None:
    """Job: check the uploaded archive and enqueue the batches that read it."""
    upload = db.session.get(Upload, upload_id)
    if upload is None or upload.status in (UPLOAD_DONE, UPLOAD_FAILED):
        return
    upload.status = UPLOAD_EXTRACTING
    where = _where(upload)
    db.session.commit()
    members_file = where.root / "members.json"
    saved = storage.read_json(members_file)
    if saved is None:
        try:
            kind, members = _members(where.source)
        except ExtractError as exc:
            _reject(upload, where, str(exc), str(exc))
            return
        if kind == "tar":
            # tar has no index to seek in: unpack it once here, read it in batches.
            for _ in extract_members(where.source, members, where.files):
                pass
        saved = {"kind": kind, "members": [[m.name, m.index, m.size] for m in members]}
        storage.write_json_atomic(members_file, saved)
    upload.files_total = len(saved["members"])
    if not saved["members"]:
        _reject(upload, where, "the archive holds no files", "The archive holds no files.")
        return
    upload.status = UPLOAD_READING
    db.session.commit()
    queue.enqueue_read_batches(upload_id, len(saved["members"]))


def _members(src: Path) -> tuple[str, list[Member]]:
    """Return the kind of upload ("zip", "tar" or "file") and its members."""
    try:
        kind = archive_kind(src)
    except ExtractError:
        try:
            dicomio.read_dicom(src)
        except dicomio.NotDicom:
            raise ExtractError(
                "The file is neither a zip or tar archive nor a DICOM file.") from None
        return "file", [Member(name=src.name, index=0, size=src.stat().st_size)]
    return kind, list_members(src)


@app_job
@_guard
def read_batch(upload_id: str, batch_no: int, indexes: list[int]) -> None:
    """Job: unpack one batch of members and read their headers."""
    upload = db.session.get(Upload, upload_id)
    if upload is None or upload.status != UPLOAD_READING:
        return
    where = _where(upload)
    db.session.commit()
    out = where.root / "batches" / f"{batch_no}.json"
    if out.exists():
        return
    saved = storage.read_json(where.root / "members.json")
    members = [Member(*saved["members"][i]) for i in indexes]
    results = []
    for member, path, data in _unpacked(where.source, saved["kind"], members, where.files):
        try:
            info = dicomio.read_dicom(path, data)
            results.append({"name": member.name, "info": info.to_json()})
        except dicomio.NotDicom as exc:
            results.append({"name": member.name, "error": str(exc)})
    storage.write_json_atomic(out, results)
    db.session.execute(update(Upload).where(Upload.id == upload_id)
                       .values(files_read=Upload.files_read + len(results)))
    db.session.commit()


def _unpacked(source: Path, kind, members, files):
    """Yield (member, path on disk, its bytes or None) for a batch, unpacking zip
    members first; the bytes of a small member come along so they are read once."""
    if kind == "zip":
        try:
            yield from unpack_members(source, members, files, keep_bytes=CHUNK)
        except ExtractError as exc:
            raise RuntimeError(str(exc)) from exc
    elif kind == "tar":
        for m in members:
            yield m, files / m.name, None
    else:
        yield members[0], source, None


@app_job
@_guard
def finish_upload(upload_id: str, batch_count: int) -> None:
    """Job: group what the batches read into prearchive sessions."""
    upload = db.session.get(Upload, upload_id)
    if upload is None or upload.status in (UPLOAD_DONE, UPLOAD_FAILED):
        return
    upload.status = UPLOAD_FINISHING
    where = _where(upload)
    db.session.commit()
    saved = storage.read_json(where.root / "members.json")
    report, good = _read_results(saved, where.root, batch_count)
    timestamp = upload.params.get("timestamp") or _claim_timestamp(upload)
    sessions = plan_sessions(upload, good, timestamp, report)
    db.session.commit()

    def source_of(name):
        return where.source if saved["kind"] == "file" else where.files / name

    for _record, moves in sessions:
        _move_files(moves, source_of, report)
    _quarantine_files(where.quarantine, report, source_of)
    for record, _moves in sessions:
        prearchive.save_record(record)
    for record, _moves in sessions:
        prearchive.index_record(record)
    _record_report(upload, report, [record for record, _ in sessions])
    db.session.commit()
    storage.remove_tree(where.root)


def _read_results(saved: dict, root: Path, batch_count: int):
    """Return (report, good): the report with what could not be read, and
    (member name, DicomInfo) of each file that could.

    Batches are loaded one at a time and each dropped once converted: their
    JSON takes several times the memory of the DicomInfo made from it.
    """
    good, errors, read_names, failed = [], [], set(), 0
    for n in range(batch_count):
        results = storage.read_json(root / "batches" / f"{n}.json")
        if results is None:
            failed += 1
            continue
        for r in results:
            read_names.add(r["name"])
            if "error" in r:
                errors.append((r["name"], r["error"]))
            else:
                good.append((r["name"], dicomio.DicomInfo.from_json(r["info"])))
    report = Report()
    if failed:
        report.messages.append(
            f"{failed} batch(es) could not be read; their files are in quarantine.")
    for name, *_ in saved["members"]:
        if name not in read_names:
            report.quarantine(name, "the file could not be read (its batch failed)")
    for name, error in errors:
        report.quarantine(name, error)
    return report, good


def _record_report(upload: Upload, report: Report, records: list[dict]) -> None:
    """Write the report's counts and the sessions made onto the upload's row."""
    upload.stored = report.stored
    upload.duplicates = report.duplicates
    upload.quarantined = len(report.quarantined)
    upload.files_read = upload.files_total
    upload.messages = report.messages
    upload.params = {**upload.params,
                     "quarantined_files": report.quarantined[:MAX_LISTED_QUARANTINE]}
    upload.sessions = [{"project": r["project"], "timestamp": r["timestamp"],
                        "folder": r["folder"], "subject": r["subject"],
                        "session": r["session"]} for r in records]
    upload.status = UPLOAD_DONE if records else UPLOAD_FAILED
    if not records:
        upload.error = "No DICOM file could be read from the upload."
    upload.finished = utcnow()


class Report:
    """What happened to each file of an upload; the counts add up to the files in it."""

    def __init__(self):
        self.stored = 0
        self.duplicates = 0
        self.quarantined: list[dict] = []
        self.messages: list[str] = []

    def quarantine(self, name: str, reason: str) -> None:
        self.quarantined.append({"name": name, "reason": reason})


def _claim_timestamp(upload: Upload) -> str:
    """Pick this upload's prearchive timestamp folder and remember it, so that
    a second run of the job fills the same folders."""
    project_root = storage.prearchive_root(current_app.config["DATA_DIR"])
    now = dt.datetime.now()
    while True:
        timestamp = storage.new_timestamp(now)
        taken = any((project_root / key / timestamp).exists()
                    for key in (upload.project or storage.UNASSIGNED, storage.UNASSIGNED))
        if not taken:
            break
        now += dt.timedelta(milliseconds=1)
    upload.params = {**upload.params, "timestamp": timestamp}
    db.session.commit()
    return timestamp


def plan_sessions(upload: Upload, good, timestamp: str, report: Report):
    """Group read files into sessions (by study) and scans (by series).

    Returns a list of (record, moves) where moves are (member name, target path).
    """
    explicit = {k: upload.params.get(k) for k in ("project", "subject", "session")}
    by_study: dict[str, list] = {}
    for name, info in good:
        by_study.setdefault(info.study_uid, []).append((name, info))
    data_dir = current_app.config["DATA_DIR"]
    folders_taken: set[str] = set()
    known_projects = set(db.session.scalars(select(Project.label)))
    planned = []
    for n, (study_uid, items) in enumerate(sorted(by_study.items())):
        first = items[0][1]
        ident = routing.identify(_header_of(first), explicit=explicit if n == 0 else
                                 {**explicit, "session": None})
        project = ident.project if ident.project in known_projects else None
        if ident.project and project is None:
            report.messages.append(
                f"Project {ident.project!r} named by the data does not exist; the session "
                "waits in the unassigned prearchive.")
        session_label = ident.session
        if n > 0 and explicit.get("session"):
            session_label = f"{explicit['session']}_{n}"
        folder = _unique(labels.label_from_header(session_label, "session"), folders_taken)
        record = prearchive.new_record(
            project, timestamp, folder, source=upload.source, subject=ident.subject,
            session=folder, study_uid=study_uid, upload_id=upload.id)
        record["scan_date"] = first.study_date.isoformat() if first.study_date else None
        record["study"] = {
            "study_description": first.study_description, "accession": first.accession_number,
            "patient_name": first.patient_name, "patient_id": first.patient_id,
            "scanner": " ".join(x for x in (first.manufacturer, first.model) if x) or None,
            "modality": first.modality,
        }
        record["flags"] = {"auto_archive": ident.auto_archive}
        _check_date(upload, record, first, report)
        target = storage.prearchive_session_dir(data_dir, project, timestamp, folder)
        record["scans"], moves = _plan_scans(items, target, report)
        prearchive.log(record, f"built from upload {upload.id} "
                               f"({sum(len(s['files']) for s in record['scans'])} files)")
        record["status"] = READY
        planned.append((record, moves))
    return planned


def _header_of(info) -> dict[int, str | None]:
    return {0x00081030: info.study_description, 0x00100010: info.patient_name,
            0x00100020: info.patient_id, 0x00104000: info.patient_comments,
            0x00324000: info.study_comments, 0x001021B0: info.additional_patient_history}


def _unique(wanted: str, taken: set[str]) -> str:
    label, n = wanted, 0
    while label in taken:
        n += 1
        label = f"{wanted}_{n}"
    taken.add(label)
    return label


def _check_date(upload: Upload, record: dict, first, report: Report) -> None:
    given = upload.params.get("session_date")
    if not given:
        return
    header = first.study_date.isoformat() if first.study_date else None
    if header != given:
        text = (f"Session {record['folder']}: the date given ({given}) differs from the "
                f"study date in the headers ({header or 'none'}); it will not be archived "
                "automatically.")
        report.messages.append(text)
        record["flags"]["date_mismatch"] = True
        prearchive.log(record, text)
    record["scan_date"] = given


def _plan_scans(items, target: Path, report: Report):
    by_series: dict[str, list] = {}
    for name, info in items:
        by_series.setdefault(info.series_uid, []).append((name, info))
    taken: set[str] = set()
    scans, moves = [], []
    ordered = sorted(by_series.items(), key=lambda kv: _series_key(kv[1][0][1]))
    for series_uid, series in ordered:
        first = series[0][1]
        scan_id = labels.unique_scan_id(labels.scan_id_from_header(first.series_number), taken)
        taken.add(scan_id)
        scan = {"id": scan_id, "series_uid": series_uid, **first.scan_fields(), "files": []}
        seen: dict[str, str] = {}
        names: set[str] = set()
        for name, info in sorted(series, key=lambda x: (x[1].instance_number or 0, x[0])):
            if _is_duplicate(info, seen, name, report):
                continue
            filename = labels.instance_filename(info.sop_uid, info.file_sha256)
            if filename in names:
                filename = labels.instance_filename(None, info.file_sha256)
            names.add(filename)
            scan["files"].append(_file_entry(filename, info))
            moves.append((name, target / "SCANS" / scan_id / "DICOM" / filename))
        scans.append(scan)
    return scans, moves


def _series_key(info):
    try:
        return (int(info.series_number), info.series_uid)
    except (TypeError, ValueError):
        return (10**9, info.series_uid)


def _is_duplicate(info, seen: dict, name: str, report: Report) -> bool:
    """Same SOP Instance UID twice in one upload: the same dataset is a duplicate,
    other content is quarantined (never silently dropped)."""
    if not info.sop_uid:
        return False
    other = seen.get(info.sop_uid)
    if other is None:
        seen[info.sop_uid] = info.dataset_sha256
        return False
    if other == info.dataset_sha256:
        report.duplicates += 1
        return True
    report.quarantine(name, f"another file of this upload has SOP Instance UID "
                            f"{info.sop_uid} with different content")
    return True


def _file_entry(filename: str, info) -> dict:
    return {"name": filename, "size": info.size, "sha256": info.file_sha256,
            "dataset_sha256": info.dataset_sha256, "sop_uid": info.sop_uid,
            "sop_class_uid": info.sop_class_uid, "transfer_syntax": info.transfer_syntax,
            "instance_number": info.instance_number}


def _move_files(moves, source_of, report: Report) -> None:
    """Rename each file into its prearchive folder; a second run skips what is done."""
    dirs = set()
    for name, target in moves:
        src = source_of(name)
        if target.exists() and not src.exists():
            report.stored += 1
            continue
        if target.parent not in dirs:
            target.parent.mkdir(parents=True, exist_ok=True)
            dirs.add(target.parent)
        os.replace(src, target)
        report.stored += 1
    for d in dirs:
        storage.fsync_dir(d)


def _quarantine_files(qdir: Path, report: Report, source_of) -> None:
    if not report.quarantined:
        return
    for entry in report.quarantined:
        src = source_of(entry["name"])
        if src.exists():
            dst = qdir / entry["name"]
            storage.move_into(src, dst)
    storage.write_json_atomic(qdir / "reasons.json", report.quarantined)


def _reject(upload: Upload, where: _Where, reason: str, message: str) -> None:
    """Quarantine the uploaded file with `reason`, then mark the upload failed."""
    src = where.source
    if src.exists():
        storage.move_into(src, where.quarantine / src.name)
        storage.write_json_atomic(where.quarantine / "reasons.json",
                                  [{"name": src.name, "reason": reason}])
    upload.quarantined = upload.files_total or 1
    upload.messages = [f"{upload.original_name}: {reason}"]
    _fail(upload, message)


def upload_report(upload: Upload) -> dict:
    """Return the upload's state for pages and scripts (GET /api/uploads/{id})."""
    return {
        "id": upload.id, "status": upload.status, "source": upload.source,
        "name": upload.original_name, "size": upload.size, "project": upload.project,
        "files_total": upload.files_total, "files_read": upload.files_read,
        "stored": upload.stored, "duplicates": upload.duplicates,
        "quarantined": upload.quarantined, "error": upload.error,
        "messages": upload.messages or [],
        "quarantined_files": (upload.params or {}).get("quarantined_files", []),
        "sessions": upload.sessions or [],
        "created": upload.created.isoformat() + "Z" if upload.created else None,
        "finished": upload.finished.isoformat() + "Z" if upload.finished else None,
    }



def start_upload(path: Path, original_name: str, params: dict, *, source: str = "web",
                 user_id: int | None = None) -> Upload:
    """Record an upload whose file is stored at ``uploads/{id}/``, then queue its job.

    ``params`` holds the explicit project, subject, session and session_date.
    The row is committed before the job is enqueued, so a worker always finds it.
    """
    upload = Upload(id=path.parent.name, source=source, original_name=original_name,
                    size=path.stat().st_size, project=params.get("project"),
                    params={**params, "file": path.name}, user_id=user_id)
    db.session.add(upload)
    db.session.commit()
    queue.enqueue_extract_upload(upload.id)
    return upload
