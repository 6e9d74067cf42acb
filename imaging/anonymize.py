"""Anonymization scripts: a small rule language in the spirit of XNAT's DicomEdit.

A script is text, one statement per line; `//` or `#` starts a comment.
Statements run from top to bottom on each file.

    (0008,1030) := project          set an attribute to a variable
    PatientName := "anon"           ... or to a text; "{subject}_{session}"
                                    puts variables into a text ({{ and }}
                                    for braces)
    -(0010,0030)                    remove an attribute
    remove PatientBirthDate         (the same)
    remove private                  remove all private attributes
    blank (0010,1040)               keep an attribute with an empty value
    keep PatientAge                 exempt it from every later statement
                                    but an explicit `:=` of it
    replace uids                    replace every instance UID by a new one
                                    derived from the old and the site's secret
    shift dates [DAYS]              move every date back by a number of days
                                    (1 to DAYS, default 365) fixed per subject
    basic-profile [OPTION ...]      DICOM PS3.15 Annex E's Basic Application
                                    Level Confidentiality Profile
    reject if TAG = "text"          refuse the file (also !=, and ~ for a
    reject if TAG present           regular expression; present, missing)

An attribute is written as `(gggg,eeee)` in hexadecimal or by its DICOM
keyword (`PatientName`). The variables are project, subject, session and
scan (labels in Scanyard) and modality (the file's Modality unless given);
a variable with no value leaves its attribute unchanged. Statements other
than `:=`, `-`, `remove TAG` and `blank` (which act on the top level of the
dataset) act at every depth, inside sequences too. The file meta group
(0002) and the pixel data are not a script's to change.

The profile's options (PS3.15 Table E.1-1, see imaging/deid_profile.py):
retain-longitudinal-dates, retain-modified-dates (dates shifted as by
`shift dates`), retain-patient-characteristics, retain-device-identity,
retain-uids, clean-descriptors. With the profile, a file gets
PatientIdentityRemoved YES and its DeidentificationMethod (Code Sequence).

A script that changes a file also adds "Scanyard script <digest>" to its
DeidentificationMethod; a file that already has it for the same script and
variables is left alone, so applying a script twice changes nothing more.

Example (a project that keeps dates for a longitudinal study):

    basic-profile retain-longitudinal-dates retain-patient-characteristics
    PatientName := subject
    PatientID := "{project}_{subject}"
    reject if BurnedInAnnotation = "YES"
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pydicom
from pydicom import Dataset
from pydicom.multival import MultiValue

from imaging import deid_actions as actions
from imaging import dicomio, dicomwrite, storage
from imaging.anonymize_parse import (
    VARIABLES,
    Profile,
    Reject,
    Remove,
    ScriptError,
    SetTag,
    Statement,
    parse_statements,
    tag_text,
)
from imaging.deid_profile import BASIC_PROFILE_CODE, OPTIONS, apply_profile, build_table

__all__ = [
    "DEFAULT_SITE_SCRIPT", "VARIABLES", "Script", "ScriptError", "ScriptRejected",
    "anonymize_bytes", "anonymize_file", "anonymize_header", "anonymize_in_place",
    "anonymize_read", "apply_script", "parse_script",
]

DEFAULT_SITE_SCRIPT = """\
// Scanyard's site script, as XNAT's default: the project into Study
// Description, the subject into Patient Name, the session into Patient ID.
(0008,1030) := project
(0010,0010) := subject
(0010,0020) := session
"""

_MARKER = "Scanyard script "


class ScriptRejected(Exception):
    """A file that a script refuses; `reason` says why (and which line)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class Script:
    """A parsed script: its text and its statements, in order."""

    text: str
    statements: list[Statement] = field(default_factory=list)

    @property
    def shift_days(self) -> int:
        """Return the range of date shifts: the last `shift dates N`, else the default."""
        days = [s.days for s in self.statements if getattr(s, "kind", "") == "shift-dates"]
        return days[-1] if days else actions.DEFAULT_SHIFT_DAYS

    def marker(self, variables: dict) -> str:
        """Return the DeidentificationMethod value that records this script's run."""
        data = json.dumps([self.text, variable_texts(variables)], sort_keys=True)
        return _MARKER + hashlib.sha256(data.encode()).hexdigest()[:16]


def parse_script(text: str) -> Script:
    """Return the Script written in `text`; raise ScriptError naming the bad line."""
    return Script(text=text, statements=parse_statements(text))


