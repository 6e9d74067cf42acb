"""Which project, subject and session a DICOM study belongs to.

First match wins, as in XNAT: explicit values of the upload, the receiver's
project, custom rules, "Project:X Subject:Y Session:Z" in comment fields,
then defaults from the header (DESIGN.md "Identifying project, subject and
session").
"""

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from imaging.labels import label_from_header, shown

FIELDS = ("project", "subject", "session")

STUDY_DESCRIPTION = 0x00081030
PATIENT_NAME = 0x00100010
PATIENT_ID = 0x00100020
PATIENT_COMMENTS = 0x00104000
STUDY_COMMENTS = 0x00324000
ADDITIONAL_PATIENT_HISTORY = 0x001021B0

COMMENT_TAGS = (PATIENT_COMMENTS, STUDY_COMMENTS, ADDITIONAL_PATIENT_HISTORY)
DEFAULT_TAGS = {"project": STUDY_DESCRIPTION, "subject": PATIENT_NAME, "session": PATIENT_ID}
HEADER_TAGS: tuple[int, ...] = (*COMMENT_TAGS, STUDY_DESCRIPTION, PATIENT_NAME, PATIENT_ID)

_RULE_RE = re.compile(
    r"\(\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\)\s*:(.*?)(?::(\d+))?", re.DOTALL
)
_COMMENT_RE = re.compile(r"\b(project|subject|session|aa):\s*([^\s;]+)", re.IGNORECASE)


@dataclass
class Rule:
    """A custom rule: the value of `field` is `pattern`'s `group` in header `tag`."""

    field: str
    tag: int
    pattern: re.Pattern
    group: int = 1


@dataclass
class Identity:
    """Where a study goes; `sources` maps each field found to where it came from.

    Sources are "explicit", "receiver", "rule", "comment" or "default";
    a field that was not found is None and absent from `sources`.
    """

    project: str | None = None
    subject: str | None = None
    session: str | None = None
    auto_archive: bool | None = None
    sources: dict = field(default_factory=dict)


def parse_rule(text: str, field: str) -> Rule:
    """Return the Rule written as `(gggg,eeee):regex[:group]` for `field`.

    A trailing ":<digits>" is the group; without it the rule takes group 1,
    or the whole match when the regex has no group. Raises ValueError with a
    sentence for the user on a bad field, tag, regex or group.
    """
    if field not in FIELDS:
        raise ValueError(f"A rule is for project, subject or session, not {shown(field)}.")
    match = _RULE_RE.fullmatch(text.strip())
    if not match:
        raise ValueError(
            f"Rule {shown(text)} must look like (gggg,eeee):regex[:group], "
            "with a hexadecimal DICOM tag such as (0008,1030)."
        )
    group_text, element_text, regex, group_digits = match.groups()
    if not regex:
        raise ValueError(f"Rule {shown(text)} has no regular expression after the tag.")
    try:
        pattern = re.compile(regex)
    except re.error as exc:
        raise ValueError(f"Rule {shown(text)} has an invalid regular expression: {exc}.") from exc
    group = int(group_digits) if group_digits else min(pattern.groups, 1)
    if group > pattern.groups:
        raise ValueError(
            f"Rule {shown(text)} asks for group {group}, but its regular expression "
            f"has {pattern.groups} group(s)."
        )
    tag = int(group_text + element_text, 16)
    return Rule(field=field, tag=tag, pattern=pattern, group=group)


def parse_comment(text: str | None) -> dict:
    """Return the keys found in a comment: project, subject, session, auto_archive.

    Keys are case-insensitive and values run to whitespace or ";", as in
    "Project:P1 Subject:S1 Session:E1 AA:true". The first value of a key wins;
    an AA that is neither true nor false is ignored.
    """
    found: dict = {}
    for match in _COMMENT_RE.finditer(text or ""):
        key, value = match.group(1).lower(), match.group(2)
        if key == "aa":
            if value.lower() in ("true", "false") and "auto_archive" not in found:
                found["auto_archive"] = value.lower() == "true"
        elif key not in found:
            found[key] = value
    return found


def header_tags(rules: Iterable[Rule] = ()) -> tuple[int, ...]:
    """Return HEADER_TAGS plus the tags that `rules` read."""
    extra = tuple(rule.tag for rule in rules if rule.tag not in HEADER_TAGS)
    return HEADER_TAGS + tuple(dict.fromkeys(extra))


def _value(header, tag: int) -> str | None:
    """Return the header's value for `tag` as stripped text, None when absent or empty.

    `header` is a pydicom Dataset or a dict of tag -> value.
    """
    try:
        if tag not in header:
            return None
        value = header[tag]
        value = getattr(value, "value", value)  # a Dataset gives a DataElement
    except (KeyError, ValueError, TypeError, LookupError):
        return None
    if value is None:
        return None
    if isinstance(value, list | tuple):  # MultiValue is a list
        value = "\\".join(str(v) for v in value)
    elif isinstance(value, bytes):
        value = value.decode("latin-1")
    text = str(value).strip().strip("\x00").strip()
    return text or None


def _from_rules(header, rules: Iterable[Rule], field: str) -> str | None:
    for rule in rules:
        if rule.field != field:
            continue
        text = _value(header, rule.tag)
        match = rule.pattern.search(text) if text is not None else None
        label = label_from_header(match.group(rule.group)) if match else None
        if label:
            return label
    return None


def _candidates(
    field: str, header, explicit: dict, receiver_project, rules, comments
) -> Iterator[tuple[str, str | None]]:
    """Yield (source, value) for `field`, in order of precedence, lazily."""
    yield "explicit", explicit.get(field) or None
    if field == "project":
        yield "receiver", receiver_project or None
    yield "rule", _from_rules(header, rules, field)
    yield "comment", _first(label_from_header(c.get(field)) for c in comments)
    yield "default", label_from_header(_value(header, DEFAULT_TAGS[field]))


def identify(
    header,
    explicit: dict | None = None,
    receiver_project: str | None = None,
    rules: Iterable[Rule] = (),
) -> Identity:
    """Return the project, subject and session of a header; the first match wins.

    Order per field: `explicit` values (returned as given), `receiver_project`
    (project only), the first matching rule, comments (Patient Comments,
    Study Comments, Additional Patient History), then the defaults (Study
    Description, Patient Name, Patient ID). Header values are made into
    labels with labels.label_from_header; one that cleans to nothing does
    not match. `auto_archive` comes from the first comment that has AA.
    """
    explicit = explicit or {}
    rules = list(rules)
    comments = [parse_comment(_value(header, tag)) for tag in COMMENT_TAGS]
    identity = Identity()
    for name in FIELDS:
        for source, value in _candidates(name, header, explicit, receiver_project, rules, comments):
            if value:
                setattr(identity, name, value)
                identity.sources[name] = source
                break
    identity.auto_archive = _first(c.get("auto_archive") for c in comments)
    if identity.auto_archive is not None:
        identity.sources["auto_archive"] = "comment"
    return identity


def _first(values: Iterable):
    """Return the first value that is not None (False counts), or None."""
    return next((v for v in values if v is not None), None)
