"""Answers in XNAT's shapes.

A collection is a ResultSet, as JSON (``format=json``, the default here) or
CSV (``format=csv``, what pyxnat asks for), with the ``columns=`` asked for;
one object is ``{"items": [{"meta", "data_fields", "children"}]}``. XML and
HTML are not spoken: they answer 406, so that a script never gets a page.
"""
from __future__ import annotations

import csv
import io

from flask import Response, abort, jsonify, request

_SPOKEN = ("json", "csv")


def wanted_format(allowed=_SPOKEN, default: str = "json") -> str:
    """Return the format the request asks for, or abort 406 for one not spoken."""
    fmt = (request.args.get("format") or default).lower()
    if fmt not in allowed:
        abort(406, f"format={fmt} is not available here; use "
                   f"{' or '.join('format=' + f for f in allowed)}.")
    return fmt


def text(value) -> str:
    """Return a value as XNAT writes it in a ResultSet: text, empty for none."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _columns(rows: list[dict], default: list[str]) -> list[str]:
    asked = [c.strip() for c in (request.args.get("columns") or "").split(",") if c.strip()]
    if not asked:
        return default
    known = set(default).union(*(r.keys() for r in rows)) if rows else set(default)
    # URI always comes along: clients (pyxnat) take the object's address from it.
    uri = ["URI"] if "URI" in known and "URI" not in asked else []
    return [c for c in asked if c in known] + uri


def result_set(rows: list[dict], default: list[str], title: str = "") -> Response:
    """Answer a collection: its rows, with the columns asked for (or `default`)."""
    fmt = wanted_format()
    columns = _columns(rows, default)
    table = [{c: text(row.get(c)) for c in columns} for row in rows]
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(table)
        return Response(buf.getvalue(), mimetype="text/csv")
    return jsonify(ResultSet={"Result": table, "totalRecords": str(len(table)),
                              "title": title})


def item(xsi_type: str, fields: dict, children: list[dict] | None = None) -> dict:
    """Return one object in XNAT's JSON shape (to answer, or as a child)."""
    return {"meta": {"xsi:type": xsi_type, "isHistory": False},
            "data_fields": {k: v for k, v in fields.items() if v not in (None, "")},
            "children": children or []}


def child(field: str, items: list[dict]) -> dict:
    """Return a group of children, e.g. child("scans/scan", [item(...), ...])."""
    return {"field": field, "items": items}


def items(one: dict) -> Response:
    """Answer one object: {"items": [object]}."""
    wanted_format(("json",))
    return jsonify(items=[one])


def plain(body: str, status: int = 200) -> Response:
    """Answer text, e.g. the ID of what was created or the URIs of an import."""
    return Response(body, status=status, mimetype="text/plain")