def _text_as_read(ds: Dataset, tag: int) -> str:
    """Return an element's value as text ("" when absent), leaving it as read."""
    element = dicomio.element_as_read(ds, tag)
    return str((element.value if element is not None else "") or "")


class _Run:
    """One application of a script to one dataset."""

    def __init__(self, script: Script, ds: Dataset, variables: dict, secret: bytes,
                 uid_prefix: str | None):
        self.script, self.ds, self.secret, self.uid_prefix = script, ds, secret, uid_prefix
        self.variables = variable_texts(variables)
        if not self.variables.get("modality"):
            self.variables["modality"] = _text_as_read(ds, 0x00080060) or None
        self.kept: dict[int, int] = {}
        self.changes: list[str] = []
        self._uids: dict[str, str] = {}
        self._days: int | None = None

    def uid(self, old: str) -> str:
        if old not in self._uids:
            self._uids[old] = actions.new_uid(old, self.secret, self.uid_prefix)
        return self._uids[old]

    def days(self) -> int:
        """Return this subject's date offset; the subject label, else the PatientID, keys it."""
        if self._days is None:
            subject = self.variables.get("subject") or _text_as_read(self.ds, 0x00100020)
            if not subject:
                raise ScriptRejected("dates cannot be shifted: no subject and no PatientID")
            self._days = actions.date_offset(self.secret, subject, self.script.shift_days)
        return self._days

    def shift(self, text: str, vr: str) -> str | None:
        return actions.shift_date_text(text, self.days(), vr)

    def note(self, statement: Statement, text: str) -> None:
        self.changes.append(f"line {statement.line}: {text}")


def apply_script(script: Script, dataset: Dataset, variables: dict, secret: bytes,
                 uid_prefix: str | None = None) -> list[str]:
    """Apply `script` to `dataset` in place; return what changed, one line of text each.

    Raises ScriptRejected when a `reject` statement matches or a statement
    cannot be applied to this file. Returns [] (and changes nothing) when
    the file already carries this script's marker for these variables.
    """
    marker = script.marker(variables)
    if marker in _method_values(dataset):
        return []
    run = _Run(script, dataset, variables, secret, uid_prefix)
    for statement in script.statements:
        try:
            _execute(run, statement)
        except ScriptRejected:
            raise
        except Exception as exc:  # a value this file holds that the statement cannot take
            raise ScriptRejected(f"line {statement.line}: {exc}") from exc
    if run.changes:
        _add_method(dataset, marker)
    return run.changes


def _execute(run: _Run, s: Statement) -> None:
    ds, kind = run.ds, s.kind
    if kind == "set":
        _set(run, s)
    elif kind in ("remove", "blank"):
        _remove_or_blank(run, s)
    elif kind == "keep":
        run.kept.setdefault(s.tag, s.line)
    elif kind == "remove-private":
        count = actions.remove_private(ds, run.kept)
        if count:
            run.note(s, f"removed {count} private attribute(s)")
    elif kind == "replace-uids":
        count = actions.replace_uids(ds, run.kept, run.uid)
        if count:
            run.note(s, f"replaced the UIDs of {count} attribute(s)")
    elif kind == "shift-dates":
        count = actions.shift_dates(ds, run.kept, run.days())
        if count:
            run.note(s, f"shifted {count} date(s) by {run.days()} days")
            ds.LongitudinalTemporalInformationModified = "MODIFIED"
    elif kind == "basic-profile":
        _profile(run, s)
    elif kind == "reject":
        _reject(run, s)


def _set(run: _Run, s: SetTag) -> None:
    if s.variable is not None:
        value = run.variables.get(s.variable)
        if value is None:
            run.note(s, f"{tag_text(s.tag)} left unchanged: no {s.variable}")
            return
    else:
        value = s.text.format_map(_Blank(run.variables))
    ds = run.ds
    held = ds._dict.get(s.tag)
    current = ds.get(s.tag)
    writable = current is not None and current.VR in actions.TEXT_VRS
    pydicom.valuerep.validate_value(current.VR if writable else s.vr, value, pydicom.config.RAISE)
    if writable:
        if str(current.value or "") == value:
            ds._dict[s.tag] = held  # as read: unchanged
            return
        current.value = value
    else:
        if current is not None:
            del ds[s.tag]  # a private element read as UN, or a binary VR: write it anew
        ds.add_new(s.tag, s.vr, value)
    run.note(s, f"{tag_text(s.tag)} set to {value!r}")


