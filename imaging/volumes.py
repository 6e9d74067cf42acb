"""Header summaries of volume formats, read with nibabel and pynrrd.

Each reader returns a summary dict (dimensions, voxel size, data type,
orientation, frames, notes) and checks that the image data the header
describes is all there. Bad content always ends in FormatError, whose
message is for the user, never in nibabel's or pynrrd's own exceptions.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import struct
import warnings
import zlib
from pathlib import Path

import nibabel
import nrrd
import numpy as np
from nibabel.externals.netcdf import netcdf_file
from nibabel.filebasedimages import ImageFileError
from nibabel.freesurfer.mghformat import MGHHeader
from nibabel.minc1 import Minc1File, MincError
from nibabel.minc2 import Minc2File
from nibabel.orientations import aff2axcodes
from nibabel.parrec import PARRECError, PARRECHeader, parse_PAR_header
from nibabel.spatialimages import HeaderDataError
from nibabel.spm2analyze import Spm2AnalyzeHeader
from nibabel.wrapstruct import WrapStructError

from imaging.labels import shown

GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 2**20
# What nibabel raises on damaged headers: its own errors, and the numpy and
# struct errors of a block too short or a field out of range.
NIBABEL_ERRORS = (
    ImageFileError, HeaderDataError, WrapStructError, PARRECError, MincError, KeyError, IndexError,
    ValueError, TypeError, EOFError, OSError, zlib.error, struct.error,
)
# NRRD spaces whose first two axes point left and posterior, the opposite of RAS.
_NRRD_FLIPPED_SPACES = {"left-posterior-superior", "lps", "left-posterior-superior-time"}
_NRRD_RAS_SPACES = {"right-anterior-superior", "ras", "right-anterior-superior-time",
                    "scanner-xyz", "3d-right-handed"}


class FormatError(ValueError):
    """A file whose format is known but whose header or data is damaged or
    incomplete; the message says which file and why."""


@contextlib.contextmanager
def reading(what: str, path):
    """Turn a reader's error into FormatError naming `what` and the file."""
    try:
        yield
    except FormatError:
        raise
    except NIBABEL_ERRORS + (nrrd.NRRDError,) as exc:
        detail = str(exc).strip().rstrip(".") or type(exc).__name__
        raise FormatError(f"{what} header of {shown(Path(path).name)} could not be read: "
                          f"{detail}.") from exc


