"""Reading what Scanyard needs from a DICOM file's header, fast and safely.

A file is read once: its bytes are hashed whole and after the file meta
group (so the same dataset sent by two senders is recognised as the same)
and the header is parsed from memory, pixels skipped. Bad content always
ends in NotDicom, never in another exception. The values kept of a header,
and how they are read from it: imaging.dicominfo.
"""

import dataclasses
import hashlib
import io
import os
import struct

import pydicom
from pydicom.dataelem import RawDataElement

from imaging import fastheader
from imaging.dicominfo import DicomInfo, NotDicom, changed_values, checked_info

WHOLE_READ_LIMIT = 64 * 2**20
_CHUNK = 2**20
_HEAD = 2**20
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_PIXEL_DATA = b"\xe0\x7f\x10\x00"
_PIXEL_TAG = pydicom.tag.BaseTag(0x7FE00010)


def has_dicm(data: bytes) -> bool:
    """Return True when `data` has the 128-byte preamble and the "DICM" marker."""
    return data[128:132] == b"DICM"


def _meta_start(data: bytes) -> int | None:
    """Return where the file meta group starts, or None when there is none."""
    if has_dicm(data):
        return 132
    if data[:2] == b"\x02\x00":
        return 0
    return None


def _walk_meta(data: bytes, pos: int) -> int:
    """Return the offset just after the group 0002 elements starting at `pos`.

    Raises NotDicom when an element runs past the end of `data`.
    """
    while pos + 8 <= len(data) and data[pos : pos + 2] == b"\x02\x00":
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > len(data):
                raise NotDicom("DICOM file meta information is truncated")
            (length,) = struct.unpack_from("<I", data, pos + 8)
            header = 12
        elif vr.isalpha() and vr.isupper():
            (length,) = struct.unpack_from("<H", data, pos + 6)
            header = 8
        else:  # some writers put the meta group in implicit VR
            (length,) = struct.unpack_from("<I", data, pos + 4)
            header = 8
        if length == 0xFFFFFFFF:
            raise NotDicom("DICOM file meta information has an undefined length")
        pos += header + length
    if pos > len(data):
        raise NotDicom("DICOM file meta information is truncated")
    return pos


def dataset_offset(data: bytes) -> int:
    """Return where the dataset starts in `data`, the bytes of a DICOM file.

    That is after the preamble, "DICM" and the group 0002 elements; 0 when
    the file has no file meta. Raises NotDicom when the meta is truncated.
    """
    start = _meta_start(data)
    if start is None:
        return 0
    # The elements are walked rather than (0002,0000) trusted: some writers
    # get the group length wrong, and pydicom reads the group by walking too.
    return _walk_meta(data, start)


def _hashes(path, offset: int) -> tuple[str, str]:
    """Return the sha256 of the whole file and of its bytes from `offset` on."""
    whole, dataset = hashlib.sha256(), hashlib.sha256()
    seen = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            whole.update(chunk)
            dataset.update(chunk[max(offset - seen, 0) :])
            seen += len(chunk)
    return whole.hexdigest(), dataset.hexdigest()


def _parse(f, dicm: bool, size: int, **kwargs) -> pydicom.Dataset:
    """Return the header read from the open file `f`, checking the pixels are all there."""
    return _parse_to_pixels(f, dicm, size, **kwargs)[0]


def _parse_to_pixels(f, dicm: bool, size: int, **kwargs) -> tuple[pydicom.Dataset, int, int]:
    """Return (header, where the pixel data starts, where it ends; 0 if none)."""
    try:
        ds = pydicom.dcmread(f, stop_before_pixels=True, force=not dicm, **kwargs)
    except Exception as exc:  # pydicom raises many kinds on bad bytes
        raise NotDicom(f"DICOM header could not be read: {exc}") from exc
    start = f.tell()
    return ds, start, _checked_pixels_end(f, start, size)


