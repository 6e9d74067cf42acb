"""A DICOM file's header for people: a table of rows, and the DICOM JSON model.

Values are returned as data, never as markup: escaping them is the page's
job (Jinja does it). Pixel data is never shown or put into JSON.
"""
from __future__ import annotations

from collections.abc import Callable

import pydicom
from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue

MAX_VALUE = 120
PIXEL_TAGS = frozenset((0x7FE00010, 0x7FE00008, 0x7FE00009))  # (float/double) pixel data
_BINARY_PREFIX = 16
_OMITTED = "\x00omitted"


def read_header(path) -> Dataset:
    """Return the header of the DICOM file at `path`, pixels not read.

    Raises pydicom's InvalidDicomError or OSError when the file cannot be read.
    """
    return pydicom.dcmread(path, stop_before_pixels=True, force=True)


def dump(dataset: Dataset) -> list[dict]:
    """Return the header as rows: tag "(gggg,eeee)", vr, keyword, name, value, depth, path.

    `path` names the row uniquely, sequence items included, so two dumps can
    be compared (diff). File meta rows come first. A sequence's row gives its number of items,
    followed by one row per item ("Item 1", ...) and the item's elements one
    level deeper. Values longer than MAX_VALUE characters are shortened
    with "…"; binary values show their first bytes and their length.
    """
    rows: list[dict] = []
    meta = getattr(dataset, "file_meta", None)
    if meta is not None:
        _dump(meta, 0, "", rows)
    _dump(dataset, 0, "", rows)
    return rows


def _dump(ds: Dataset, depth: int, prefix: str, rows: list[dict]) -> None:
    for tag in ds.keys():
        path = prefix + _tag_text(tag)
        try:
            elem = ds[tag]
        except Exception as exc:  # a raw element pydicom cannot convert
            rows.append(_row(tag, "??", "", "(unreadable)", f"(unreadable: {exc})", depth, path))
            continue
        rows.append(_row(elem.tag, elem.VR, elem.keyword, elem.name, _value(elem), depth, path))
        if elem.VR == "SQ" and elem.value is not None:
            for number, item in enumerate(elem.value, start=1):
                item_path = f"{path}[{number}]"
                rows.append(_row(0xFFFEE000, "", "", f"Item {number}", "", depth + 1, item_path))
                _dump(item, depth + 2, item_path, rows)


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _row(tag: int, vr: str, keyword: str, name: str, value: str, depth: int,
         path: str) -> dict:
    return {"tag": _tag_text(tag), "vr": vr, "keyword": keyword, "name": name,
            "value": value, "depth": depth, "path": path}


def diff(before: list[dict], after: list[dict]) -> list[dict]:
    """Return rows of two dumps side by side, in the order of `before` (added rows
    after their predecessor): each has tag, keyword, name, depth, before and after
    values (None where the row is absent) and change: "", "changed", "removed",
    "added".
    """
    old = {row["path"]: row for row in before}
    new = {row["path"]: row for row in after}
    paths = [row["path"] for row in before]
    seen = set(paths)
    for n, row in enumerate(after):  # put each added row after the row before it
        if row["path"] not in seen:
            anchor = after[n - 1]["path"] if n else None
            paths.insert(paths.index(anchor) + 1 if anchor in paths else len(paths), row["path"])
            seen.add(row["path"])
    out = []
    for path in paths:
        a, b = old.get(path), new.get(path)
        shown = a or b
        change = ("added" if a is None else "removed" if b is None
                  else "changed" if (a["value"], a["vr"]) != (b["value"], b["vr"]) else "")
        out.append({"tag": shown["tag"], "keyword": shown["keyword"], "name": shown["name"],
                    "depth": shown["depth"], "before": a and a["value"],
                    "after": b and b["value"], "change": change})
    return out


def shorten(text: str, limit: int = MAX_VALUE) -> str:
    """Return `text` cut to `limit` characters, the last one an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _value(elem: DataElement) -> str:
    """Return an element's value as one line of text."""
    if elem.tag in PIXEL_TAGS:
        size = len(elem.value) if isinstance(elem.value, bytes | bytearray) else 0
        return f"(pixel data, {size} bytes, not shown)"
    if elem.VR == "SQ":
        count = len(elem.value or [])
        return f"{count} item{'s' if count != 1 else ''}"
    try:
        value = elem.value
    except Exception as exc:  # pydicom decodes lazily; show why instead of failing
        return f"(unreadable: {exc})"
    if isinstance(value, bytes | bytearray):
        head = " ".join(f"{b:02x}" for b in value[:_BINARY_PREFIX])
        more = " …" if len(value) > _BINARY_PREFIX else ""
        return f"{head}{more} ({len(value)} bytes)" if value else ""
    if isinstance(value, MultiValue | list | tuple):
        text = "\\".join(str(v) for v in value)
    else:
        text = "" if value is None else str(value)
    return shorten(" ".join(text.split("\n")))


def to_dicom_json(dataset: Dataset, bulk_data_uri: Callable[[DataElement], str] | None = None,
                  threshold: int = 1024) -> dict:
    """Return the dataset in the DICOM JSON model (PS3.18 Annex F).

    Pixel data is left out. Other binary values longer than `threshold`
    bytes are referenced by `bulk_data_uri(element)` as a "BulkDataURI"
    when it is given, and left out when it is not; shorter ones are inline.
    Elements pydicom cannot encode are skipped rather than failing.
    """
    ds = Dataset()
    ds.update({tag: dataset[tag] for tag in dataset.keys() if tag not in PIXEL_TAGS})
    handler = bulk_data_uri or (lambda _elem: _OMITTED)
    result = ds.to_json_dict(bulk_data_threshold=threshold, bulk_data_element_handler=handler,
                             suppress_invalid_tags=True)
    return _drop_omitted(result)


def _drop_omitted(model: dict) -> dict:
    out = {}
    for key, attribute in model.items():
        if attribute.get("BulkDataURI") == _OMITTED:
            continue
        values = attribute.get("Value")
        if attribute.get("vr") == "SQ" and values:
            attribute = {**attribute, "Value": [_drop_omitted(item) for item in values]}
        out[key] = attribute
    return out