def _remove_or_blank(run: _Run, s: Remove) -> None:
    ds = run.ds
    if s.tag not in ds:
        return
    if s.tag in run.kept:
        run.note(s, f"{tag_text(s.tag)} kept (line {run.kept[s.tag]})")
        return
    if s.kind == "remove":
        del ds[s.tag]
        run.note(s, f"{tag_text(s.tag)} removed")
    elif not ds[s.tag].is_empty:
        actions.set_empty(ds[s.tag])
        run.note(s, f"{tag_text(s.tag)} blanked")


def _profile(run: _Run, s: Profile) -> None:
    table = build_table(s.options)
    done = apply_profile(run.ds, table, run.kept, run.uid, run.shift)
    summary = ", ".join(f"{count} {what}" for what, count in sorted(done.items()))
    run.note(s, f"basic profile: {summary or 'nothing to change'}")
    ds = run.ds
    ds.PatientIdentityRemoved = "YES"
    codes = [BASIC_PROFILE_CODE] + [OPTIONS[o] for o in sorted(s.options)]
    for _value, meaning in codes:
        _add_method(ds, meaning)
    items = []
    for value, meaning in codes:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = items
    if "retain-longitudinal-dates" in s.options:
        ds.LongitudinalTemporalInformationModified = "UNMODIFIED"
    elif "retain-modified-dates" in s.options:
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
    else:
        ds.LongitudinalTemporalInformationModified = "REMOVED"


def _reject(run: _Run, s: Reject) -> None:
    present = s.tag in run.ds
    value = _value_text(run.ds[s.tag]) if present else None
    if s.op == "present":
        hit = present
    elif s.op == "missing":
        hit = not present
    elif s.op == "=":
        hit = value == s.operand
    elif s.op == "!=":
        hit = value != s.operand
    else:
        hit = value is not None and s.pattern.search(value) is not None
    if hit:
        raise ScriptRejected(f"rejected by line {s.line}: {s.source}")


def anonymize_header(ds: Dataset, data: bytes, pixels: tuple[int, int], script: Script,
                     variables: dict, secret: bytes, uid_prefix: str | None = None):
    """Apply `script` to a header dicomio.read_header read from `data`.

    The pixel data and what follows it are added as raw bytes (never
    parsed) and the file is written anew with every untouched element
    copied. Returns (changes, the new bytes or None when nothing changed,
    the tags of the elements that changed; 0x00020000 for the file meta),
    or None when the file cannot be written this way: the caller then runs
    anonymize_bytes on `data`. Raises ScriptRejected as apply_script does.
    """
    if not dicomio.add_rest(ds, data, pixels):
        return None
    done = _rewrite(ds, data, script, variables, secret, uid_prefix, dicomwrite.encode_fast)
    return None if done[0] and done[1] is None else done


def _rewrite(ds: Dataset, data: bytes, script: Script, variables: dict, secret: bytes,
             uid_prefix: str | None, encode) -> tuple[list[str], bytes | None, set[int]]:
    """Apply `script` to `ds`, read from `data`, and write it with `encode`;
    return (changes, new bytes, tags changed) as anonymize_header does."""
    before = dict(ds._dict)
    meta = dict(ds.file_meta._dict) if hasattr(ds, "file_meta") else None
    changes = apply_script(script, ds, variables, secret, uid_prefix)
    if not changes:
        return changes, None, set()
    _ensure_transfer_syntax(ds)
    changed = {t for t in before.keys() | ds._dict.keys() if before.get(t) is not ds._dict.get(t)}
    same_meta = meta is not None and meta == ds.file_meta._dict
    if not same_meta:
        changed.add(0x00020000)
    try:
        return changes, encode(ds, data if same_meta else None), changed
    except (AttributeError, ValueError) as exc:  # pydicom's word for a file meta it cannot make
        raise ScriptRejected(f"the changed file cannot be written as DICOM: {exc}") from exc


class Anonymized(NamedTuple):
    changes: list[str]
    data: bytes | None
    dataset: Dataset


def anonymize_file(path, script: Script, variables: dict, secret: bytes,
                   uid_prefix: str | None = None) -> list[str]:
    """Apply `script` to the DICOM file at `path` and replace the file atomically.

    The transfer syntax and the pixel data's bytes are kept (nothing is
    decompressed). Returns the changes; [] leaves the file untouched.
    Raises ScriptRejected as apply_script does; the file is then unchanged.
    """
    path = Path(path)
    changes, data, _ = anonymize_bytes(path.read_bytes(), script, variables, secret, uid_prefix)
    if changes:
        storage.write_atomic(path, data, make_parents=False)
    return changes


