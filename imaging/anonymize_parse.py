"""Reading anonymization scripts: one statement a line, checked when saved.

The language is described in imaging/anonymize.py. Every mistake raises
ScriptError, whose message starts with "line N:" and says what is wrong.
"""
from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass

import pydicom
from pydicom.datadict import dictionary_VR, keyword_dict, keyword_for_tag, tag_for_keyword

from imaging.deid_actions import TEXT_VRS
from imaging.deid_profile import OPTIONS

VARIABLES = ("project", "subject", "session", "scan", "modality")
PIXEL_DATA = 0x7FE00010
MAX_SHIFT_DAYS = 3650

_TAG = r"\(\s*[0-9A-Fa-f]{4}\s*,\s*[0-9A-Fa-f]{4}\s*\)|[A-Za-z][A-Za-z0-9]*"
_TEXT = r'"(?:[^"\\]|\\.)*"'
_HEX_TAG_RE = re.compile(r"\(\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\)")
_RULES = [
    ("set", re.compile(rf"(?P<tag>{_TAG})\s*:=\s*(?P<value>.*)")),
    ("remove", re.compile(rf"-\s*(?P<tag>{_TAG})")),
    ("remove-private", re.compile(r"remove\s+private", re.I)),
    ("remove", re.compile(rf"remove\s+(?P<tag>{_TAG})", re.I)),
    ("blank", re.compile(rf"blank\s+(?P<tag>{_TAG})", re.I)),
    ("keep", re.compile(rf"keep\s+(?P<tag>{_TAG})", re.I)),
    ("replace-uids", re.compile(r"replace\s+uids", re.I)),
    ("shift-dates", re.compile(r"shift\s+dates(?:\s+(?P<days>\S+))?", re.I)),
    ("basic-profile", re.compile(r"basic-profile(?P<options>(?:[\s,]+[\w-]+)*)[\s,]*", re.I)),
    ("reject", re.compile(
        rf"reject\s+if\s+(?P<tag>{_TAG})\s*(?:(?P<word>present|missing)|"
        rf"(?P<op>!=|=|~)\s*(?P<operand>.*))", re.I)),
]
_STATEMENTS = (
    'TAG := "text" or TAG := variable, -TAG, remove TAG, remove private, blank TAG, '
    "keep TAG, replace uids, shift dates [DAYS], basic-profile [OPTIONS], reject if ..."
)


class ScriptError(ValueError):
    """A script that cannot be used; the message names the line and what is wrong."""

    def __init__(self, line: int, message: str):
        super().__init__(f"line {line}: {message}")
        self.line = line


@dataclass
class Statement:
    """One line of a script: its number, its kind and its text (comment removed)."""

    line: int
    kind: str
    source: str


@dataclass
class SetTag(Statement):
    tag: int = 0
    vr: str = "LO"
    variable: str | None = None
    text: str | None = None


@dataclass
class Remove(Statement):
    """remove, blank or keep one attribute."""

    tag: int = 0


@dataclass
class ShiftDates(Statement):
    days: int = 365


@dataclass
class Profile(Statement):
    options: frozenset = frozenset()


@dataclass
class Reject(Statement):
    tag: int = 0
    op: str = "present"
    operand: str | None = None
    pattern: re.Pattern | None = None


def tag_text(tag: int) -> str:
    """Return "Keyword (gggg,eeee)", or just the tag when it has no keyword."""
    hex_tag = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    keyword = keyword_for_tag(tag)
    return f"{keyword} {hex_tag}" if keyword else hex_tag


def strip_comment(line: str) -> str:
    """Return `line` without its `//` or `#` comment (not counting those inside quotes)."""
    quoted = escaped = False
    for i, char in enumerate(line):
        if quoted:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == "#" or line.startswith("//", i):
            return line[:i].strip()
    return line.strip()


def parse_statements(text: str) -> list[Statement]:
    """Return the statements of a script; raise ScriptError on the first bad line."""
    statements = []
    for number, raw in enumerate(text.splitlines(), start=1):
        source = strip_comment(raw)
        if source:
            statements.append(_parse_line(number, source))
    return statements


def _parse_line(line: int, source: str) -> Statement:
    for kind, rule in _RULES:
        match = rule.fullmatch(source)
        if match:
            return _BUILDERS[kind](line, kind, source, match)
    if _HEX_TAG_RE.match(source) or (source.split() and source.split()[0] in keyword_dict):
        raise ScriptError(line, f"an attribute must be followed by := and a value: {source}")
    raise ScriptError(line, f"not a statement: {source!r}; statements are {_STATEMENTS}")


def parse_tag(line: int, text: str) -> int:
    """Return the tag written as (gggg,eeee) or as a DICOM keyword."""
    match = _HEX_TAG_RE.fullmatch(text)
    if match:
        return int(match.group(1) + match.group(2), 16)
    tag = tag_for_keyword(text)
    if tag is not None:
        return tag
    near = [k for k in keyword_dict if k.lower() == text.lower()]
    hint = f" (did you mean {near[0]}?)" if near else ""
    raise ScriptError(line, f"unknown DICOM keyword {text!r}{hint}")


