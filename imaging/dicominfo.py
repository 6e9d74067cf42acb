"""The header values Scanyard keeps of a DICOM file, and how they are read
from a header pydicom parsed.

Values are read as text, numbers and dates; a value that cannot be read is
missing (None), and a header without the UIDs that place its file raises
NotDicom. Plain ASCII values are read from their raw bytes where that gives
pydicom's text without its conversion of each element.
"""

import dataclasses
import datetime
import functools
import math
import re
import sys

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.multival import MultiValue

_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_LE = "1.2.840.10008.1.2.1"
# By the standard these VRs hold ASCII text to which no character set applies,
# and pydicom keeps it as it is: reading their raw bytes gives the same text
# without pydicom's conversion of each element, a good part of reading a header.
_RAW_TEXT_VRS = frozenset({"UI", "CS", "DA", "TM"})
# The text VRs to which a character set applies read the same way when their
# bytes are ASCII without an escape: every character set pydicom knows
# decodes those as ASCII. What pydicom then does to the text, by VR (a
# person's name with its groups, "=", is left to pydicom):
_ASCII_TEXT_VRS = {
    **dict.fromkeys(("LO", "SH", "UC"),
                    lambda text: "\\".join(v.rstrip("\0 ") for v in text.split("\\"))),
    **dict.fromkeys(("LT", "ST", "UT"), lambda text: text.rstrip("\0 ")),
    "PN": lambda text: None if "=" in text else text.rstrip("\0 "),
}
# One well-formed number (IS, DS) reads as its bytes; pydicom keeps a
# number's text as it was written. Anything else (several values, padding
# with NULs, a malformed number) is left to pydicom.
_PLAIN_NUMBERS = {
    "IS": re.compile(rb" *[+-]?[0-9]{1,12} *"),
    "DS": re.compile(rb" *[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)? *"),
}
_DATE_RE = re.compile(r"(\d{4})\.?(\d{2})\.?(\d{2})")


# DicomInfo fields that the files of a series, or of a study, share.
_SAME_IN_A_SERIES = ("study_uid", "series_uid", "sop_class_uid", "transfer_syntax", "modality",
                     "series_number", "series_description", "study_time", "study_description",
                     "accession_number", "patient_name", "patient_id", "patient_comments",
                     "study_comments", "additional_patient_history", "manufacturer", "model",
                     "station_name")


class NotDicom(ValueError):
    """A file that is not a readable DICOM instance; the message says why."""


@dataclasses.dataclass(slots=True)
class DicomInfo:
    """The header values Scanyard keeps of one DICOM file.

    `meta_length` is the number of bytes before the dataset (preamble,
    "DICM" and the file meta group 0002); `size` the file's size in bytes.
    """

    study_uid: str
    series_uid: str
    sop_uid: str | None
    sop_class_uid: str | None
    transfer_syntax: str | None
    modality: str | None
    series_number: str | None
    series_description: str | None
    instance_number: int | None
    study_date: datetime.date | None
    study_time: str | None
    study_description: str | None
    accession_number: str | None
    patient_name: str | None
    patient_id: str | None
    patient_comments: str | None
    study_comments: str | None
    additional_patient_history: str | None
    manufacturer: str | None
    model: str | None
    station_name: str | None
    repetition_time: float | None
    echo_time: float | None
    flip_angle: float | None
    file_sha256: str
    dataset_sha256: str
    size: int
    meta_length: int

    def scan_fields(self) -> dict:
        """Return the values that describe this file's scan (JSON-serialisable)."""
        names = (
            "series_description",
            "modality",
            "series_uid",
            "manufacturer",
            "model",
            "repetition_time",
            "echo_time",
            "flip_angle",
        )
        return {name: getattr(self, name) for name in names}

    def to_json(self) -> dict:
        """Return all fields as a JSON-serialisable dict (the date as ISO text)."""
        # Every field is a plain value: no need for asdict()'s deep copy.
        data = {name: getattr(self, name) for name in _NAMES}
        if self.study_date is not None:
            data["study_date"] = self.study_date.isoformat()
        return data

    @classmethod
    def from_json(cls, data: dict) -> "DicomInfo":
        """Return the DicomInfo that to_json() wrote; unknown keys are ignored."""
        return cls(**_from_json({name: data.get(name) for name in _NAMES}))

    def updated(self, changes: dict) -> "DicomInfo":
        """Return this DicomInfo with `changes`, values as to_json() writes
        them (unknown keys ignored): from_json({**to_json(), **changes})."""
        return dataclasses.replace(
            self, **_from_json({k: v for k, v in changes.items() if k in _NAME_SET}))


_NAMES = tuple(f.name for f in dataclasses.fields(DicomInfo))
_NAME_SET = frozenset(_NAMES)


def _from_json(values: dict) -> dict:
    """Turn DicomInfo values as to_json() writes them into the fields' own."""
    for name in _SAME_IN_A_SERIES:  # kept once for the many files of an upload
        if isinstance(values.get(name), str):
            values[name] = sys.intern(values[name])
    if values.get("study_date"):
        values["study_date"] = datetime.date.fromisoformat(values["study_date"])
    return values


def checked_info(ds, file_sha256: str, dataset_sha256: str, size: int,
                 offset: int) -> DicomInfo:
    """Return the DicomInfo of `ds`, a parsed header, with the file's hashes,
    size and the length of its file meta; raise NotDicom when it cannot be
    read or lacks the UIDs that place it."""
    try:
        return _info(ds, file_sha256, dataset_sha256, size, offset)
    except NotDicom:
        raise
    except Exception as exc:  # a value pydicom only decodes when asked for it
        raise NotDicom(f"DICOM header could not be read: {exc}") from exc