def _parse_bytes(data: bytes, dicm: bool) -> tuple[pydicom.Dataset, int, int]:
    """Do what _parse_to_pixels does for a file's bytes, in one pass over
    them where the file is a plain one (imaging.fastheader)."""
    fast = fastheader.read_to_pixels(data) if dicm else None
    if fast is None:
        return _parse_to_pixels(io.BytesIO(data), dicm, len(data))
    ds, start = fast
    return ds, start, _checked_pixels_end(io.BytesIO(data), start, len(data))


def _checked_pixels_end(f, start: int, size: int) -> int:
    """Return where the pixel data element at `start` ends (0 if none);
    raise NotDicom when it runs past the file's `size`."""
    # pydicom stops in front of the pixel data without reading it, so a file
    # cut short in its pixels (a broken transfer) would otherwise pass.
    end = _pixels_end(f, start)
    if end > size:
        raise NotDicom("DICOM file is truncated: its pixel data is incomplete")
    return end


def _pixels_end(f, pos: int) -> int:
    """Return where the little-endian pixel data element at `pos` ends (0 if none)."""
    f.seek(pos)
    header = f.read(12)
    if not header or not _PIXEL_DATA.startswith(header[:4]):
        return 0
    explicit = header[4:6] in (b"OB", b"OW")
    header_length = 12 if explicit else 8
    if len(header) < header_length:
        return pos + header_length
    (length,) = struct.unpack_from("<I", header, header_length - 4)
    pos += header_length
    if length != 0xFFFFFFFF:
        return pos + length
    while True:  # encapsulated: fragments up to the sequence delimiter
        f.seek(pos)
        item = f.read(8)
        if len(item) < 8:
            return pos + 8
        tag, length = struct.unpack("<4sI", item)
        pos += 8
        if tag == b"\xfe\xff\xdd\xe0":
            return pos
        if tag != b"\xfe\xff\x00\xe0" or length == 0xFFFFFFFF:
            return 0  # not what we understand; pydicom has read the header
        pos += length


def _check_start(head: bytes) -> bool:
    """Return True when `head` has "DICM"; raise NotDicom unless it starts like DICOM."""
    if has_dicm(head):
        return True
    if len(head) >= 8 and head[:2] in (b"\x08\x00", b"\x02\x00"):
        return False
    raise NotDicom("not a DICOM file (no DICM marker and no valid group 0008 start)")


def read_dicom(path, data: bytes | None = None) -> DicomInfo:
    """Return the DicomInfo of the file at `path`.

    `data`, when given, is the file's content already in memory (a caller
    that has just written the file passes it, so it is not read back).
    Raises NotDicom for anything that is not a DICOM instance with a
    StudyInstanceUID and a SeriesInstanceUID; OSError when the file cannot
    be opened.
    """
    if data is None:
        size = os.path.getsize(path)
        if size > WHOLE_READ_LIMIT:
            return _read_large(path, size)
        with open(path, "rb") as f:
            data = f.read()
    dicm = _check_start(data)
    offset, file_sha256, dataset_sha256 = _digests(data)
    ds = _parse_bytes(data, dicm)[0]
    return checked_info(ds, file_sha256, dataset_sha256, len(data), offset)


def _digests(data: bytes) -> tuple[int, str, str]:
    """Return where the dataset starts in a file's bytes, their sha256 and the
    dataset's (after the file meta: the same dataset from two senders)."""
    offset = dataset_offset(data)
    return (offset, hashlib.sha256(data).hexdigest(),
            hashlib.sha256(memoryview(data)[offset:]).hexdigest())


def info_of(ds, data: bytes) -> DicomInfo:
    """Return the DicomInfo of `data`, a file's bytes, from `ds`, the dataset
    they hold, already parsed (a writer that has just made both)."""
    offset, file_sha256, dataset_sha256 = _digests(data)
    return checked_info(ds, file_sha256, dataset_sha256, len(data), offset)