def anonymize_in_place(path, script: Script, variables: dict, secret: bytes,
                       uid_prefix: str | None = None) -> tuple[list[str], dicomio.DicomInfo]:
    """Do what anonymize_file does; return the changes and what read_dicom
    reads from the file after them.

    The file is read and its header parsed once (see anonymize_read); a
    file too large to hold in memory, or one read_header refuses, goes
    through anonymize_file and is read again.
    """
    path = Path(path)
    header = None
    if path.stat().st_size <= dicomio.WHOLE_READ_LIMIT:
        data = path.read_bytes()
        try:
            header = dicomio.read_header(data)
        except dicomio.NotDicom:
            pass
    if header is None:
        changes = anonymize_file(path, script, variables, secret, uid_prefix)
        return changes, dicomio.read_dicom(path)
    info, ds, pixels = header
    changes, new, new_info = anonymize_read(info, ds, pixels, data, script, variables,
                                            secret, uid_prefix)
    if new is None:
        return changes, dicomio.with_digests(info, data)
    storage.write_atomic(path, new, make_parents=False)
    return changes, new_info


def anonymize_read(info: dicomio.DicomInfo, ds: Dataset, pixels: tuple[int, int], data: bytes,
                   script: Script, variables: dict, secret: bytes,
                   uid_prefix: str | None = None):
    """Apply `script` to a file's bytes whose header dicomio.read_header read
    (info, ds, pixels); return (changes, the new bytes or None when nothing
    changed, their DicomInfo or None).

    The header is rewritten as anonymize_header does; a file it cannot
    write that way is parsed whole (anonymize_bytes). Raises ScriptRejected
    as apply_script does.
    """
    done = anonymize_header(ds, data, pixels, script, variables, secret, uid_prefix)
    if done is not None:
        changes, new, changed = done
        return changes, new, None if new is None else dicomio.changed_info(info, ds, new, changed)
    whole = anonymize_bytes(data, script, variables, secret, uid_prefix)
    return (whole.changes, whole.data,
            None if whole.data is None else dicomio.info_of(whole.dataset, whole.data))


def anonymize_bytes(data: bytes, script: Script, variables: dict, secret: bytes,
                    uid_prefix: str | None = None) -> Anonymized:
    """Apply `script` to a DICOM file's bytes; return (changes, new bytes, dataset).

    The new bytes are None when nothing changed. Elements the script left
    alone are written as they were read (imaging.dicomwrite). Raises
    ScriptRejected as apply_script does.
    """
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    changes, new, _changed = _rewrite(ds, data, script, variables, secret, uid_prefix,
                                      dicomwrite.encode)
    return Anonymized(changes, new, ds)


def _ensure_transfer_syntax(ds: Dataset) -> None:
    """Give a file read without file meta the syntax it was read in."""
    meta = ds.file_meta if hasattr(ds, "file_meta") else None
    if meta is None:
        ds.file_meta = meta = pydicom.dataset.FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        implicit, little = ds.original_encoding
        if implicit:
            meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        elif little:
            meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        else:
            meta.TransferSyntaxUID = pydicom.uid.ExplicitVRBigEndian


def _method_values(ds: Dataset) -> list[str]:
    element = dicomio.element_as_read(ds, 0x00120063)
    value = element.value if element is not None else None
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    return [str(v) for v in value]


def _add_method(ds: Dataset, text: str) -> None:
    values = _method_values(ds)
    if text not in values:
        values.append(text)
    ds.DeidentificationMethod = values if len(values) > 1 else values[0]


def _value_text(elem) -> str:
    value = elem.value
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value).strip()
    if isinstance(value, bytes):
        return value.decode("latin-1").strip("\x00 ")
    return "" if value is None else str(value).strip()


def variable_texts(variables: dict) -> dict:
    """Return a script's variables as texts (None for no value), as markers hash them."""
    return {k: (None if v in (None, "") else str(v)) for k, v in variables.items()}


class _Blank(dict):
    """Variables for str.format_map: one without a value reads as empty text."""

    def __missing__(self, key):
        return ""

    def __getitem__(self, key):
        value = super().get(key)
        return "" if value is None else value
