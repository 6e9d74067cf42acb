"""The one-pass header reader gives what pydicom's dcmread gives, or nothing."""

import io
import os
import struct
import warnings
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.data.data_manager import DATA_ROOT
from pydicom.dataelem import RawDataElement

from imaging import dicomio, fastheader

# The files pydicom ships (not those it would download).
FOLDERS = [Path(DATA_ROOT) / "test_files", Path(DATA_ROOT) / "charset_files"]
FILES = sorted(str(p) for folder in FOLDERS for p in folder.iterdir() if p.is_file())


def shipped(name: str) -> bytes:
    """The bytes of a file pydicom ships."""
    return next(folder / name for folder in FOLDERS if (folder / name).exists()).read_bytes()

# Explicit and implicit VR, encapsulated pixels, undefined-length sequences
# (rtplan, chrSQEncoding), character sets, two frames, a structured report.
PLAIN = ["MR_small.dcm", "MR_small_implicit.dcm", "CT_small.dcm", "rtplan.dcm",
         "JPEG2000.dcm", "chrJapMulti.dcm", "chrSQEncoding.dcm", "SC_rgb_rle_2frame.dcm",
         "test-SR.dcm", "liver_1frame.dcm"]
NOT_PLAIN = ["MR_small_bigendian.dcm", "image_dfl.dcm", "no_meta.dcm", "rtstruct.dcm",
             "nested_priv_SQ.dcm"]


def dcmread(data: bytes):
    """Return (dcmread's header of `data`, where it stopped), or None when it refuses."""
    f = io.BytesIO(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception:
            return None
    return ds, f.tell()


def same_element(a, b) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, RawDataElement):
        return tuple(a) == tuple(b)
    return (a.tag, a.VR, a.value, a.is_undefined_length, a.file_tell) == \
        (b.tag, b.VR, b.value, b.is_undefined_length, b.file_tell)


def assert_same(data: bytes) -> bool:
    """Assert that read_to_pixels reads `data` as dcmread does, where it reads
    it at all; return whether it did."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = fastheader.read_to_pixels(data)
    if fast is None:
        return False
    expected = dcmread(data)
    assert expected is not None, "read a file dcmread refuses"
    (ds, stop), (fds, fstop) = expected, fast
    assert fstop == stop
    for got, want in ((fds, ds), (fds.file_meta, ds.file_meta)):
        assert list(got._dict) == list(want._dict)
        for tag in want._dict:
            assert same_element(got._dict[tag], want._dict[tag]), tag
        assert got.original_encoding == want.original_encoding
    assert fds.original_character_set == ds.original_character_set
    assert fds._character_set == ds._character_set
    assert (fds.preamble, fds.is_implicit_VR, fds.is_little_endian, fds.filename) == \
        (ds.preamble, ds.is_implicit_VR, ds.is_little_endian, ds.filename)
    return True


@pytest.mark.parametrize("path", FILES, ids=os.path.basename)
def test_every_file_pydicom_ships_is_read_as_dcmread_reads_it_or_left_to_it(path):
    with open(path, "rb") as f:
        assert_same(f.read())


@pytest.mark.parametrize("name", PLAIN)
def test_plain_files_are_read_in_one_pass(name):
    assert assert_same(shipped(name))


@pytest.mark.parametrize("name", NOT_PLAIN)
def test_files_that_are_not_plain_are_left_to_dcmread(name):
    # Big endian, deflated, without file meta, or with a private sequence of
    # undefined length in implicit VR (dcmread looks ahead to tell its VR).
    assert fastheader.read_to_pixels(shipped(name)) is None


def test_an_implicit_vr_file_is_read_with_its_vrs_left_to_pydicom():
    ds, _ = fastheader.read_to_pixels(shipped("rtplan.dcm"))
    assert ds.is_implicit_VR
    raw = [e for e in ds._dict.values() if isinstance(e, RawDataElement)]
    assert raw and all(e.VR is None for e in raw)
    assert ds.BeamSequence[0].BeamName  # its sequences read by pydicom's reader


def _element(group: int, number: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH2s2xI", group, number, vr, len(value)) + value
    return struct.pack("<HH2sH", group, number, vr, len(value)) + value


@pytest.mark.parametrize("case", ["out of order", "unknown VR", "cut short", "trailing bytes",
                                  "command group", "delimiter"])
def test_unusual_layouts_are_left_to_dcmread(case):
    data = shipped("MR_small.dcm")
    start = dicomio.dataset_offset(data)
    head, body = data[:start], data[start:]
    if case == "out of order":
        body = _element(0x0010, 0x0010, b"PN", b"LATE") + body
        body = _element(0x0010, 0x0020, b"LO", b"ID") + body
    elif case == "unknown VR":
        body = _element(0x0008, 0x0001, b"QQ", b"XX") + body
    elif case == "cut short":
        body = body[:101]  # inside an element of the header
    elif case == "trailing bytes":
        ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
        del ds.PixelData
        buffer = io.BytesIO()
        ds.save_as(buffer)
        data = buffer.getvalue() + b"\x01\x02\x03"
        assert fastheader.read_to_pixels(data) is None
        return
    elif case == "command group":
        body = struct.pack("<HH2sH", 0, 0x0100, b"US", 2) + b"\x01\x00" + body
    elif case == "delimiter":
        body = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + body
    assert fastheader.read_to_pixels(head + body) is None


def test_read_header_refuses_a_plain_file_cut_short_in_its_pixels():
    data = shipped("MR_small.dcm")[:-300]  # its pixel data ends 138 bytes before its end
    assert fastheader.read_to_pixels(data) is not None
    with pytest.raises(dicomio.NotDicom, match="pixel data is incomplete"):
        dicomio.read_header(data)


SOURCES = {name: shipped(name)
           for name in ("MR_small.dcm", "CT_small.dcm", "rtplan.dcm", "chrSQEncoding.dcm")}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(SOURCES)), st.lists(st.tuples(
    st.integers(min_value=128, max_value=3000), st.integers(min_value=0, max_value=255)),
    min_size=1, max_size=6), st.one_of(st.none(), st.integers(min_value=132, max_value=4000)))
def test_damaged_headers_are_read_as_dcmread_reads_them_or_left_to_it(name, changes, cut):
    data = bytearray(SOURCES[name])
    for where, byte in changes:
        if where < len(data):
            data[where] = byte
    if cut is not None:
        del data[cut:]
    assert_same(bytes(data))