def _read_large(path, size: int) -> DicomInfo:
    """Read a file too large to hold in memory: hashed in chunks, pixels deferred."""
    with open(path, "rb") as f:
        head = f.read(_HEAD)
    dicm = _check_start(head)
    offset = dataset_offset(head)
    file_sha256, dataset_sha256 = _hashes(path, offset)
    with open(path, "rb") as f:
        ds = _parse(f, dicm, size, defer_size=_CHUNK)
    return checked_info(ds, file_sha256, dataset_sha256, size, offset)


def read_header(data: bytes) -> tuple[DicomInfo, pydicom.Dataset, tuple[int, int]]:
    """Do what read_dicom does for a file's bytes, and also return its header.

    Returns (info, the header as pydicom parsed it, (where its pixel data
    starts, where it ends; 0 when there is none)). The header's elements are
    left as read (raw), so a writer can copy the ones it does not change;
    add_rest() adds the pixel data and what follows it. The info's two
    hashes are left out (None): a caller that keeps these bytes, not a
    rewrite of them, adds them with with_digests().
    """
    dicm = _check_start(data)
    ds, start, end = _parse_bytes(data, dicm)
    as_read = dict(ds._dict)
    info = checked_info(ds, None, None, len(data), dataset_offset(data))
    ds._dict.update(as_read)
    return info, ds, (start, end)


def element_as_read(ds: pydicom.Dataset, tag: int):
    """Return the element `tag` of `ds` as pydicom gives it (None when absent),
    leaving `ds` holding it as it was read: a raw element stays raw, so that
    it does not count as changed and a writer copies its bytes (dicomwrite)."""
    held = ds._dict.get(tag)
    if held is None:
        return None
    element = ds[tag]
    if element is not held and isinstance(held, RawDataElement):
        ds._dict[tag] = held
    return element


def with_digests(info: DicomInfo, data: bytes) -> DicomInfo:
    """Return `info` (read_header's, of `data`) with the hashes of `data`."""
    _offset, file_sha256, dataset_sha256 = _digests(data)
    return dataclasses.replace(info, file_sha256=file_sha256, dataset_sha256=dataset_sha256)


def add_rest(ds: pydicom.Dataset, data: bytes, pixels: tuple[int, int]) -> bool:
    """Add to a header read_header read from `data` its pixel data (as raw
    bytes, never decoded) and the elements after it, so that `ds` holds the
    whole dataset. Returns False when the file is not one this understands
    (big endian, say): the caller then reads it whole with pydicom.
    """
    implicit, little = ds.original_encoding
    if implicit is None or not little:
        return False
    start, end = pixels
    rest = start
    if end:
        explicit = data[start + 4 : start + 6] in (b"OB", b"OW")
        if explicit == implicit:
            return False
        header = 12 if explicit else 8
        (length,) = struct.unpack_from("<I", data, start + header - 4)
        undefined = length == 0xFFFFFFFF
        vr = data[start + 4 : start + 6].decode() if explicit else None
        value = data[start + header : end - 8 if undefined else end]
        ds._dict[_PIXEL_TAG] = RawDataElement(_PIXEL_TAG, vr, length, value, start + header,
                                              implicit, little)
        rest = end
    if rest < len(data):
        f = io.BytesIO(data)
        f.seek(rest)
        try:
            tail = pydicom.filereader.read_dataset(f, implicit, little)
        except Exception:  # pydicom raises many kinds on bad bytes
            return False
        ds._dict.update(tail._dict)
    return True


def changed_info(info: DicomInfo, ds, data: bytes, changed: set[int]) -> DicomInfo:
    """Return the DicomInfo of `data`, the bytes written from `ds` after the
    elements `changed` (their tags) changed in it; `info` was read before."""
    values = changed_values(ds, changed)
    if values is None:
        return info_of(ds, data)
    offset, file_sha256, dataset_sha256 = _digests(data)
    return dataclasses.replace(info, **values, file_sha256=file_sha256,
                               dataset_sha256=dataset_sha256, size=len(data),
                               meta_length=offset)
