"""ECAT 7 PET files (.v): their main header, read with nibabel.

The main header says who was scanned and when (patient name and id, study
description, scan start time, number of frames); ecat_identity_header maps
those values onto the DICOM tags that routing.identify reads, so an ECAT
file is routed exactly like a DICOM study.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
from nibabel.ecat import EcatImage
from nibabel.fileholders import FileHolder

from imaging.labels import shown
from imaging.routing import PATIENT_ID, PATIENT_NAME, STUDY_DESCRIPTION
from imaging.volumes import FormatError, noting, reading, summary

MAGIC = b"MATRIX7"
_BLOCK = 512
# An ECAT matrix list entry: matrix id, first record (subheader), last record, status.
_FIRST_RECORD = 1


def _text(value) -> str | None:
    raw = np.asarray(value).tobytes()
    text = raw.split(b"\x00")[0].decode("latin-1").strip()
    return text or None


def _load(path) -> EcatImage:
    """Return the EcatImage of `path`, headers read; raise FormatError when damaged."""
    with open(path, "rb") as f:
        if not f.read(len(MAGIC)) == MAGIC:
            raise FormatError(f"{shown(Path(path).name)} is not an ECAT 7 file "
                              "(no MATRIX7 in its main header).")
        f.seek(0)
        # nibabel reads the main header, matrix list and subheaders here; the
        # image data stays unread.
        with reading("ECAT", path):
            return EcatImage.from_file_map({"header": FileHolder(fileobj=f),
                                            "image": FileHolder(fileobj=f)})


def scan_start(header) -> dt.datetime | None:
    """Return the scan start time of a main header (seconds since 1970), or None."""
    seconds = int(header["scan_start_time"])
    if seconds <= 0:
        return None
    try:
        return dt.datetime.fromtimestamp(seconds, dt.UTC).replace(tzinfo=None)
    except (OverflowError, OSError, ValueError):
        return None


def read_ecat(path) -> dict:
    """Return the summary of an ECAT 7 file: geometry, patient, study, frames.

    Raises FormatError for a damaged header or image data cut short.
    """
    notes: list[str] = []
    with noting(notes):
        img = _load(path)
        with reading("ECAT", path):
            header, subheaders, mlist = img.header, img.get_subheaders(), img.get_mlist()
            shape, zooms = img.shape, subheaders.get_zooms(0)
            dtype, affine = img.get_data_dtype(0), img.affine
            frame_sizes = [math.prod(subheaders.get_shape(n)) for n in range(len(mlist))]
    result = summary("ECAT", _text(header["magic_number"]), shape, zooms, dtype, affine,
                     notes)
    _check_frames(path, mlist, frame_sizes, np.dtype(dtype).itemsize)
    frames = int(header["num_frames"])
    if frames != len(mlist):
        result["notes"].append(f"The main header gives {frames} frames, the matrix list "
                               f"{len(mlist)}.")
    start = scan_start(header)
    result.update(
        frames=frames,
        modality="PT",
        patient_name=_text(header["patient_name"]),
        patient_id=_text(header["patient_id"]),
        study_description=_text(header["study_description"]),
        scan_start=start.isoformat() if start else None,
        study_date=start.date().isoformat() if start else None,
        isotope=_text(header["isotope_name"]),
        radiopharmaceutical=_text(header["radiopharmaceutical"]),
        facility=_text(header["facility_name"]),
        serial_number=_text(header["serial_number"]),
        data_units=_text(header["data_units"]),
    )
    return result


def _check_frames(path, mlist, frame_sizes, itemsize: int) -> None:
    """Raise FormatError when a frame's data runs past the end of the file."""
    size = Path(path).stat().st_size
    for n, (entry, voxels) in enumerate(zip(mlist, frame_sizes, strict=True)):
        # A frame's subheader is its first record; the data follows it.
        end = int(entry[_FIRST_RECORD]) * _BLOCK + voxels * itemsize
        if end > size:
            raise FormatError(
                f"ECAT file {shown(Path(path).name)} is truncated: frame {n + 1} needs "
                f"{end} bytes, the file has {size}.")


def ecat_identity_header(path) -> dict[int, str | None]:
    """Return the main header's values under the DICOM tags routing reads.

    Study Description (0008,1030), Patient Name (0010,0010) and Patient ID
    (0010,0020), so that routing.identify(header) routes an ECAT file like a
    DICOM study. Raises FormatError for a damaged header.
    """
    with noting([]):
        header = _load(path).header
    return {
        STUDY_DESCRIPTION: _text(header["study_description"]),
        PATIENT_NAME: _text(header["patient_name"]),
        PATIENT_ID: _text(header["patient_id"]),
    }
