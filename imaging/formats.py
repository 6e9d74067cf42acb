"""Which imaging format a file holds, judged by its content, and its header summary.

detect() looks at a file's first bytes (magic numbers), never at its name:
a NIfTI named x.dcm is a NIfTI, a Siemens .IMA that is DICOM is DICOM.
pair_files() keeps a header and its data file together (Analyze and NIfTI
.hdr + .img, NRRD .nhdr + its data file, PAR + REC) and names what is
missing. read_header() returns the summary of any recognised file.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from imaging import dicomio, ecat, volumes
from imaging.ecat import ecat_identity_header
from imaging.labels import shown
from imaging.volumes import FormatError

__all__ = ["FormatError", "FormatInfo", "Group", "detect", "pair_files", "read_header",
           "ecat_identity_header", "RESOURCE_LABELS"]

DICOM, ECAT, ANALYZE, NIFTI, NRRD, MGH, MINC, PARREC = (
    "DICOM", "ECAT", "ANALYZE", "NIFTI", "NRRD", "MGH", "MINC", "PARREC")
# The resource label each format is stored under, as in XNAT.
RESOURCE_LABELS = {DICOM: "DICOM", ECAT: "ECAT", ANALYZE: "ANALYZE", NIFTI: "NIFTI",
                   NRRD: "NRRD", MGH: "MGH", MINC: "MINC", PARREC: "PARREC"}

_HEAD = 1024
_ANALYZE_SIZES = (struct.pack("<i", 348), struct.pack(">i", 348))
_NIFTI2_SIZES = (struct.pack("<i", 540), struct.pack(">i", 540))
_NIFTI1_MAGIC = {b"n+1\x00": False, b"ni1\x00": True}  # magic -> needs an .img
_NIFTI2_MAGIC = {b"n+2\x00": False, b"ni2\x00": True}
_NRRD_MAGIC = b"NRRD000"
_NETCDF_MAGIC = (b"CDF\x01", b"CDF\x02")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_PAR_START = b"# === DATA DESCRIPTION FILE"
_DICOM_STARTS = (b"\x08\x00", b"\x02\x00")
_MGH_TYPES = {0: 1, 1: 4, 3: 4, 4: 2}  # MGH data type code -> bytes per voxel
_MGH_HEADER = 284


@dataclass(frozen=True)
class FormatInfo:
    """What detect() found in a file.

    `format` is one of DICOM, ECAT, ANALYZE, NIFTI, NRRD, MGH, MINC, PARREC;
    `variant` says more ("NIfTI-2", "MINC1", "detached"); `compressed` is True
    for gzip content (.nii.gz, .mgz). `partner` is the name of the data file
    a header needs beside it ("x.img", the NRRD's "data file", "x.REC"), as
    the header or the naming rule gives it; None for a self-contained file.
    `error` is set when the format is known but the header naming the data
    file could not be read.
    """

    format: str
    variant: str | None = None
    compressed: bool = False
    partner: str | None = None
    error: str | None = None

    @property
    def resource_label(self) -> str:
        return RESOURCE_LABELS[self.format]


@dataclass
class Group:
    """Files that belong together: a header first, then its data file, if any.

    `info` is None for a file of no format we know (a plain file). `error`
    says what is wrong (a missing data file, an unreadable header); such a
    group is still listed, so that nothing is dropped silently.
    """

    files: list[Path]
    info: FormatInfo | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def primary(self) -> Path:
        return self.files[0]

    @property
    def partner(self) -> Path | None:
        return self.files[1] if len(self.files) > 1 else None

    @property
    def format(self) -> str | None:
        return self.info.format if self.info else None


def _head(path, size: int = _HEAD) -> bytes:
    with open(path, "rb") as f:
        return f.read(size)


def _gunzip_head(path, size: int = _HEAD) -> bytes:
    """Return the first `size` bytes of a gzip file's content (fewer if it is short)."""
    try:
        with gzip.open(path, "rb") as f:
            return f.read(size)
    except (EOFError, OSError, zlib.error):
        return b""


def detect(path) -> FormatInfo | None:
    """Return the format of the file at `path` judged by its content, or None.

    None means no imaging format Scanyard knows (a plain file, or a data
    file such as an Analyze .img that only its header can name). Raises
    OSError when the file cannot be read.
    """
    head = _head(path)
    if head.startswith(volumes.GZIP_MAGIC):
        return _detect_compressed(path, _gunzip_head(path))
    if dicomio.has_dicm(head):
        return FormatInfo(DICOM)
    for check in (_nifti_or_analyze, _other_magic):
        info = check(path, head)
        if info is not None:
            return info
    if head[:2] in _DICOM_STARTS and _reads_as_dicom(path):
        return FormatInfo(DICOM, "no preamble")
    if _looks_like_mgh(head, os.path.getsize(path)):
        return FormatInfo(MGH, "MGH")
    return None


def _detect_compressed(path, head: bytes) -> FormatInfo | None:
    info = _nifti_or_analyze(path, head)
    if info is not None and info.partner is None and info.format == NIFTI:
        return FormatInfo(NIFTI, info.variant, compressed=True)
    if _looks_like_mgh(head, None):
        return FormatInfo(MGH, "MGZ", compressed=True)
    return None


def _stem(path) -> str:
    return Path(path).name.rsplit(".", 1)[0]


def _nifti_or_analyze(path, head: bytes) -> FormatInfo | None:
    if head[:4] in _NIFTI2_SIZES and head[4:8] in _NIFTI2_MAGIC:
        pair = _NIFTI2_MAGIC[head[4:8]]
        return FormatInfo(NIFTI, "NIfTI-2", partner=_stem(path) + ".img" if pair else None)
    if head[:4] in _ANALYZE_SIZES and len(head) >= 348:
        if head[344:348] in _NIFTI1_MAGIC:
            pair = _NIFTI1_MAGIC[head[344:348]]
            return FormatInfo(NIFTI, "NIfTI-1",
                              partner=_stem(path) + ".img" if pair else None)
        if _analyze_dims_ok(head):
            return FormatInfo(ANALYZE, "Analyze 7.5", partner=_stem(path) + ".img")
    return None


def _analyze_dims_ok(head: bytes) -> bool:
    """Return True when dim[0], the number of dimensions, is 1 to 7 (a second check
    beside sizeof_hdr, which alone is four bytes any file may start with)."""
    order = "<" if head[:4] == _ANALYZE_SIZES[0] else ">"
    (ndim,) = struct.unpack_from(order + "h", head, 40)
    return 1 <= ndim <= 7


def _other_magic(path, head: bytes) -> FormatInfo | None:
    if head.startswith(ecat.MAGIC):
        return FormatInfo(ECAT, head[:9].decode("latin-1"))
    if head.startswith(_NRRD_MAGIC):
        return _detect_nrrd(path)
    if head.startswith(_NETCDF_MAGIC):
        return FormatInfo(MINC, "MINC1")
    if head.startswith(_HDF5_MAGIC):
        return FormatInfo(MINC, "MINC2") if _is_minc2(path) else None
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(_PAR_START):
        return FormatInfo(PARREC, "PAR", partner=_stem(path) + ".REC")
    return None


def _detect_nrrd(path) -> FormatInfo:
    try:
        header, _ = volumes.nrrd_header(path)
        data_file = volumes.nrrd_data_file(header)
    except FormatError as exc:
        return FormatInfo(NRRD, error=str(exc))
    return FormatInfo(NRRD, "detached" if data_file else "attached", partner=data_file)


def _is_minc2(path) -> bool:
    """Return True for an HDF5 file with MINC 2's root group (other HDF5 is plain)."""
    import h5py  # only MINC 2 needs it; imported here so the rest works without

    try:
        with h5py.File(path, "r") as f:
            return "minc-2.0" in f
    except (OSError, ValueError):
        return False


def _reads_as_dicom(path) -> bool:
    """Return True when a file without the DICM marker reads as DICOM."""
    try:
        dicomio.read_dicom(path)
    except dicomio.NotDicom:
        return False
    return True


def _looks_like_mgh(head: bytes, size: int | None) -> bool:
    """Return True when `head` starts like a FreeSurfer MGH header.

    MGH has no magic number: version 1, four positive dimensions and a known
    data type, and (when `size` is known) enough bytes for the data.
    """
    if len(head) < _MGH_HEADER:
        return False
    version, *dims, kind = struct.unpack(">6i", head[:24])
    if version != 1 or kind not in _MGH_TYPES or not all(0 < n < 2**16 for n in dims):
        return False
    needed = _MGH_HEADER + dims[0] * dims[1] * dims[2] * dims[3] * _MGH_TYPES[kind]
    return size is None or size >= needed


def read_header(path, partner=None, info: FormatInfo | None = None) -> dict:
    """Return the header summary of the file at `path` (and its data file `partner`).

    Keys: format, variant, dimensions, voxel_size (mm), data_type,
    orientation (axis codes such as "RAS"), frames, notes, and more per
    format (for ECAT: patient_name, patient_id, study_description,
    scan_start, study_date). Raises FormatError for an unknown format, a
    damaged header, or image data cut short, OSError when unreadable.
    """
    info = info or detect(path)
    if info is None:
        raise FormatError(f"{shown(Path(path).name)} is not in an imaging format "
                          "Scanyard knows.")
    if info.error:
        raise FormatError(info.error)
    if info.partner and partner is None:
        raise FormatError(_missing_partner(path, info))
    readers = {
        DICOM: lambda: _read_dicom(path),
        ECAT: lambda: ecat.read_ecat(path),
        ANALYZE: lambda: volumes.read_analyze(path, partner),
        NIFTI: lambda: volumes.read_nifti(path, info.variant, partner),
        NRRD: lambda: volumes.read_nrrd(path, partner),
        MGH: lambda: volumes.read_mgh(path),
        MINC: lambda: volumes.read_minc(path, info.variant),
        PARREC: lambda: volumes.read_parrec(path, partner),
    }
    result = readers[info.format]()
    result["compressed"] = info.compressed
    return result


def _read_dicom(path) -> dict:
    try:
        dicom = dicomio.read_dicom(path)
    except dicomio.NotDicom as exc:
        raise FormatError(f"{shown(Path(path).name)}: {exc}") from exc
    names = ("modality", "patient_name", "patient_id", "study_description",
             "series_description", "series_number", "study_uid", "series_uid",
             "sop_class_uid", "transfer_syntax", "manufacturer", "model")
    result = {"format": DICOM, "variant": None, "notes": []}
    result.update({name: getattr(dicom, name) for name in names})
    result["study_date"] = dicom.study_date.isoformat() if dicom.study_date else None
    return result


def _missing_partner(path, info: FormatInfo) -> str:
    name = shown(Path(path).name)
    if info.format == NRRD:
        return f"The NRRD header {name} names the data file {shown(info.partner)}, " \
               "which is missing."
    what = {ANALYZE: "Analyze header", NIFTI: "NIfTI header", PARREC: "PAR header"}
    return f"The {what[info.format]} {name} has no {shown(info.partner)} beside it."


def pair_files(paths) -> list[Group]:
    """Return the files grouped: each header with its data file, the rest alone.

    Groups come in the order of their first file in `paths`. A header whose
    data file is not among `paths` is a group with an `error`; so is a file
    that could not be read. A data file that no header claims is a plain
    file (info None).
    """
    paths = [Path(p) for p in paths]
    infos: dict[Path, FormatInfo | None] = {}
    groups: dict[Path, Group] = {}
    for path in paths:
        try:
            infos[path] = detect(path)
        except OSError as exc:
            infos[path] = None
            groups[path] = Group([path], error=f"{shown(path.name)} could not be read: "
                                               f"{exc.strerror or exc}.")
    claimed = _claim_partners(paths, infos, groups)
    ordered = []
    for path in paths:
        if path in groups:
            ordered.append(groups[path])
        elif path not in claimed:
            ordered.append(Group([path], infos[path]))
    return ordered


def _claim_partners(paths: list[Path], infos: dict, groups: dict) -> set[Path]:
    """Put each header's group into `groups`; return the data files claimed."""
    by_name = {(p.parent, p.name.casefold()): p for p in paths}
    by_exact = {(p.parent, p.name): p for p in paths}
    claimed: set[Path] = set()
    for path in paths:
        info = infos[path]
        if info is None or path in groups:
            continue
        if info.error:
            groups[path] = Group([path], info, error=info.error)
        elif info.partner:
            partner = _find_partner(path, info, by_name, by_exact)
            if partner is None or partner in claimed or partner == path:
                groups[path] = Group([path], info, error=_missing_partner(path, info))
            else:
                claimed.add(partner)
                groups[path] = Group([path, partner], info)
    for path in claimed:
        groups.pop(path, None)  # a data file that also looked like something else
    return claimed


def _find_partner(path: Path, info: FormatInfo, by_name: dict, by_exact: dict):
    """Return the path of a header's data file among the given files, or None."""
    if info.format == NRRD:
        # The header names the file; only a plain name or a relative path beside it.
        relative = Path(info.partner)
        if relative.is_absolute() or ".." in relative.parts:
            return None
        target = path.parent / relative
        return by_exact.get((target.parent, target.name))
    # The naming rule (x.hdr -> x.img, x.PAR -> x.REC) in any letter case.
    return by_name.get((path.parent, info.partner.casefold()))
