"""Labels, scan ids and file names: what may name a folder or file on disk.

Labels typed by people are refused when they do not fit; labels made from
DICOM headers are cleaned instead, because a scanner's spelling is not the
user's fault.
"""

import re

LABEL_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
SCAN_ID_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
RESERVED = frozenset({"_unassigned", "SCANS", "RESOURCES", "ASSESSORS", "RECONSTRUCTIONS"})

_RESERVED_FOLDED = frozenset(name.casefold() for name in RESERVED)
_NOT_LABEL_CHARS = re.compile(r"[^A-Za-z0-9_-]+")
_NOT_SCAN_ID_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")
_UID_FILENAME_RE = re.compile(r"[0-9.]{1,64}")
_MAX_SHOWN = 80


class LabelError(ValueError):
    """A label or scan id that may not be used; the message is for the user."""


def is_reserved(value: str) -> bool:
    """Return True when `value` is a reserved folder name (any letter case)."""
    return value.casefold() in _RESERVED_FOLDED


def shown(value: object, limit: int = _MAX_SHOWN) -> str:
    """Return `value` in double quotes, control characters escaped, cut to `limit`."""
    text = str(value)
    if len(text) > limit:
        text = text[: limit - 1] + "\u2026"
    escaped = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return '"' + escaped.replace('"', '\\"') + '"'


def _check(value: object, what: str, pattern: re.Pattern, rule: str) -> str:
    if not isinstance(value, str):
        raise LabelError(f"{what} must be text, not {type(value).__name__}.")
    stripped = value.strip()
    if not pattern.fullmatch(stripped):
        raise LabelError(f"{what} {shown(value)} {rule}")
    if is_reserved(stripped):
        raise LabelError(f"{what} {shown(stripped)} is a reserved name; choose another.")
    return stripped


def check_label(value: str, what: str = "Label") -> str:
    """Return `value` stripped of surrounding whitespace when it is a valid label.

    Raises LabelError, naming `what` and the value, when it does not fully
    match LABEL_RE or is a reserved name.
    """
    rule = 'may only contain letters, digits, "_" and "-" (1 to 64 characters).'
    return _check(value, what, LABEL_RE, rule)


def check_scan_id(value: str, what: str = "Scan id") -> str:
    """Return `value` stripped when it is a valid scan id; raise LabelError otherwise.

    "." and ".." are refused: a scan id may not start with ".".
    """
    rule = (
        'may only contain letters, digits, "_", "-" and "." and may not start '
        'with "." (1 to 64 characters).'
    )
    return _check(value, what, SCAN_ID_RE, rule)


def label_from_header(value, fallback: str | None = None) -> str | None:
    """Return a label made from a DICOM header value, or `fallback`.

    Runs of characters outside [A-Za-z0-9_-] become one "_", leading and
    trailing "_" go, the result is cut to 64 characters. `fallback` is
    returned when nothing is left or the result is a reserved name.
    """
    if value is None:
        return fallback
    label = _NOT_LABEL_CHARS.sub("_", str(value).strip()).strip("_")
    label = label[:64].rstrip("_")
    if not label or is_reserved(label):
        return fallback
    return label


def scan_id_from_header(series_number, fallback: str = "0") -> str:
    """Return a scan id from a SeriesNumber (IS, int, str or None), or `fallback`.

    Whole numbers are written without padding ("004" -> "4"); other text is
    cleaned like a header label, keeping ".".
    """
    if series_number is None:
        return fallback
    if isinstance(series_number, float) and series_number.is_integer():
        return str(int(series_number))
    if isinstance(series_number, int):
        return str(int(series_number))
    text = str(series_number).strip()
    try:
        return str(int(text))
    except ValueError:
        pass
    scan_id = _NOT_SCAN_ID_CHARS.sub("_", text).lstrip("._")[:64]
    if not SCAN_ID_RE.fullmatch(scan_id) or is_reserved(scan_id):
        return fallback
    return scan_id


def unique_scan_id(wanted: str, taken: set[str]) -> str:
    """Return `wanted` when it is not in `taken`, else `wanted-2`, `wanted-3`, ...

    The base is shortened when needed so the result stays within 64 characters.
    """
    if wanted not in taken:
        return wanted
    n = 2
    while True:
        suffix = f"-{n}"
        candidate = wanted[: 64 - len(suffix)] + suffix
        if candidate not in taken:
            return candidate
        n += 1


def instance_filename(sop_instance_uid: str | None, sha256_hex: str, suffix: str = ".dcm") -> str:
    """Return the file name of a DICOM instance on disk.

    The SOP Instance UID names the file only when it fully matches [0-9.]{1,64}
    and does not start with "."; otherwise the file's sha256 does.
    """
    uid = (sop_instance_uid or "").strip().rstrip("\x00")
    if _UID_FILENAME_RE.fullmatch(uid) and not uid.startswith("."):
        return f"{uid}{suffix}"
    return f"{sha256_hex}{suffix}"