def text(ds, keyword: str) -> str | None:
    """Return an element's value as stripped text, None when absent or unreadable."""
    tag = _tag_of(keyword)
    try:
        element = ds.get_item(tag)
        if element is None:
            return None
        value = _raw_text(element, tag) if isinstance(element, RawDataElement) else None
        if value is None:
            value = ds[tag].value
    except Exception:  # pydicom decodes lazily; a damaged value reads as missing
        return None
    if value is None:
        return None
    if isinstance(value, MultiValue | list | tuple):
        value = "\\".join(str(v) for v in value)
    elif isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    stripped = str(value).strip().strip("\x00").strip()
    return stripped or None


def _raw_text(element: RawDataElement, tag: int) -> str | None:
    """Return a raw element's text as pydicom would give it, where that is
    quicker without pydicom; else None."""
    raw = element.value
    if raw is None:
        return None
    vr = element.VR or dictionary_VR(tag)
    if vr in _RAW_TEXT_VRS:
        return raw.decode("latin-1")
    number = _PLAIN_NUMBERS.get(vr)
    if number is not None and len(raw) <= 16 and number.fullmatch(raw):
        return raw.decode("ascii")
    tidy = _ASCII_TEXT_VRS.get(vr)
    if tidy is not None and raw.isascii() and b"\x1b" not in raw:
        return tidy(raw.decode("ascii"))
    return None


@functools.cache
def _tag_of(keyword: str) -> int:
    return tag_for_keyword(keyword)


def _number(ds, keyword: str, kind: type):
    """Return the first value of a numeric element as `kind`, None when unreadable."""
    value = text(ds, keyword)
    if value is None:
        return None
    try:
        number = float(value.split("\\")[0])
    except ValueError:
        return None
    if not math.isfinite(number):
        return None
    return int(number) if kind is int else number


def _date(text: str | None) -> datetime.date | None:
    match = _DATE_RE.fullmatch(text or "")
    if not match:
        return None
    try:
        return datetime.date(*(int(g) for g in match.groups()))
    except ValueError:
        return None


def _transfer_syntax(ds) -> str | None:
    syntax = text(getattr(ds, "file_meta", {}), "TransferSyntaxUID")
    if syntax is None and ds.original_encoding[1]:
        # No file meta: say what pydicom found, so duplicates can be compared.
        syntax = _IMPLICIT_LE if ds.original_encoding[0] else _EXPLICIT_LE
    return syntax


# The DicomInfo fields read from one element each: field -> (keyword, reader).
_TEXT, _INT, _FLOAT, _DATE = "text", "int", "float", "date"
_FIELDS = {
    "modality": ("Modality", _TEXT),
    "series_number": ("SeriesNumber", _TEXT),
    "series_description": ("SeriesDescription", _TEXT),
    "instance_number": ("InstanceNumber", _INT),
    "study_date": ("StudyDate", _DATE),
    "study_time": ("StudyTime", _TEXT),
    "study_description": ("StudyDescription", _TEXT),
    "accession_number": ("AccessionNumber", _TEXT),
    "patient_name": ("PatientName", _TEXT),
    "patient_id": ("PatientID", _TEXT),
    "patient_comments": ("PatientComments", _TEXT),
    "study_comments": ("StudyComments", _TEXT),
    "additional_patient_history": ("AdditionalPatientHistory", _TEXT),
    "manufacturer": ("Manufacturer", _TEXT),
    "model": ("ManufacturerModelName", _TEXT),
    "station_name": ("StationName", _TEXT),
    "repetition_time": ("RepetitionTime", _FLOAT),
    "echo_time": ("EchoTime", _FLOAT),
    "flip_angle": ("FlipAngle", _FLOAT),
}
# Elements whose change calls for reading the whole info again.
_IDENTITY = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


def _field(ds, keyword: str, reader: str):
    if reader == _TEXT:
        return text(ds, keyword)
    if reader == _DATE:
        return _date(text(ds, keyword))
    return _number(ds, keyword, int if reader == _INT else float)


def _info(ds, file_sha256: str, dataset_sha256: str, size: int, offset: int) -> DicomInfo:
    study_uid = text(ds, "StudyInstanceUID")
    series_uid = text(ds, "SeriesInstanceUID")
    if study_uid is None:
        raise NotDicom("missing StudyInstanceUID")
    if series_uid is None:
        raise NotDicom("missing SeriesInstanceUID")
    meta = getattr(ds, "file_meta", {})
    return DicomInfo(
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=text(ds, "SOPInstanceUID") or text(meta, "MediaStorageSOPInstanceUID"),
        sop_class_uid=text(ds, "SOPClassUID") or text(meta, "MediaStorageSOPClassUID"),
        transfer_syntax=_transfer_syntax(ds),
        **{name: _field(ds, keyword, reader) for name, (keyword, reader) in _FIELDS.items()},
        file_sha256=file_sha256,
        dataset_sha256=dataset_sha256,
        size=size,
        meta_length=offset,
    )


def changed_values(ds, changed: set[int]) -> dict | None:
    """Return the DicomInfo fields read from `ds` whose elements are among
    `changed` (their tags); None when one of the UIDs that place the file,
    or its file meta, changed: the whole info is then read again."""
    if any(_tag_of(k) in changed for k in _IDENTITY) or any(t >> 16 == 2 for t in changed):
        return None
    return {name: _field(ds, keyword, reader) for name, (keyword, reader) in _FIELDS.items()
            if _tag_of(keyword) in changed}
