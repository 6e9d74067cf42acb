"""Uploads beyond DICOM: ECAT files, and volumes filed as resources.

ECAT 7 files form PET sessions and scans from their main header, routed like
DICOM (routing.identify on ecat_identity_header). Analyze, NIfTI, NRRD, MGH,
MINC and PAR/REC files go into a resource (NIFTI, ANALYZE, ...; or the label
the upload names) of the session the upload names, or of its scan when the
upload names one; each file keeps its header summary. Files that no format
claims, and damaged or incomplete ones, are quarantined with their reason.
"""
from __future__ import annotations

from pathlib import Path

from flask import current_app
from sqlalchemy import select

from imaging import dicomio, formats, labels, routing, storage
from models import READY, Project, db
from workers import prearchive
from workers.resources import file_entry, sha256_of, summarise

NOT_AN_IMAGE = "not DICOM, nor an imaging format Scanyard knows"


def read_member(name: str, path: Path, data: bytes | None = None) -> dict:
    """Return what a batch keeps of one file (`data`: its bytes, when at hand).

    One of: {"info": DicomInfo json}, {"ecat": summary, ...}, {"format": F}
    (paired and read when the whole upload is known), or {"error": reason};
    "other" marks a file that a header of the upload may still claim.
    """
    try:
        return {"name": name, "info": dicomio.read_dicom(path, data).to_json()}
    except dicomio.NotDicom as exc:
        dicom_error = str(exc)
    try:
        info = formats.detect(path)
    except OSError as exc:
        return {"name": name, "error": f"the file could not be read: {exc}"}
    if info is None:
        return {"name": name, "other": True, "error": f"{NOT_AN_IMAGE} ({dicom_error})"}
    if info.format == formats.DICOM:
        return {"name": name, "error": dicom_error}
    if info.format != formats.ECAT:
        return {"name": name, "format": info.format}
    try:
        summary = formats.read_header(path, info=info)
        header = formats.ecat_identity_header(path)
    except formats.FormatError as exc:
        return {"name": name, "error": str(exc)}
    return {"name": name, "ecat": summary, "identity": {str(k): v for k, v in header.items()},
            "size": path.stat().st_size, "sha256": sha256_of(path)}


def split_results(read: list[dict], report) -> tuple[list, list[dict], dict[str, str]]:
    """Return (DICOM (name, info) pairs, ECAT results, {name: reason if left alone}).

    A result's "info" is the DicomInfo the finishing job made of the batch's JSON.
    The third are files to pair as resources. Errors that no header can
    mend are quarantined in `report` here.
    """
    good, ecat, loose = [], [], {}
    for r in read:
        if "info" in r:
            good.append((r["name"], r["info"]))
        elif "ecat" in r:
            ecat.append(r)
        elif "format" in r or r.get("other"):
            loose[r["name"]] = r.get("error") or NOT_AN_IMAGE
        else:
            report.quarantine(r["name"], r["error"])
    return good, ecat, loose


def plan_ecat_sessions(upload, items: list[dict], timestamp: str, report, taken: set[str]):
    """Group ECAT files into PET sessions (one per patient and study) of one scan each.

    Returns (record, moves) pairs as ingest.plan_sessions does.
    """
    explicit = {k: upload.params.get(k) for k in ("project", "subject", "session")}
    known = set(db.session.scalars(select(Project.label)))
    by_study: dict[tuple, list[dict]] = {}
    for item in sorted(items, key=lambda i: (i["ecat"].get("scan_start") or "", i["name"])):
        s = item["ecat"]
        key = (s.get("patient_id"), s.get("patient_name"), s.get("study_description"),
               s.get("study_date"))
        by_study.setdefault(key, []).append(item)
    planned = []
    for n, group in enumerate(by_study.values()):
        header = {int(k): v for k, v in group[0]["identity"].items()}
        ident = routing.identify(header, explicit=explicit if n == 0 else
                                 {**explicit, "session": None})
        project = ident.project if ident.project in known else None
        if ident.project and project is None:
            report.messages.append(
                f"Project {ident.project!r} named by the ECAT header does not exist; the "
                "session waits in the unassigned prearchive.")
        folder = unique_label(labels.label_from_header(ident.session, "session"), taken)
        record = _new_record(upload, project, timestamp, folder, ident.subject)
        first = group[0]["ecat"]
        record["scan_date"] = upload.params.get("session_date") or first.get("study_date")
        record["study"] = {"study_description": first.get("study_description"),
                           "patient_name": first.get("patient_name"),
                           "patient_id": first.get("patient_id"), "modality": "PT",
                           "scanner": first.get("facility")}
        target = _session_dir(project, timestamp, folder)
        record["scans"], moves = _ecat_scans(group, target)
        prearchive.log(record, f"built from upload {upload.id} ({len(group)} ECAT files)")
        planned.append((record, moves))
    return planned