@contextlib.contextmanager
def noting(notes: list[str]):
    """Collect the warnings nibabel gives while reading into `notes`."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    notes.extend(dict.fromkeys(str(w.message) for w in caught))


def is_gzip(path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def open_maybe_gzip(path):
    """Return `path` opened for reading, decompressed when its content is gzip."""
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")


def data_size(path) -> int:
    """Return the number of bytes of `path`, after decompression when it is gzip.

    Raises FormatError when the compressed stream is damaged or cut short.
    """
    if not is_gzip(path):
        return os.path.getsize(path)
    total = 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                total += len(chunk)
    except (EOFError, OSError, zlib.error) as exc:
        raise FormatError(f"The compressed file {shown(Path(path).name)} is damaged or "
                          f"cut short: {exc}.") from exc
    return total


def check_data(path, offset: int, shape, dtype: np.dtype, what: str) -> None:
    """Raise FormatError unless `path` holds the image the header describes."""
    needed = offset + math.prod(int(n) for n in shape) * np.dtype(dtype).itemsize
    have = data_size(path)
    if have < needed:
        raise FormatError(
            f"{what} file {shown(Path(path).name)} is truncated: its header describes "
            f"{needed} bytes of image data (to the end of the image), the file has {have}.")


def _number(value) -> float:
    return float(f"{float(value):.6g}")


def summary(fmt: str, variant: str | None, shape, zooms, dtype, affine, notes=(),
            frames: int | None = None) -> dict:
    """Return the summary dict every reader gives.

    `zooms` start with the three spatial axes; `frames` defaults to the
    fourth dimension. Raises FormatError when the header gives no dimensions.
    """
    shape = [int(n) for n in shape]
    if not shape or any(n < 1 for n in shape):
        raise FormatError(f"The {fmt} header gives no valid dimensions ({shape}).")
    codes = aff2axcodes(affine) if affine is not None else ()
    return {
        "format": fmt,
        "variant": variant,
        "dimensions": shape,
        "voxel_size": [_number(z) for z in list(zooms)[:3]],
        "data_type": np.dtype(dtype).name,
        "orientation": "".join(c or "?" for c in codes) or None,
        "frames": frames if frames is not None else shape[3] if len(shape) > 3 else 1,
        "notes": list(notes),
    }


_NIFTI_HEADERS = {"NIfTI-1": nibabel.Nifti1Header, "NIfTI-2": nibabel.Nifti2Header}


def read_nifti(path, variant: str, partner=None) -> dict:
    """Return the summary of a NIfTI file (.nii, .nii.gz) or pair (.hdr + `partner`)."""
    return _read_analyze_like(path, "NIFTI", variant, _NIFTI_HEADERS[variant], partner)


def read_analyze(path, partner=None) -> dict:
    """Return the summary of an Analyze 7.5 header and its image file `partner`."""
    return _read_analyze_like(path, "ANALYZE", "Analyze 7.5", Spm2AnalyzeHeader, partner)


def _read_analyze_like(path, fmt, variant, header_class, partner) -> dict:
    notes: list[str] = []
    with reading(fmt, path), noting(notes), open_maybe_gzip(path) as f:
        header = header_class.from_fileobj(f, check=True)
        shape, zooms = header.get_data_shape(), header.get_zooms()
        dtype, affine = header.get_data_dtype(), header.get_best_affine()
        offset = header.get_data_offset() if partner is None else int(header["vox_offset"])
    result = summary(fmt, variant, shape, zooms, dtype, affine, notes)
    check_data(partner or path, int(offset), shape, dtype, fmt)
    if fmt == "NIFTI":
        result["units"] = [u for u in header.get_xyzt_units() if u != "unknown"]
        result["description"] = _text(header["descrip"])
    return result


def _text(value) -> str | None:
    raw = np.asarray(value).tobytes()
    text = raw.split(b"\x00")[0].decode("latin-1").strip()
    return text or None


_MGH_HEADER_SIZE = 284


def read_mgh(path) -> dict:
    """Return the summary of a FreeSurfer MGH file (.mgh, or gzip-compressed .mgz)."""
    notes: list[str] = []
    with reading("MGH", path), noting(notes), open_maybe_gzip(path) as f:
        header = MGHHeader.from_fileobj(f, check=True)
        shape, zooms = header.get_data_shape(), header.get_zooms()
        dtype, affine = header.get_data_dtype(), header.get_affine()
    result = summary("MGH", "MGZ" if is_gzip(path) else "MGH", shape, zooms, dtype, affine,
                     notes)
    check_data(path, _MGH_HEADER_SIZE, shape, dtype, "MGH")
    return result


def read_minc(path, variant: str) -> dict:
    """Return the summary of a MINC 1 (NetCDF) or MINC 2 (HDF5) file."""
    notes: list[str] = []
    with reading("MINC", path), noting(notes), contextlib.ExitStack() as stack:
        minc = _open_minc(path, variant, stack)
        affine = minc.get_affine()
        if affine.shape != (4, 4):
            raise MincError("the image does not have 3 spatial dimensions")
        shape, zooms, dtype = minc.get_data_shape(), list(minc.get_zooms()), minc.get_data_dtype()
        # MINC names its axes; time, when there is one, usually comes first.
        names = list(getattr(minc, "_dim_names", ()))
    frames = 1
    if "time" in names and len(names) == len(shape):
        frames = int(shape[names.index("time")])
        del zooms[names.index("time")]
    return summary("MINC", variant, shape, zooms, dtype, affine, notes, frames=frames)


def _open_minc(path, variant: str, stack: contextlib.ExitStack):
    """Return nibabel's MincFile reader of `path`, closed when `stack` ends.

    The file is opened here rather than by nibabel's loaders, which judge by
    the file name's extension and leave HDF5 files open.
    """
    if variant == "MINC1":
        return Minc1File(netcdf_file(stack.enter_context(open(path, "rb"))))
    import h5py  # MINC 2 only; imported here so other formats never need it

    return Minc2File(stack.enter_context(h5py.File(path, "r")))


def read_parrec(path, partner=None) -> dict:
    """Return the summary of a Philips PAR header and its REC data file `partner`."""
    notes: list[str] = []
    with reading("PAR/REC", path), noting(notes):
        with open(path, encoding="latin-1") as f:
            info, image_defs = parse_PAR_header(f)
        header = PARRECHeader(info, image_defs)
        shape, zooms = header.get_data_shape(), header.get_zooms()
        dtype, affine = header.get_data_dtype(), header.get_affine()
    result = summary("PARREC", "PAR " + str(info.get("version") or "").strip(), shape,
                     zooms, dtype, affine, notes)
    result.update(patient_name=info.get("patient_name") or None,
                  exam_name=info.get("exam_name") or None,
                  protocol_name=info.get("protocol_name") or None,
                  exam_date=info.get("exam_date") or None)
    if partner is not None:
        check_data(partner, 0, shape, dtype, "REC")
    return result


def nrrd_header(path) -> tuple[dict, int]:
    """Return the NRRD header of `path` and where its data starts in the file.

    Raises FormatError when the header cannot be read.
    """
    with reading("NRRD", path), open(path, "rb") as f:
        header = nrrd.read_header(f)
        return header, f.tell()


def nrrd_data_file(header: dict) -> str | None:
    """Return the name of a detached NRRD's data file as the header writes it.

    None when the data follows the header in the same file. Raises
    FormatError for a list of data files or a name pattern (not supported).
    """
    name = header.get("data file") or header.get("datafile")
    if name is None:
        return None
    name = str(name).strip()
    if name.upper().startswith("LIST") or len(name.split()) > 1:
        raise FormatError("The NRRD header names several data files "
                          f"({shown(name)}); only one data file is supported.")
    return name


def read_nrrd(path, partner=None) -> dict:
    """Return the summary of an NRRD file, or of a .nhdr and its data file `partner`."""
    header, data_start = nrrd_header(path)
    detached = nrrd_data_file(header)
    if detached is not None and partner is None:
        raise FormatError(f"The NRRD header {shown(Path(path).name)} needs its data file "
                          f"{shown(detached)}, which is missing.")
    with reading("NRRD", path):
        dtype = nrrd.reader._determine_datatype(header)
        shape = [int(n) for n in header["sizes"]]
        directions, zooms = _nrrd_geometry(header)
    affine = _nrrd_affine(header, directions)
    result = summary("NRRD", "detached" if detached else "attached", shape, zooms, dtype,
                     affine)
    result.update(encoding=header.get("encoding"), space=header.get("space"))
    _check_nrrd_data(header, partner or path, 0 if detached else data_start, shape, dtype)
    return result


def _nrrd_geometry(header: dict):
    """Return (the spatial axes' direction vectors or None, the voxel sizes)."""
    directions = header.get("space directions")
    if directions is not None:
        rows = [np.asarray(row, dtype=float) for row in directions]
        spatial = [row for row in rows if not np.isnan(row).any()]
        return np.array(spatial), [float(np.linalg.norm(row)) for row in spatial]
    spacings = header.get("spacings")
    if spacings is not None:
        return None, [float(s) for s in spacings if not math.isnan(float(s))]
    return None, []


def _nrrd_affine(header: dict, directions) -> np.ndarray | None:
    """Return the RAS affine of the spatial axes, None when the header has no space."""
    space = str(header.get("space") or "").lower()
    if directions is None or directions.shape != (3, 3):
        return None
    if space not in _NRRD_FLIPPED_SPACES | _NRRD_RAS_SPACES:
        return None
    affine = np.eye(4)
    affine[:3, :3] = directions.T
    if space in _NRRD_FLIPPED_SPACES:
        affine[:2] *= -1
    return affine


def _check_nrrd_data(header: dict, path, start: int, shape, dtype) -> None:
    """Check that raw or gzip data is complete (other encodings are not checked)."""
    encoding = str(header.get("encoding", "")).lower()
    skips = header.get("byte skip") or header.get("byteskip") or header.get("line skip")
    if skips or encoding not in ("raw", "gzip", "gz"):
        return
    if encoding == "raw":
        check_data(path, start, shape, dtype, "NRRD")
    elif start == 0:
        check_data(path, 0, shape, dtype, "NRRD")
    else:
        _check_attached_gzip(path, start)


def _check_attached_gzip(path, start: int) -> None:
    """Raise FormatError when the gzip data after an NRRD header is cut short."""
    decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        with open(path, "rb") as f:
            f.seek(start)
            while chunk := f.read(_CHUNK):
                decompressor.decompress(chunk)
    except zlib.error as exc:
        raise FormatError(f"The NRRD data of {shown(Path(path).name)} is damaged: "
                          f"{exc}.") from exc
    if not decompressor.eof:
        raise FormatError(f"The NRRD file {shown(Path(path).name)} is truncated: its "
                          "compressed data is cut short.")
