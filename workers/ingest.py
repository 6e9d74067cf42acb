"""Jobs that turn an uploaded archive into prearchive sessions.

extract_upload  checks the archive and splits its members into batches;
read_batch      (several at once, on several workers) unpacks and reads a batch;
finish_upload   groups what was read into sessions and scans, moves the files
                into the prearchive (renames), writes the records and rows.

Each job can run twice without changing more: batches leave their results in
``uploads/{id}/batches/{n}.json`` and the finishing job skips moves already done.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

from flask import current_app
from rq import get_current_job
from sqlalchemy import select, update

from imaging import dicomio, formats, labels, routing, storage
from imaging.extract import (
    CHUNK,
    ExtractError,
    Member,
    archive_kind,
    extract_members,
    list_members,
    unpack_members,
    write_file,
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
from workers import ingest_formats, joining, prearchive, queue, site_script
from workers.context import app_job
from workers.faults import crash_point
from workers.scans import Report, study_summary
from workers.scans import move_files as _move_files
from workers.scans import plan_scans as _plan_scans

MAX_LISTED_QUARANTINE = 1000


def _dirs(upload: Upload) -> tuple[Path, Path]:
    root = storage.upload_dir(current_app.config["DATA_DIR"], upload.id)
    return root, root / "files"


def _source(upload: Upload) -> Path:
    return storage.upload_dir(current_app.config["DATA_DIR"], upload.id) / upload.params["file"]


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
    (root, files), src, name = _dirs(upload), _source(upload), upload.params["file"]
    # No file work inside a transaction: on SQLite it holds the write lock.
    db.session.commit()
    members_file = root / "members.json"
    saved = storage.read_json(members_file)
    if saved is None:
        try:
            kind, members = _members(src, name)
        except ExtractError as exc:
            upload = db.session.get(Upload, upload_id)
            _quarantine_source(upload, str(exc))
            _fail(upload, str(exc))
            return
        if kind == "tar":
            # tar has no index to seek in: unpack it once here, read it in batches.
            for _ in extract_members(src, members, files):
                pass
        saved = {"kind": kind, "members": [[m.name, m.index, m.size] for m in members]}
        storage.write_json_atomic(members_file, saved)
    upload = db.session.get(Upload, upload_id)
    upload.files_total = len(saved["members"])
    if not saved["members"]:
        _quarantine_source(upload, "the archive holds no files")
        _fail(upload, "The archive holds no files.")
        return
    upload.status = UPLOAD_READING
    db.session.commit()
    queue.enqueue_read_batches(upload_id, len(saved["members"]))


def _members(src: Path, name: str) -> tuple[str, list[Member]]:
    """Return the kind of upload ("zip", "tar" or "file") and its members."""
    try:
        kind = archive_kind(src)
    except ExtractError:
        if formats.detect(src) is None:
            raise ExtractError("The file is neither a zip or tar archive nor a DICOM or "
                               "other image file.") from None
        return "file", [Member(name=name, index=0, size=src.stat().st_size)]
    return kind, list_members(src)


@app_job
@_guard
def read_batch(upload_id: str, batch_no: int, indexes: list[int]) -> None:
    """Job: unpack one batch of members and read their headers."""
    upload = db.session.get(Upload, upload_id)
    if upload is None or upload.status != UPLOAD_READING:
        return
    (root, files), src = _dirs(upload), _source(upload)
    out = root / "batches" / f"{batch_no}.json"
    if out.exists():
        db.session.commit()
        return
    script = site_script.BatchScript(upload, root)
    # End the read transaction: on SQLite it holds the write lock, and the
    # other batches of the upload run at the same time.
    db.session.commit()
    saved = storage.read_json(root / "members.json")
    members = [Member(*saved["members"][i]) for i in indexes]
    results = []
    # A zip member the site script rewrites is written once, rewritten (its
    # original stays in the zip); the others as they are.
    in_place = saved["kind"] == "zip" and script.active
    for member, path, data in _unpacked(src, saved["kind"], members, files, in_place):
        crash_point("read_batch")
        result = script.read(member.name, path, data, in_place=in_place)
        if in_place and data is not None and not site_script.written(result):
            write_file(path, data, member.name, script.made)
        results.append(result or ingest_formats.read_member(member.name, path, data))
    # The files on disk before the batch's result says they are read: the
    # upload is deleted once they are in the prearchive (renames, fsynced).
    storage.sync_filesystem(root)
    storage.write_json_atomic(out, results)
    db.session.execute(update(Upload).where(Upload.id == upload_id)
                       .values(files_read=Upload.files_read + len(results)))
    db.session.commit()


def _unpacked(src: Path, kind, members, files, in_place: bool = False):
    """Yield (member, path on disk, its bytes or None) for a batch, unpacking
    zip members first (whose bytes are then at hand, up to 1 MB; with
    `in_place`, those are not written: the caller writes them)."""
    if kind == "zip":
        try:
            yield from unpack_members(src, members, files, keep_bytes=CHUNK,
                                      write_kept=not in_place)
        except ExtractError as exc:
            raise RuntimeError(str(exc)) from exc
    elif kind in ("tar", "folder"):  # unpacked (or copied) into files/ already
        for m in members:
            yield m, files / m.name, None
    else:
        yield members[0], src, None


@app_job
@_guard
def finish_upload(upload_id: str, batch_count: int) -> None:
    """Job: group what the batches read into prearchive sessions."""
    upload = db.session.get(Upload, upload_id)
    if upload is None or upload.status in (UPLOAD_DONE, UPLOAD_FAILED):
        return
    upload.status = UPLOAD_FINISHING
    db.session.commit()
    root, files = _dirs(upload)
    saved = storage.read_json(root / "members.json")
    kind = saved["kind"]
    read, failed_batches, done_by_batches = _batch_results(root, batch_count)
    read_names = {r["name"] for r in read}
    missing = [m[0] for m in saved["members"] if m[0] not in read_names]
    report = Report()
    if failed_batches:
        report.messages.append(
            f"{len(failed_batches)} batch(es) could not be read; their files are in quarantine.")
    for name in missing:
        report.quarantine(name, "the file could not be read (its batch failed)")
    good, ecat_items, loose = ingest_formats.split_results(read, report)
    read = None
    timestamp = upload.params.get("timestamp") or _claim_timestamp(upload)
    sessions = plan_sessions(upload, good, timestamp, report)
    taken = {record["folder"] for record, _ in sessions}
    sessions += ingest_formats.plan_ecat_sessions(upload, ecat_items, timestamp, report, taken)

    replaced: dict[str, Path] = {}  # files the site script rewrote in the batches

    def source_of(name):
        if name in replaced:
            return replaced[name]
        return _source(upload) if kind == "file" else files / name

    sessions += ingest_formats.place_resources(upload, loose, sessions, source_of, timestamp,
                                               report)
    sessions = site_script.apply_to_sessions(sessions, source_of, report, done_by_batches, good,
                                             root, replaced, saved, _source(upload))
    good = done_by_batches = None  # the records hold what is left of them
    made = sessions
    sessions, joined = joining.join_existing(upload, sessions, source_of, report)

    for _record, moves in sessions:
        _move_files(moves, source_of, report)
        crash_point("finish_upload")
    _quarantine_files(upload, report, source_of)
    rows = []
    for record, _moves in sessions:
        prearchive.save_record(record)
        rows.append((prearchive.index_record(record), record.get("flags")))
    upload.stored = report.stored
    upload.duplicates = report.duplicates
    upload.quarantined = len(report.quarantined)
    upload.files_read = upload.files_total
    upload.messages = report.messages
    upload.params = {**upload.params,
                     "quarantined_files": report.quarantined[:MAX_LISTED_QUARANTINE]}
    upload.sessions = [{"project": r["project"], "timestamp": r["timestamp"],
                        "folder": r["folder"], "subject": r["subject"],
                        "session": r["session"], "study_uid": r["study_uid"]}
                       for r, _ in sessions] + [
        {"project": ps.project, "timestamp": ps.timestamp, "folder": ps.folder,
         "subject": ps.subject, "session": ps.session, "study_uid": ps.study_uid,
         "joined": True} for ps in joined]
    upload.status = UPLOAD_DONE if made else UPLOAD_FAILED
    if not made:
        upload.error = "No DICOM or other image file could be read from the upload."
    upload.finished = utcnow()
    db.session.commit()
    joining.rebuild_joined(joined)
    for ps, flags in rows:
        prearchive.auto_archive(ps, after=queue.enqueue_make_snapshots(ps.id), flags=flags)
    storage.remove_tree(root)


def _batch_results(root: Path, batch_count: int) -> tuple[list[dict], list[int], dict]:
    """Return the batches' results (each file's DicomInfo in place of its JSON),
    the batches that left none, and what the batches' site script did
    (site_script.collect). Each batch is made compact as it is read: a large
    upload's JSON as parsed would take several KB a file."""
    read, failed, done = [], [], {}
    for n in range(batch_count):
        results = storage.read_json(root / "batches" / f"{n}.json")
        if results is None:
            failed.append(n)
            continue
        for result in results:
            if "info" in result:
                result["info"] = dicomio.DicomInfo.from_json(result["info"])
        done.update(site_script.collect(results))
        read.extend(results)
    return read, failed, done


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
        ident = routing.identify(site_script.header_of(first), explicit=explicit if n == 0 else
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
        record["study"] = study_summary(first)
        wanted = upload.params.get("auto_archive")
        record["flags"] = {"auto_archive": ident.auto_archive if wanted is None else wanted}
        if upload.params.get("overwrite") in ("append", "delete"):
            record["flags"]["overwrite"] = upload.params["overwrite"]  # for auto-archive
        _check_date(upload, record, first, report)
        target = storage.prearchive_session_dir(data_dir, project, timestamp, folder)
        record["scans"], moves = _plan_scans(items, target, report)
        prearchive.log(record, f"built from upload {upload.id} "
                               f"({sum(len(s['files']) for s in record['scans'])} files)")
        record["status"] = READY
        planned.append((record, moves))
    return planned


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


def _quarantine_files(upload: Upload, report: Report, source_of) -> None:
    if not report.quarantined:
        return
    qdir = storage.quarantine_dir(current_app.config["DATA_DIR"], upload.id)
    for entry in report.quarantined:
        src = source_of(entry["name"])
        if src.exists():
            dst = qdir / entry["name"]
            storage.move_into(src, dst)
    if report.quarantined:
        storage.write_json_atomic(qdir / "reasons.json", report.quarantined)


def _quarantine_source(upload: Upload, reason: str) -> None:
    src = _source(upload)
    if src.exists():
        qdir = storage.quarantine_dir(current_app.config["DATA_DIR"], upload.id)
        storage.move_into(src, qdir / src.name)
        storage.write_json_atomic(qdir / "reasons.json", [{"name": src.name, "reason": reason}])
    upload.quarantined = upload.files_total or 1
    upload.messages = [f"{upload.original_name}: {reason}"]


def upload_report(upload: Upload) -> dict:
    """Return the upload's state for pages and scripts (GET /api/uploads/{id})."""
    return {
        "id": upload.id, "status": upload.status, "source": upload.source,
        "name": upload.original_name, "size": upload.size, "project": upload.project,
        "files_total": upload.files_total, "files_read": upload.files_read,
        "progress": _progress(upload), "stored": upload.stored, "duplicates": upload.duplicates,
        "quarantined": upload.quarantined, "error": upload.error,
        "messages": upload.messages or [],
        "quarantined_files": (upload.params or {}).get("quarantined_files", []),
        "sessions": upload.sessions or [],
        "created": upload.created.isoformat() + "Z" if upload.created else None,
        "finished": upload.finished.isoformat() + "Z" if upload.finished else None,
    }


def _progress(upload: Upload) -> float:
    """Return how far the upload's jobs are, from 0 to 1."""
    if upload.status in (UPLOAD_DONE, UPLOAD_FAILED):
        return 1.0
    return round(upload.files_read / upload.files_total, 3) if upload.files_total else 0.0


def start_upload(path: Path, original_name: str, params: dict, *, source: str = "web",
                 user_id: int | None = None, size: int | None = None) -> Upload:
    """Record an upload whose file is stored at ``uploads/{id}/``, then queue its job.

    ``params`` holds the explicit project, subject, session and session_date.
    The row is committed before the job is enqueued, so a worker always finds it.
    """
    upload = Upload(id=path.parent.name, source=source, original_name=original_name,
                    size=path.stat().st_size if size is None else size,
                    project=params.get("project"),
                    params={**params, "file": path.name}, user_id=user_id)
    db.session.add(upload)
    db.session.commit()
    queue.enqueue_extract_upload(upload.id)
    return upload
