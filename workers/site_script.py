"""The site's anonymization script, run while an upload's batches are read.

The script's variables (project, subject, session and scan labels) are
settled by the finishing job, once the whole upload is read; running the
script there would make it read and write every file a second time, on one
worker. Each batch instead guesses them from the file's header the way the
finishing job decides them for an upload of one study, runs the script on
the bytes it has just read (on every worker at once), and writes the result
beside the original, in ``uploads/{id}/anon/``. The finishing job takes a
batch's result where the guess was right and the script is the same, and
runs the script itself on the others, from the original (apply_to_sessions).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

from sqlalchemy import select

from imaging import dicomio, labels, routing
from imaging.anonymize import (
    ScriptRejected,
    anonymize_read,
    variable_texts,
)
from imaging.extract import Member, unpack_members, write_file
from models import Project, db
from workers import anonymization, prearchive
from workers.scans import Report

FOLDER = "anon"
KEY = "site_script"


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def header_of(info: dicomio.DicomInfo) -> dict[int, str | None]:
    """Return the header values routing reads, from a file's DicomInfo."""
    return {0x00081030: info.study_description, 0x00100010: info.patient_name,
            0x00100020: info.patient_id, 0x00104000: info.patient_comments,
            0x00324000: info.study_comments, 0x001021B0: info.additional_patient_history}


class BatchScript:
    """The site script as one batch of an upload runs it (made with the app's database)."""

    def __init__(self, upload, root: Path):
        self.script = anonymization.active_script(anonymization.SITE)
        self.folder = root / FOLDER
        self.made: set = set()  # the folders this batch has written files in
        if self.script is None:
            return
        self.digest = digest(self.script.text)
        self.secret = anonymization.secret()
        self.known = set(db.session.scalars(select(Project.label)))
        self.explicit = {k: upload.params.get(k) for k in ("project", "subject", "session")}

    def guess(self, info: dicomio.DicomInfo) -> dict:
        """Return the variables the finishing job will give a file of a one-study upload."""
        ident = routing.identify(header_of(info), explicit=self.explicit)
        project = ident.project if ident.project in self.known else None
        session = labels.label_from_header(ident.session, "session")
        return anonymization.variables(
            {"project": project, "subject": ident.subject, "session": session},
            labels.scan_id_from_header(info.series_number))

    @property
    def active(self) -> bool:
        return self.script is not None

    def read(self, name: str, path: Path, data: bytes | None,
             in_place: bool = False) -> dict | None:
        """Read a DICOM file of a batch and run the script on it; return the
        batch's result for it, the outcome noted, or None when the script is
        off or the file is no DICOM file for this reading (read_member's then).

        A file too large to hold in memory, or one the script makes
        unreadable, is left to the finishing job. With `in_place`, a file
        the script changes is written to `path` (see written()), where the
        caller has not written the original.
        """
        if self.script is None:
            return None
        if data is None:
            if path.stat().st_size > dicomio.WHOLE_READ_LIMIT:
                return None
            data = path.read_bytes()
        try:
            info, ds, pixels = dicomio.read_header(data)
        except dicomio.NotDicom:
            return None
        values = self.guess(info)
        outcome = {"script": self.digest, "variables": values}
        new = None
        try:
            _changes, new, new_info = anonymize_read(info, ds, pixels, data, self.script,
                                                     values, self.secret)
            if new is not None:
                if in_place:
                    write_file(path, new, name, self.made)
                    outcome["in_place"] = True
                else:
                    target = self.folder / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(new)
        except ScriptRejected as exc:
            outcome["rejected"] = exc.reason
        except Exception:  # the finishing job runs it again, and reports what fails
            return {"name": name, "info": dicomio.with_digests(info, data).to_json()}
        if new is None:
            return {"name": name, "info": dicomio.with_digests(info, data).to_json(),
                    KEY: outcome}
        # The original's hashes are not worked out: the finishing job compares
        # the files of an upload by what is kept of them, the rewrite.
        read = dataclasses.replace(info, file_sha256=new_info.file_sha256,
                                   dataset_sha256=new_info.dataset_sha256).to_json()
        outcome["info"] = {k: v for k, v in new_info.to_json().items() if v != read[k]}
        return {"name": name, "info": read, KEY: outcome}


def written(result: dict | None) -> bool:
    """Return True when read() wrote the file of `result` (rewritten) in place."""
    return bool(result and result.get(KEY, {}).get("in_place"))


RESTORE = object()


