"""Reading the header of a DICOM file held in memory in one pass over its bytes.

pydicom's ``dcmread(stop_before_pixels=True)`` reads any file, in any
encoding, however damaged; for that it goes through a file object, a
generator and several checks for every element: some 10 µs an element,
most of the work of reading an upload's file. Most files are
plain: a preamble, a file meta group in explicit VR little endian, then
the dataset in explicit or implicit VR little endian, its elements in
ascending order, each of defined length or a sequence. read_to_pixels
reads those with one loop over the bytes and makes the dataset pydicom
makes: the same raw elements (tag, VR, length, value, offset), the same
file meta, preamble and encodings (a test compares the two on pydicom's
own files and on damaged ones). Sequences of undefined length are read
by pydicom's own sequence reader, as dcmread does. The dataset also
carries `read_plain`: where each element lies in the bytes, and whether
it lies there as imaging.dicomwrite would write it; the writer copies the
runs of elements still as read in one piece each.

Anything else (no preamble, big endian or deflated data, a private
transfer syntax, an unknown VR, elements out of order or cut short, an
element of undefined length that is no sequence) returns None, and the
caller reads the file with dcmread: this never decides how a file that
is not plain is read.
"""
from __future__ import annotations

import io
import struct

from pydicom import uid
from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import _dictionary_vr_fast
from pydicom.dataelem import (
    DataElement,
    RawDataElement,
    empty_value_for_VR,
)
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.filereader import ENCODED_VR, read_sequence
from pydicom.tag import BaseTag
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32
from pydicom.values import convert_string

_EXPLICIT = struct.Struct("<HH2sH").unpack_from
_IMPLICIT = struct.Struct("<HHI").unpack_from
_LENGTH = struct.Struct("<I").unpack_from
_UNDEFINED = 0xFFFFFFFF
_PIXEL_TAGS = frozenset((0x7FE00008, 0x7FE00009, 0x7FE00010))  # dcmread stops at these
_CHARSET = 0x00080005
# The VRs pydicom knows (as read, and as it names them); those with a
# 4-byte length in explicit VR.
_VRS = {code: code.decode(default_encoding) for code in ENCODED_VR}
_LONG = frozenset(code for code, vr in _VRS.items() if vr in EXPLICIT_VR_LENGTH_32)
_NOT_PLAIN = (uid.ExplicitVRBigEndian, uid.DeflatedExplicitVRLittleEndian)


class NotPlain(Exception):
    """The bytes are not a file this module reads as dcmread does."""


def read_to_pixels(data: bytes) -> tuple[FileDataset, int] | None:
    """Return (the header dcmread(stop_before_pixels=True) reads from `data`,
    where its reading stopped: the pixel data element, or the end), or None
    when the file is not a plain one (see the module's docstring)."""
    try:
        return _read(data)
    except Exception:  # NotPlain, or pydicom's own readers refusing: dcmread decides
        return None


def _read(data: bytes) -> tuple[FileDataset, int]:
    if data[128:132] != b"DICM":
        raise NotPlain
    meta_raw, pos = _elements(data, 132, implicit=False, meta=True)
    if not meta_raw or pos + 8 > len(data):
        raise NotPlain  # no file meta, or nothing after it: dcmread's edge cases
    file_meta = FileMetaDataset(meta_raw)
    file_meta.set_original_encoding(False, True, default_encoding)
    file_meta[next(iter(meta_raw))]  # dcmread converts the first element (and so may fail)
    if "FileMetaInformationGroupLength" in file_meta:
        file_meta.FileMetaInformationGroupLength  # noqa: B018 - dcmread reads it too
    syntax = file_meta.get("TransferSyntaxUID")
    if syntax is None or syntax in _NOT_PLAIN or syntax in uid.PrivateTransferSyntaxes:
        raise NotPlain
    implicit = syntax == uid.ImplicitVRLittleEndian
    # dcmread looks at the first element's VR field to tell implicit from
    # explicit; where that disagrees with the syntax, it guesses.
    first = data[pos + 4:pos + 6]
    if (not (0x40 < first[0] < 0x5B and 0x40 < first[1] < 0x5B)) != implicit \
            or data[pos:pos + 2] == b"\x00\x00":
        raise NotPlain  # disagrees, or a command set (group 0000) comes first
    where: dict = {}
    raw, stop = _elements(data, pos, implicit, where=where)
    ds = FileDataset(io.BytesIO(data), raw, data[:128], file_meta, implicit, True)
    # As dcmread: the character set read (its element converted in passing).
    ds.set_original_encoding(implicit, True, ds._character_set)
    # Each element as read here, keyed as in the dataset: (its tag as a plain
    # int, the element, where its header starts and its value ends in
    # `data`, whether those bytes are the element as a writer writes it).
    ds.read_plain = where
    return ds, stop


def _elements(data: bytes, pos: int, implicit: bool, meta: bool = False,
              where: dict | None = None) -> tuple[dict, int]:
    """Return (the elements from `pos` as dcmread holds them, keyed by tag,
    where reading stopped): at the end of group 0002 when `meta`, else at
    the pixel data or the end of `data`. `where` gets what read_plain holds."""
    out: dict = {}
    size, last = len(data), -1
    encoding = default_encoding
    vrs, long, raw_element, base_tag = _VRS, _LONG, RawDataElement, BaseTag
    while pos + 8 <= size:
        if implicit:
            group, number, length = _IMPLICIT(data, pos)
            vr, start = None, pos + 8
        else:
            group, number, code, length = _EXPLICIT(data, pos)
            if meta and group != 2:
                return out, pos  # the dataset's first element, in its own encoding
            vr = vrs.get(code)
            if vr is None:
                raise NotPlain  # dcmread would guess a VR, or implicit encoding
            start = pos + 8
            if code in long:
                if start + 4 > size:
                    raise NotPlain
                (length,) = _LENGTH(data, start)
                start += 4
        tag = group << 16 | number
        if tag in _PIXEL_TAGS and not meta:
            return out, pos
        if tag <= last or group == 0xFFFE:
            raise NotPlain  # out of order, repeated, or a delimiter out of place
        last = tag
        key = base_tag(tag)
        if length == _UNDEFINED:
            if meta or (vr if vr is not None else _dictionary_vr(tag)) != "SQ":
                raise NotPlain
            fp = io.BytesIO(data)
            fp.seek(start)
            sequence = read_sequence(fp, implicit, True, length, encoding)
            out[key] = element = DataElement(key, "SQ", sequence, start,
                                             is_undefined_length=True)
            if where is not None:  # written anew (pydicom's items), never copied
                where[key] = (tag, element, pos, fp.tell(), False)
            pos = fp.tell()
            continue
        end = start + length
        if end > size:
            raise NotPlain  # cut short: dcmread's way with it stands
        value = data[start:end] if length else empty_value_for_VR(vr, raw=True)
        if tag == _CHARSET:
            encoding = convert_encodings(convert_string(value or b"", True))
        out[key] = element = raw_element(key, vr, length, value, start, implicit, True)
        if where is not None:
            # A 4-byte length's two reserved bytes are written as zeros.
            where[key] = (tag, element, pos, end,
                          start - pos == 8 or data[pos + 6:pos + 8] == b"\0\0")
        pos = end
    if meta or pos != size:
        raise NotPlain  # ends inside an element's header
    return out, pos


def _dictionary_vr(tag: int) -> str | None:
    """The VR dcmread gives `tag` (read in implicit VR); None for a tag it
    knows only from what follows it."""
    try:
        return _dictionary_vr_fast(tag)
    except KeyError:
        return None