def _ecat_scans(group: list[dict], target: Path):
    scans, moves = [], []
    for n, item in enumerate(group, start=1):
        name = Path(item["name"]).name
        summary = item["ecat"]
        scans.append({"id": str(n), "series_uid": None, "modality": "PT",
                      "series_description": Path(name).stem, "resource": formats.ECAT,
                      "files": [{"name": name, "size": item["size"], "sha256": item["sha256"],
                                 "format": formats.ECAT, "header": summary}]})
        moves.append((item["name"], target / "SCANS" / str(n) / formats.ECAT / name))
    return scans, moves


def _new_record(upload, project, timestamp, folder, subject) -> dict:
    record = prearchive.new_record(project, timestamp, folder, source=upload.source,
                                   subject=subject, session=folder, upload_id=upload.id)
    record["flags"] = {"date_unknown": bool(upload.params.get("date_unknown"))}
    record["status"] = READY
    return record


def _session_dir(project, timestamp, folder) -> Path:
    return storage.prearchive_session_dir(current_app.config["DATA_DIR"], project,
                                          timestamp, folder)


def unique_label(wanted: str, taken: set[str]) -> str:
    """Return `wanted`, or `wanted_1`, `wanted_2`... when taken; mark it taken."""
    label, n = wanted, 0
    while label in taken:
        n += 1
        label = f"{wanted}_{n}"
    taken.add(label)
    return label


def place_resources(upload, loose: dict[str, str], sessions: list, source_of,
                    timestamp: str, report) -> list:
    """File the upload's other imaging files as resources of its named session or scan.

    `sessions` are the (record, moves) pairs already planned; the files join
    the one labelled as the upload's session (else the first), or a new
    session made from the upload's explicit values. Returns the new pairs.
    """
    paths = {source_of(name): name for name in loose}
    placed, new = [], []
    for files, fmt, header, problem in summarise(formats.pair_files(list(paths))):
        members = [paths[p] for p in files]
        if fmt is None or problem:
            reason = problem or loose[members[0]]
            for name in members:
                report.quarantine(name, reason)
        else:
            placed.append((members, fmt, header))
    if not placed:
        return new
    target = _target_session(upload, sessions, timestamp, report)
    if target is None:
        for members, _fmt, _header in placed:
            for name in members:
                report.quarantine(name, "no session to file it in: give the session label "
                                        "(and the subject) in the upload")
        return new
    if target not in sessions:
        new.append(target)
    record, moves = target
    for members, fmt, header in placed:
        _add_to_record(upload, record, moves, members, fmt, header, source_of)
    return new


def _target_session(upload, sessions: list, timestamp: str, report):
    wanted = upload.params.get("session")
    for pair in sessions:
        if wanted and pair[0]["session"] == wanted:
            return pair
    if sessions:
        return sessions[0]
    if not wanted:
        return None
    project = upload.params.get("project")
    record = _new_record(upload, project, timestamp, labels.label_from_header(wanted, "session"),
                         upload.params.get("subject"))
    record["scan_date"] = upload.params.get("session_date")
    prearchive.log(record, f"built from upload {upload.id} (image files without DICOM)")
    return record, []


def _add_to_record(upload, record, moves, members, fmt, header, source_of) -> None:
    """Add a group of files to the record's resource and plan their moves."""
    label = upload.params.get("resource") or formats.RESOURCE_LABELS[fmt]
    scan_id = upload.params.get("scan")
    base = _session_dir(record["project"], record["timestamp"], record["folder"])
    if scan_id:
        scan = next((s for s in record["scans"] if s["id"] == scan_id), None)
        if scan is None:
            scan = {"id": scan_id, "series_uid": None, "modality": None, "files": []}
            record["scans"].append(scan)
        owner, folder = scan, base / "SCANS" / scan_id / label
    else:
        owner, folder = record, base / "RESOURCES" / label
    resource = owner.setdefault("resources", {}).setdefault(label, {"format": fmt,
                                                                   "files": []})
    for n, name in enumerate(members):
        resource["files"].append(file_entry(source_of(name), name, fmt,
                                            header if n == 0 else None))
        moves.append((name, folder / name))
    prearchive.log(record, f"{fmt} {members[0]} filed in resource {label}"
                           + (f" of scan {scan_id}" if scan_id else ""))
