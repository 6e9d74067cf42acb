"""DICOM test data made from pydicom's bundled files: studies, series and zips."""
from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

_TEMPLATES: dict[str, bytes] = {}


def _template(name: str):
    if name not in _TEMPLATES:
        with open(get_testdata_file(name), "rb") as fh:
            _TEMPLATES[name] = fh.read()
    return dcmread(io.BytesIO(_TEMPLATES[name]))


def make_series(study_uid: str, count: int = 3, *, series_number: int = 1,
                series_uid: str | None = None, template: str = "MR_small.dcm",
                patient_name: str = "DOE^JOHN", patient_id: str = "P001",
                study_description: str = "", study_date: str = "20240115",
                description: str = "T1 axial", size: int | None = None, **extra) -> list[bytes]:
    """Return `count` encoded instances of one series (new SOP Instance UIDs)."""
    series_uid = series_uid or generate_uid()
    out = []
    for n in range(count):
        ds = _template(template)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesNumber = series_number
        ds.InstanceNumber = n + 1
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.StudyDescription = study_description
        ds.StudyDate = study_date
        ds.SeriesDescription = description
        for key, value in extra.items():
            setattr(ds, key, value)
        if size:
            ds.Rows = ds.Columns = size
            ds.PixelData = (np.arange(size * size, dtype=np.uint16) + n).tobytes()
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


def make_study(series: int = 2, per_series: int = 3, **kw) -> tuple[str, list[bytes]]:
    """Return (StudyInstanceUID, instances) of a study with several series."""
    study_uid = generate_uid()
    files = []
    for n in range(series):
        files += make_series(study_uid, per_series, series_number=n + 1,
                             description=f"series {n + 1}", **kw)
    return study_uid, files


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def tar_bytes(files: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_files(folder: Path, files: list[bytes], prefix: str = "im") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, data in enumerate(files):
        path = folder / f"{prefix}{n:05d}.dcm"
        path.write_bytes(data)
        paths.append(path)
    return paths
