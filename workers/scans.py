"""Grouping DICOM files into scans, shared by the upload jobs and the build job.

A scan is one SeriesInstanceUID; its id comes from the SeriesNumber, made
unique within the session. The same SOP Instance UID twice is a duplicate
when the datasets are the same, and is quarantined otherwise.
"""
from __future__ import annotations

import os
from pathlib import Path

from imaging import labels, storage


class Report:
    """What happened to each file; the counts add up to the files that came in."""

    def __init__(self):
        self.stored = 0
        self.duplicates = 0
        self.duplicate_names: list[str] = []
        self.quarantined: list[dict] = []
        self.messages: list[str] = []

    def quarantine(self, name: str, reason: str) -> None:
        self.quarantined.append({"name": name, "reason": reason})


def study_summary(info) -> dict:
    """Return the study values a prearchive record keeps, from one file's DicomInfo."""
    return {
        "study_description": info.study_description, "accession": info.accession_number,
        "patient_name": info.patient_name, "patient_id": info.patient_id,
        "scanner": " ".join(x for x in (info.manufacturer, info.model) if x) or None,
        "modality": info.modality,
    }


def plan_scans(items, target: Path, report: Report):
    """Group (name, DicomInfo) items by series into scans under `target`.

    Returns (scans, moves): the record's scan list and (name, path) renames.
    Duplicates are left out of both (their names in report.duplicate_names).
    """
    by_series: dict[str, list] = {}
    for name, info in items:
        by_series.setdefault(info.series_uid, []).append((name, info))
    taken: set[str] = set()
    scans, moves = [], []
    seen: dict[str, str] = {}
    ordered = sorted(by_series.items(), key=lambda kv: _series_key(kv[1][0][1]))
    for series_uid, series in ordered:
        first = series[0][1]
        scan_id = labels.unique_scan_id(labels.scan_id_from_header(first.series_number), taken)
        taken.add(scan_id)
        scan = {"id": scan_id, "series_uid": series_uid, **first.scan_fields(), "files": []}
        folder = target / "SCANS" / scan_id / "DICOM"
        names: set[str] = set()
        for name, info in sorted(series, key=lambda x: (x[1].instance_number or 0, x[0])):
            if _is_duplicate(info, seen, name, report):
                continue
            filename = labels.instance_filename(info.sop_uid, info.file_sha256)
            if filename in names:
                filename = labels.instance_filename(None, info.file_sha256)
            names.add(filename)
            scan["files"].append(file_entry(filename, info))
            moves.append((name, folder / filename))
        scans.append(scan)
    return scans, moves


def _series_key(info):
    try:
        return (int(info.series_number), info.series_uid)
    except (TypeError, ValueError):
        return (10**9, info.series_uid)


def _is_duplicate(info, seen: dict, name: str, report: Report) -> bool:
    """Same SOP Instance UID twice: the same dataset is a duplicate,
    other content is quarantined (never silently dropped)."""
    if not info.sop_uid:
        return False
    other = seen.get(info.sop_uid)
    if other is None:
        seen[info.sop_uid] = info.dataset_sha256
        return False
    if other == info.dataset_sha256:
        report.duplicates += 1
        report.duplicate_names.append(name)
        return True
    report.quarantine(name, f"another file has SOP Instance UID {info.sop_uid} "
                            "with different content")
    return True


def file_entry(filename: str, info) -> dict:
    return {"name": filename, "size": info.size, "sha256": info.file_sha256,
            "dataset_sha256": info.dataset_sha256, "sop_uid": info.sop_uid,
            "sop_class_uid": info.sop_class_uid, "transfer_syntax": info.transfer_syntax,
            "instance_number": info.instance_number}


def move_files(moves, source_of, report: Report) -> None:
    """Rename each file into its prearchive folder; a second run skips what is done."""
    # As text: pathlib's objects for the folder of each of an upload's
    # thousands of files took a fifth of the time of the renames.
    dirs = set()
    for name, target in moves:
        target = os.fspath(target)
        folder = os.path.dirname(target)
        if folder not in dirs:
            os.makedirs(folder, exist_ok=True)
            dirs.add(folder)
        try:
            os.replace(source_of(name), target)
        except FileNotFoundError:
            if not os.path.exists(target):
                raise
        report.stored += 1
    for d in dirs:
        storage.fsync_dir(d)