def _writable_tag(line: int, text: str) -> int:
    tag = parse_tag(line, text)
    if tag >> 16 == 0x0002:
        raise ScriptError(line, f"{tag_text(tag)} is in the file meta group, which Scanyard writes")
    if tag == PIXEL_DATA:
        raise ScriptError(line, "the pixel data cannot be changed by a script")
    return tag


def parse_text(line: int, quoted: str) -> str:
    """Return the text of a double-quoted literal (JSON escapes allowed)."""
    if not re.fullmatch(_TEXT, quoted):
        raise ScriptError(line, f"expected a text in double quotes, found {quoted!r}")
    try:
        return json.loads(quoted)
    except ValueError as exc:
        raise ScriptError(line, f"bad escape in text {quoted}: {exc}") from exc


def _placeholders(line: int, text: str) -> list[str]:
    try:
        fields = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ScriptError(line, f"{exc} in {text!r}; write {{{{ and }}}} for braces") from exc
    names = []
    for _literal, name, spec, conversion in fields:
        if name is None:
            continue
        if name not in VARIABLES or spec or conversion:
            raise ScriptError(line, f"unknown variable {{{name}}}; variables are "
                              f"{', '.join(VARIABLES)}")
        names.append(name)
    return names


def _settable_vr(line: int, tag: int) -> str:
    if tag >> 16 & 1:
        return "LO"  # private: its VR is unknown until a file has it
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        raise ScriptError(line, f"{tag_text(tag)} is not in the DICOM dictionary") from None
    if vr not in TEXT_VRS:
        raise ScriptError(line, f"only text attributes can be set; {tag_text(tag)} has VR {vr}")
    return vr


def _build_set(line, kind, source, match) -> SetTag:
    tag = _writable_tag(line, match["tag"])
    vr = _settable_vr(line, tag)
    value = match["value"].strip()
    if not value:
        raise ScriptError(line, "nothing after :=; write a text in double quotes or a variable")
    if not value.startswith('"'):
        if value not in VARIABLES:
            raise ScriptError(line, f"unknown variable {value!r}; variables are "
                              f"{', '.join(VARIABLES)} (a text goes in double quotes)")
        return SetTag(line, kind, source, tag=tag, vr=vr, variable=value)
    text = parse_text(line, value)
    if not _placeholders(line, text):
        try:
            pydicom.valuerep.validate_value(vr, text.replace("{{", "{").replace("}}", "}"),
                                            pydicom.config.RAISE)
        except ValueError as exc:
            reason = str(exc).split(" Please see")[0]
            raise ScriptError(
                line, f"{text!r} is not a valid value for {tag_text(tag)}: {reason}") from exc
    return SetTag(line, kind, source, tag=tag, vr=vr, text=text)


def _build_tag_statement(line, kind, source, match) -> Remove:
    tag = parse_tag(line, match["tag"]) if kind == "keep" else _writable_tag(line, match["tag"])
    return Remove(line, kind, source, tag=tag)


def _build_plain(line, kind, source, match) -> Statement:
    return Statement(line, kind, source)


def _build_shift(line, kind, source, match) -> ShiftDates:
    days = match["days"]
    if days is None:
        return ShiftDates(line, kind, source)
    if not days.isdigit() or not 1 <= int(days) <= MAX_SHIFT_DAYS:
        raise ScriptError(line, f"shift dates takes a number of days from 1 to "
                          f"{MAX_SHIFT_DAYS}, not {days!r}")
    return ShiftDates(line, kind, source, days=int(days))


def _build_profile(line, kind, source, match) -> Profile:
    words = [w.lower() for w in re.split(r"[\s,]+", match["options"]) if w]
    unknown = [w for w in words if w not in OPTIONS]
    if unknown:
        raise ScriptError(line, f"unknown basic-profile option {unknown[0]!r}; options are "
                          f"{', '.join(OPTIONS)}")
    if {"retain-longitudinal-dates", "retain-modified-dates"} <= set(words):
        raise ScriptError(
            line, "retain-longitudinal-dates and retain-modified-dates exclude each other")
    return Profile(line, kind, source, options=frozenset(words))


def _build_reject(line, kind, source, match) -> Reject:
    tag = parse_tag(line, match["tag"])
    if match["word"]:
        return Reject(line, kind, source, tag=tag, op=match["word"].lower())
    operand = parse_text(line, match["operand"].strip())
    pattern = None
    if match["op"] == "~":
        try:
            pattern = re.compile(operand)
        except re.error as exc:
            raise ScriptError(line, f"invalid regular expression {operand!r}: {exc}") from exc
    return Reject(line, kind, source, tag=tag, op=match["op"], operand=operand, pattern=pattern)


_BUILDERS = {
    "set": _build_set,
    "remove": _build_tag_statement,
    "blank": _build_tag_statement,
    "keep": _build_tag_statement,
    "remove-private": _build_plain,
    "replace-uids": _build_plain,
    "shift-dates": _build_shift,
    "basic-profile": _build_profile,
    "reject": _build_reject,
}
