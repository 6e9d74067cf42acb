"""What the anonymization statements do to a dataset: new UIDs, shifted
dates, dummy and empty values, and walks through every depth of a dataset.

UIDs: a new UID is derived from the old one and the site's secret with
pydicom's `generate_uid(prefix, entropy_srcs=[secret, old])`, a SHA-512 of
both: the same old UID always maps to the same new one (so a study's
references stay intact and a second upload maps the same way), and without
the secret the old UID cannot be found from the new. UIDs under the DICOM
root (1.2.840.10008: SOP classes, transfer syntaxes, well-known frames of
reference) name no one and are never replaced.

Dates: each subject's dates move back by the same number of days, 1 to
`max_days`, derived from the secret and the subject; intervals between a
subject's sessions are kept.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Callable, Iterator

from pydicom import Dataset
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement, empty_value_for_VR
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_ROOT_UID, generate_uid

DICOM_ROOT = "1.2.840.10008."
DEFAULT_UID_PREFIX = PYDICOM_ROOT_UID
DEFAULT_SHIFT_DAYS = 365
TEXT_VRS = frozenset("AE AS CS DA DS DT IS LO LT PN SH ST TM UC UI UR UT".split())

# UIDs that name a kind of thing (classes, syntaxes, coding schemes), not a
# patient's data: `replace uids` leaves them alone whatever their root.
_KEPT_UID_KEYWORDS = frozenset(
    "TransferSyntaxUID CodingSchemeUID MappingResourceUID ContextUID "
    "ContextGroupExtensionCreatorUID PrivateInformationCreatorUID".split()
)
_DUMMY_TEXT = {
    "AS": "000Y", "DA": "19000101", "DT": "19000101000000", "TM": "000000",
    "DS": "0", "IS": "0", "UR": "http://anonymized.invalid",
}
_NUMBER_VRS = frozenset("FL FD SL SS UL US SV UV".split())
_DATE_RE = re.compile(r"(\d{4})\.?(\d{2})\.?(\d{2})")

MEDIA_STORAGE_SOP_INSTANCE_UID = 0x00020003


def new_uid(old: str, secret: bytes, prefix: str | None = None) -> str:
    """Return the UID that replaces `old` (itself when under the DICOM root or empty)."""
    old = str(old).strip("\x00 ")
    if not old or old.startswith(DICOM_ROOT):
        return old
    return str(generate_uid(prefix or DEFAULT_UID_PREFIX, entropy_srcs=[secret.hex(), old]))


def is_instance_uid(tag: int) -> bool:
    """Return False for UIDs that name a class or a syntax rather than data."""
    keyword = keyword_for_tag(tag)
    return not (keyword.endswith("ClassUID") or keyword in _KEPT_UID_KEYWORDS)


def date_offset(secret: bytes, subject: str, max_days: int = DEFAULT_SHIFT_DAYS) -> int:
    """Return the (negative) number of days by which a subject's dates move."""
    digest = hmac.new(secret, b"date-shift:" + subject.encode(), hashlib.sha256).digest()
    return -(1 + int.from_bytes(digest[:8], "big") % max_days)


def shift_date_text(text: str, days: int, vr: str) -> str | None:
    """Return a DA or DT value moved by `days`, or None when it is not a date."""
    text = text.strip()
    match = _DATE_RE.match(text)
    if not match or (vr == "DA" and match.end() != len(text)):
        return None
    try:
        day = dt.date(*(int(g) for g in match.groups()))
    except ValueError:
        return None
    try:
        moved = (day + dt.timedelta(days=days)).strftime("%Y%m%d")
    except OverflowError:
        return None
    return moved + text[match.end():]


def map_values(elem: DataElement, fn: Callable[[str], str | None]) -> bool:
    """Apply `fn` to each text value of `elem`; a None result blanks the element.

    Returns True when the element changed.
    """
    values = elem.value if isinstance(elem.value, MultiValue | list) else [elem.value]
    texts = [str(v) for v in values if v not in (None, "")]
    if not texts:
        return False
    mapped = [fn(t) for t in texts]
    if any(m is None for m in mapped):
        elem.value = empty_value_for_VR(elem.VR)
        return True
    if mapped == texts:
        return False
    elem.value = mapped if len(mapped) > 1 else mapped[0]
    return True


def set_empty(elem: DataElement) -> None:
    """Give `elem` a zero-length value (an empty sequence for SQ)."""
    elem.value = Sequence() if elem.VR == "SQ" else empty_value_for_VR(elem.VR)


def set_dummy(elem: DataElement, uid: Callable[[str], str]) -> None:
    """Replace `elem`'s value by a dummy of its VR (not for sequences)."""
    vr = elem.VR
    if vr == "UI":
        map_values(elem, uid)
    elif vr in _DUMMY_TEXT:
        elem.value = _DUMMY_TEXT[vr]
    elif vr in TEXT_VRS:
        elem.value = "ANONYMIZED"
    elif vr in _NUMBER_VRS:
        elem.value = 0
    elif vr.startswith("O") or vr == "UN":
        elem.value = b"\x00" * 8
    else:  # AT and anything new: nothing sensible to invent
        elem.value = empty_value_for_VR(vr)


def elements(ds: Dataset, kept: dict[int, int]) -> Iterator[tuple[Dataset, int]]:
    """Yield (dataset, tag) for every element at every depth, skipping kept tags.

    The element may be deleted by the caller before the next one is asked
    for; a sequence's items are visited after the sequence itself, if it
    is still there.
    """
    for tag in list(ds.keys()):
        if tag in kept:
            continue
        yield ds, tag
        if tag in ds and ds[tag].VR == "SQ":
            for item in ds[tag].value:
                yield from elements(item, kept)


def remove_private(ds: Dataset, kept: dict[int, int]) -> int:
    """Delete every private element not kept, at every depth; return how many."""
    removed = 0
    for owner, tag in elements(ds, kept):
        if tag >> 16 & 1:
            del owner[tag]
            removed += 1
    return removed


def replace_uids(ds: Dataset, kept: dict[int, int], uid: Callable[[str], str]) -> int:
    """Replace every instance UID (VR UI) at every depth and in the file meta.

    Returns how many elements changed.
    """
    changed = 0
    for owner, tag in elements(ds, kept):
        elem = owner[tag]
        if elem.VR == "UI" and is_instance_uid(tag) and map_values(elem, uid):
            changed += 1
    meta = getattr(ds, "file_meta", None)
    if meta is not None and MEDIA_STORAGE_SOP_INSTANCE_UID in meta:
        map_values(meta[MEDIA_STORAGE_SOP_INSTANCE_UID], uid)
    return changed


def shift_dates(ds: Dataset, kept: dict[int, int], days: int) -> int:
    """Move every DA and DT value by `days` at every depth; blank what is not a date.

    Returns how many elements changed.
    """
    changed = 0
    for owner, tag in elements(ds, kept):
        elem = owner[tag]
        if elem.VR in ("DA", "DT") and map_values(
            elem, lambda text, vr=elem.VR: shift_date_text(text, days, vr)
        ):
            changed += 1
    return changed
