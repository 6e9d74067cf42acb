"""The site and project anonymization scripts, applied to stored DICOM files.

The site script runs when a prearchive session is built, before it is READY;
a project's script runs when a session is archived into the project. Each
file is rewritten atomically (imaging.anonymize.anonymize_in_place); a file a
script rejects is moved to quarantine with the reason. Scripts mark the
files they changed, so a job that runs twice changes nothing more.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import threading
from pathlib import Path

from flask import current_app
from sqlalchemy import select

from imaging import dicomio, headers, storage
from imaging.anonymize import (
    DEFAULT_SITE_SCRIPT,
    Script,
    ScriptRejected,
    anonymize_in_place,
    apply_script,
    parse_script,
)
from models import AnonymizationScript, Project, db, utcnow

SITE = "site"
SECRET_FILE = "anonymization_secret"


def project_scope(project: Project) -> str:
    return f"project:{project.id}"


def secret() -> bytes:
    """Return the site's secret for new UIDs and date shifts, made on first use.

    It lives in the instance folder beside the session key, in a file of its
    own: losing it means a later upload of a study gets other UIDs.
    """
    path = os.path.join(current_app.instance_path, SECRET_FILE)
    if not os.path.exists(path):
        # Written whole under another name, then linked into place: a worker
        # that makes it at the same time as another never reads it half made.
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(os.urandom(32).hex())
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another worker made it first: theirs is the secret
        finally:
            os.unlink(tmp)
        storage.fsync_dir(os.path.dirname(path))
    with open(path) as fh:
        return bytes.fromhex(fh.read().strip())


def stored_script(scope: str) -> AnonymizationScript | None:
    return db.session.scalar(select(AnonymizationScript).filter_by(scope=scope))


def script_text(scope: str) -> tuple[str, bool]:
    """Return (text, enabled) of a scope; the site's default when never saved."""
    row = stored_script(scope)
    if row is None:
        return (DEFAULT_SITE_SCRIPT, True) if scope == SITE else ("", False)
    return row.text, row.enabled


def active_script(scope: str) -> Script | None:
    """Return the script to run for a scope, or None when it is disabled or empty."""
    text, enabled = script_text(scope)
    if not enabled or not text.strip():
        return None
    return parse_script(text)


def save_script(scope: str, text: str, enabled: bool, username: str | None,
                project: Project | None = None) -> tuple[str, bool]:
    """Check and store a scope's script; return the old (text, enabled).

    Raises imaging.anonymize.ScriptError (naming the line) when the text is
    not a valid script; nothing is stored then. The caller commits.
    """
    parse_script(text)
    old = script_text(scope)
    row = stored_script(scope)
    if row is None:
        row = AnonymizationScript(scope=scope, project_id=project.id if project else None)
        db.session.add(row)
    row.text, row.enabled, row.updated, row.updated_by = text, enabled, utcnow(), username
    return old


def file_entry(name: str, info: dicomio.DicomInfo) -> dict:
    """Return a record's entry for a file, from its header as read now."""
    return {"name": name, "size": info.size, "sha256": info.file_sha256,
            "dataset_sha256": info.dataset_sha256, "sop_uid": info.sop_uid,
            "sop_class_uid": info.sop_class_uid, "transfer_syntax": info.transfer_syntax,
            "instance_number": info.instance_number}


def variables(record: dict, scan_id: str, labels: dict | None = None) -> dict:
    """Return a script's variables for a file of a prearchive session's scan."""
    labels = labels or record
    return {"project": labels.get("project"), "subject": labels.get("subject"),
            "session": labels.get("session"), "scan": scan_id}


def anonymize_record(script: Script, record: dict, path_of, labels: dict | None = None,
                     prepared=None):
    """Apply `script` to every file of a prearchive record's scans.

    `path_of(scan, entry)` gives each file's path. What the record says of
    the files, their scans and their study is read again from the rewritten
    files, so no original value stays in the record (nor reaches the
    archive's index); rejected files leave the record. `prepared(scan,
    entry, variables)` may give the outcome of a run made earlier with these
    variables (a Prepared), or None to run the script here. Returns (files
    changed, [(scan, entry, path, reason) rejected]).
    """
    key = secret()
    changed, rejected = 0, []
    for scan in record.get("scans", []):
        if scan.get("resource", "DICOM") != "DICOM":
            continue  # an ECAT scan: the scripts are DICOM's
        kept = []
        values = variables(record, scan["id"], labels)  # every file of the scan: read only
        for entry in scan.get("files", []):
            done = prepared(scan, entry, values) if prepared is not None else None
            if done is None:
                path = path_of(scan, entry)
                try:
                    changes, info = anonymize_in_place(path, script, values, key)
                except ScriptRejected as exc:
                    done = Prepared(rejected=exc.reason)
                else:
                    done = Prepared(changed=bool(changes), info=info)
            if done.rejected is not None:
                rejected.append((scan, entry, path_of(scan, entry), done.rejected))
                continue
            changed += done.changed
            if not kept:
                _describe(record, scan, done.info)
            kept.append(file_entry(entry["name"], done.info))
        scan["files"] = kept
    record["scans"] = [s for s in record.get("scans", []) if s["files"] or s.get("resources")]
    return changed, rejected


@dataclasses.dataclass
class Prepared:
    """What a script did to one file: rejected it (the reason), or left this info."""

    changed: bool = False
    info: dicomio.DicomInfo | None = None
    rejected: str | None = None


def _describe(record: dict, scan: dict, info: dicomio.DicomInfo) -> None:
    """Describe a scan (and its study) in the record from a file's header as it is now."""
    scan.update(info.scan_fields())
    record["study_uid"] = info.study_uid
    study = record.setdefault("study", {})
    study.update({
        "study_description": info.study_description, "accession": info.accession_number,
        "patient_name": info.patient_name, "patient_id": info.patient_id,
        "scanner": " ".join(x for x in (info.manufacturer, info.model) if x) or None,
        "modality": info.modality})


def quarantine(key: str, items: list[tuple[Path, str, str]]) -> None:
    """Move files to ``quarantine/{key}/`` and add their reasons to its reasons.json.

    `items` are (path, name to file it under, reason); a path already moved
    is skipped, so a second run changes nothing more.
    """
    if not items:
        return
    qdir = storage.quarantine_dir(current_app.config["DATA_DIR"], key)
    reasons = storage.read_json(qdir / "reasons.json") or []
    for path, name, reason in items:
        if Path(path).exists():
            storage.move_into(Path(path), qdir / name)
        if not any(r.get("name") == name for r in reasons):
            reasons.append({"name": name, "reason": reason})
    storage.write_json_atomic(qdir / "reasons.json", reasons)


def preview(path: Path, script: Script, labels: dict) -> tuple[list[dict], str | None]:
    """Return a file's header before and after `script` side by side (headers.diff),
    and the reason when the script would reject the file. Nothing is written."""
    before = headers.read_header(path)
    after = copy.deepcopy(before)
    try:
        apply_script(script, after, labels, secret())
    except ScriptRejected as exc:
        return headers.diff(headers.dump(before), headers.dump(before)), exc.reason
    return headers.diff(headers.dump(before), headers.dump(after)), None