def collect(read: list[dict]) -> dict[str, tuple]:
    """Take the batches' outcomes out of their results, compact (an upload of
    40,000 files holds one each): {name: (script digest, variables,
    rejection or None, changed values or None, rewritten in place)}.
    Values that repeat from file to file (labels, digests) are kept once."""
    shared: dict = {}
    found = {}
    for result in read:
        outcome = result.pop(KEY, None)
        if outcome is None:
            continue
        diff = outcome.get("info")
        if diff:
            diff = {k: shared.setdefault(v, v) if k in _REPEATED and v is not None else v
                    for k, v in diff.items()}
        found[result["name"]] = (shared.setdefault(outcome["script"], outcome["script"]),
                                 shared.setdefault(_key(outcome["variables"]),
                                                   _key(outcome["variables"])),
                                 outcome.get("rejected"), diff, bool(outcome.get("in_place")))
    return found


# DicomInfo fields a script's changes give every file of a session alike.
_REPEATED = frozenset({"study_uid", "series_uid", "study_description", "patient_name",
                       "patient_id", "accession_number", "study_date", "study_time",
                       "series_description", "transfer_syntax", "meta_length"})


def outcomes(found: dict[str, tuple], good, script, root: Path):
    """Return outcome(name, variables) -> (Prepared, path of the new file when it
    is not the upload's file) | None | RESTORE, from what collect() found.

    It gives what a batch did to the file `name` when it ran `script` with
    these `variables`; None when the finishing job must run it, RESTORE
    when it must run it after putting the original back (the batch
    rewrote the file in place with other variables, or with a script
    changed since).
    """
    if not found:
        return lambda name, values: None
    wanted = digest(script.text)
    infos = dict(good)

    def outcome(name: str, values: dict):
        done = found.get(name)
        if done is None or name not in infos:
            return None
        script_digest, variables, rejected, diff, in_place = done
        if script_digest != wanted or variables != _key(values):
            return RESTORE if in_place else None
        if rejected is not None:
            return anonymization.Prepared(rejected=rejected), None
        if diff is None:
            return anonymization.Prepared(info=infos[name]), None
        info = infos[name].updated(diff)
        # Rewritten in place: the file is where the upload's files are.
        return anonymization.Prepared(changed=True, info=info), \
            None if in_place else root / FOLDER / name

    return outcome


def _key(values: dict) -> tuple:
    return tuple(sorted(variable_texts(values).items()))


def apply_to_sessions(sessions, source_of, report: Report, done_by_batches: dict, good,
                      root: Path, replaced: dict[str, Path], saved: dict, source_path: Path):
    """Run the site's anonymization script on each file the finishing job
    planned (`sessions`: (record, moves)) before it is READY.

    The batches ran it already where they guessed the variables right: such
    a file's new version goes into `replaced`. Others are rewritten here,
    where they are (the upload folder, or the prearchive when a first run of
    the finishing job moved them already); rejected files go to quarantine
    with the reason. Returns the sessions that still have files.
    """
    script = anonymization.active_script(anonymization.SITE)
    if script is None:
        return sessions
    outcome = outcomes(done_by_batches, good, script, root)
    originals = {m[0]: Member(*m) for m in saved["members"]} if saved["kind"] == "zip" else {}
    kept = []
    for record, moves in sessions:
        # (scan, file name) -> (member, target): target is .../SCANS/{scan}/DICOM/{file}.
        by_entry = {(t.parts[-3], t.name): (name, t) for name, t in moves}

        def path_of(scan, entry, by_entry=by_entry):
            name, target = by_entry[(scan["id"], entry["name"])]
            return source_of(name) if source_of(name).exists() else target

        def prepared(scan, entry, values, by_entry=by_entry):
            name, target = by_entry[(scan["id"], entry["name"])]
            found = outcome(name, values)
            if found is RESTORE:
                # Rewritten in place by its batch for other labels: back to the
                # original (from the zip) before the script runs here.
                if not target.exists():
                    for _ in unpack_members(source_path, [originals[name]], root / "files"):
                        pass
                return None
            if found is None:
                return None
            done, new = found
            if new is not None:
                if not new.exists() and not target.exists():
                    return None  # the batch's file is gone: run the script here
                replaced[name] = new
            return done

        changed, rejected = anonymization.anonymize_record(script, record, path_of,
                                                           prepared=prepared)
        dropped = set()
        for scan, entry, path, reason in rejected:
            name, target = by_entry[(scan["id"], entry["name"])]
            if path == target:  # moved by an earlier run: back to where quarantine looks
                os.replace(target, source_of(name))
            report.quarantine(name, f"rejected by the site anonymization script: {reason}")
            dropped.add(name)
        if changed or rejected:
            prearchive.log(record, f"site anonymization script: {changed} file(s) changed, "
                                   f"{len(rejected)} rejected")
        moves = [(name, target) for name, target in moves if name not in dropped]
        if moves:
            kept.append((record, moves))
    return kept
