"""Reading DICOM headers: values, hashes and refusing what is not DICOM."""

import datetime
import hashlib
import io
import json
import os
import struct
import warnings
import zipfile

import pydicom
import pytest
from pydicom.data import get_testdata_file

from imaging import dicominfo, dicomio
from imaging.dicomio import DicomInfo, NotDicom, dataset_offset, read_dicom

MR = get_testdata_file("MR_small.dcm")
CT = get_testdata_file("CT_small.dcm")
J2K = get_testdata_file("JPEG2000.dcm")
RTPLAN = get_testdata_file("rtplan.dcm")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(path, data: bytes):
    path.write_bytes(data)
    return path


def save(ds, path, **kwargs):
    """Save `ds` quietly (test datasets may hold values pydicom warns about)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(path, **kwargs)
    return path


def read_quietly(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_dicom(path)


def test_an_mr_file_gives_its_header_values():
    info = read_dicom(MR)
    assert info.study_uid == "1.3.6.1.4.1.5962.1.2.4.20040826185059.5457"
    assert info.series_uid == "1.3.6.1.4.1.5962.1.3.4.1.20040826185059.5457"
    assert info.sop_uid == "1.3.6.1.4.1.5962.1.1.4.1.1.20040826185059.5457"
    assert info.sop_class_uid == "1.2.840.10008.5.1.4.1.1.4"
    assert info.transfer_syntax == "1.2.840.10008.1.2.1"
    assert (info.modality, info.series_number, info.instance_number) == ("MR", "1", 1)
    assert info.study_date == datetime.date(2004, 8, 26)
    assert info.study_time == "185059"
    assert info.patient_name == "CompressedSamples^MR1"
    assert info.patient_id == "4MR1"
    assert (info.manufacturer, info.model) == ("TOSHIBA_MEC", "MRT50H1")
    assert (info.repetition_time, info.echo_time, info.flip_angle) == (4000.0, 240.0, 90.0)
    assert info.series_description is None and info.accession_number is None


def test_hashes_cover_the_whole_file_and_the_dataset_after_the_meta():
    data = open(MR, "rb").read()
    info = read_dicom(MR)
    assert info.size == len(data)
    assert info.meta_length == 132 + 12 + 190  # preamble, DICM, group length element + group
    assert info.file_sha256 == sha256(data)
    assert info.dataset_sha256 == sha256(data[info.meta_length :])


@pytest.mark.parametrize("changes", [
    {}, {"patient_name": "S01", "file_sha256": "0" * 64},
    {"study_date": "2024-02-29", "series_number": 7}, {"study_date": None, "unknown": 1}])
def test_updated_applies_changes_written_as_to_json_writes_them(changes):
    info = read_dicom(get_testdata_file("MR_small.dcm"))
    assert info.updated(changes) == DicomInfo.from_json({**info.to_json(), **changes})


def test_a_ct_file_is_read():
    info = read_dicom(CT)
    assert info.modality == "CT"
    assert info.repetition_time is None
    assert info.study_date == datetime.date(2004, 1, 19)


def test_a_compressed_file_reports_its_transfer_syntax():
    info = read_dicom(J2K)
    assert info.transfer_syntax == "1.2.840.10008.1.2.4.91"
    assert info.study_uid


def test_an_implicit_vr_file_is_read():
    info = read_dicom(RTPLAN)
    assert info.transfer_syntax == "1.2.840.10008.1.2"
    assert info.modality == "RTPLAN"


@pytest.mark.parametrize(
    ("implicit", "syntax"), [(False, "1.2.840.10008.1.2.1"), (True, "1.2.840.10008.1.2")]
)
def test_a_file_without_preamble_or_file_meta_is_read(tmp_path, implicit, syntax):
    ds = pydicom.dcmread(MR)
    del ds.file_meta
    ds.preamble = None
    path = save(
        ds,
        tmp_path / "bare.dcm",
        implicit_vr=implicit,
        little_endian=True,
        enforce_file_format=False,
    )
    assert path.read_bytes()[:2] == b"\x08\x00"
    info = read_dicom(path)
    assert info.meta_length == 0
    assert info.dataset_sha256 == info.file_sha256
    assert info.transfer_syntax == syntax
    assert info.sop_uid == read_dicom(MR).sop_uid


def test_the_same_dataset_under_two_file_metas_has_one_dataset_hash(tmp_path):
    first = pydicom.dcmread(MR)
    second = pydicom.dcmread(MR)
    first.file_meta.SourceApplicationEntityTitle = "SCANNER"
    second.file_meta.SourceApplicationEntityTitle = "A_MUCH_LONGER_AE"
    a = read_dicom(save(first, tmp_path / "a.dcm"))
    b = read_dicom(save(second, tmp_path / "b.dcm"))
    assert a.file_sha256 != b.file_sha256
    assert a.meta_length != b.meta_length
    assert a.dataset_sha256 == b.dataset_sha256 == read_dicom(MR).dataset_sha256


def test_dataset_offset_walks_the_meta_when_its_group_length_is_missing():
    data = open(MR, "rb").read()
    without_length = data[:132] + data[144:]  # drop (0002,0000)
    assert dataset_offset(without_length) == 334 - 12


def test_dataset_offset_walks_the_meta_when_its_group_length_is_wrong():
    data = bytearray(open(MR, "rb").read())
    data[140:144] = struct.pack("<I", 150)
    assert dataset_offset(bytes(data)) == 334


def test_dataset_offset_is_zero_without_file_meta():
    assert dataset_offset(b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100") == 0
    assert dataset_offset(b"") == 0


def test_a_file_whose_meta_has_no_group_length_is_read(tmp_path):
    data = open(MR, "rb").read()
    info = read_dicom(write(tmp_path / "x.dcm", data[:132] + data[144:]))
    assert info.dataset_sha256 == read_dicom(MR).dataset_sha256


def test_unreadable_values_become_none(tmp_path):
    ds = pydicom.dcmread(MR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the bad date, as it should
        ds.StudyDate = "20041399"
    ds.add_new(0x00180080, "LO", "fast")  # RepetitionTime that is not a number
    ds.add_new(0x00200013, "LO", "first")  # InstanceNumber
    ds.add_new(0x00181314, "LO", "nan")  # FlipAngle
    info = read_quietly(save(ds, tmp_path / "odd.dcm"))
    assert info.study_date is None
    assert info.repetition_time is None
    assert info.instance_number is None
    assert info.flip_angle is None


def test_multi_valued_and_padded_values_are_read(tmp_path):
    ds = pydicom.dcmread(MR)
    ds.EchoTime = ["12.5", "25"]
    ds.SeriesDescription = "  T1 MPRAGE  "
    ds.PatientName = "DOE^JOHN"
    info = read_dicom(save(ds, tmp_path / "x.dcm"))
    assert info.echo_time == 12.5
    assert info.series_description == "T1 MPRAGE"
    assert info.patient_name == "DOE^JOHN"


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID"])
def test_a_file_without_study_or_series_uid_is_not_accepted(tmp_path, keyword):
    ds = pydicom.dcmread(MR)
    delattr(ds, keyword)
    with pytest.raises(NotDicom, match=f"missing {keyword}"):
        read_dicom(save(ds, tmp_path / "x.dcm"))


def _huge_length(data: bytes) -> bytes:
    """MR_small with the length of its StudyDate element set far beyond the file."""
    data = bytearray(data)
    at = data.find(b"\x08\x00\x20\x00DA")
    data[at + 6 : at + 8] = b"\xff\xff"
    return bytes(data)


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("a.dcm", open(MR, "rb").read())
    return buffer.getvalue()


MR_BYTES = open(MR, "rb").read()
J2K_BYTES = open(J2K, "rb").read()
NOT_DICOM = {
    "empty": b"",
    "text": b"Patient notes, not an image.\n" * 40,
    "junk": os.urandom(8192),
    "zip": _zip_bytes(),
    "only the marker": b"\0" * 128 + b"DICM",
    "meta cut short": MR_BYTES[:200],
    "header cut short": MR_BYTES[:400],
    "pixels cut short": MR_BYTES[:5000],
    "compressed pixels cut short": J2K_BYTES[:3100],
    "pixel element header cut short": J2K_BYTES[:3032],
    "huge element length": _huge_length(MR_BYTES),
    "implicit element with a huge length": b"\x08\x00\x20\x00\xf0\xff\xff\x7f2020",
    "group 0008 then junk": b"\x08\x00\x05\x00" + os.urandom(3000),
}


@pytest.mark.parametrize("name", NOT_DICOM)
def test_what_is_not_dicom_raises_not_dicom_only(tmp_path, name):
    path = write(tmp_path / "file.dcm", NOT_DICOM[name])
    with pytest.raises(NotDicom) as caught:
        read_quietly(path)
    assert str(caught.value)


def test_junk_without_a_dicom_start_is_refused_before_parsing(tmp_path):
    with pytest.raises(NotDicom) as caught:
        read_dicom(write(tmp_path / "x.dcm", b"GIF89a" + os.urandom(100)))
    assert str(caught.value) == "not a DICOM file (no DICM marker and no valid group 0008 start)"


@pytest.mark.parametrize("source", [MR, J2K, RTPLAN])
def test_large_files_are_read_in_chunks_with_the_same_result(monkeypatch, source):
    whole = read_dicom(source)
    monkeypatch.setattr(dicomio, "WHOLE_READ_LIMIT", 0)
    assert read_dicom(source) == whole


def test_large_files_cut_short_are_refused_too(tmp_path, monkeypatch):
    monkeypatch.setattr(dicomio, "WHOLE_READ_LIMIT", 0)
    with pytest.raises(NotDicom, match="truncated"):
        read_dicom(write(tmp_path / "x.dcm", MR_BYTES[:5000]))


def test_info_round_trips_through_json():
    info = read_dicom(MR)
    data = json.loads(json.dumps(info.to_json()))
    assert data["study_date"] == "2004-08-26"
    assert DicomInfo.from_json(data) == info


def test_info_without_a_date_round_trips_through_json():
    info = read_dicom(MR)
    info.study_date = None
    assert DicomInfo.from_json(info.to_json()) == info


def test_scan_fields_describe_the_scan():
    fields = read_dicom(MR).scan_fields()
    assert fields == {
        "series_description": None,
        "modality": "MR",
        "series_uid": "1.3.6.1.4.1.5962.1.3.4.1.20040826185059.5457",
        "manufacturer": "TOSHIBA_MEC",
        "model": "MRT50H1",
        "repetition_time": 4000.0,
        "echo_time": 240.0,
        "flip_angle": 90.0,
    }
    json.dumps(fields)


_TEXT_FIELDS = {"PN": "PatientName", "LO": "PatientID", "SH": "AccessionNumber",
                "LT": "PatientComments", "ST": "InstitutionAddress", "UT": "TextValue",
                "UC": "StrainAdditionalInformation", "IS": "InstanceNumber",
                "DS": "RepetitionTime"}
_TEXTS = sorted(set(_TEXT_FIELDS) - {"IS", "DS"})


def _text_both_ways(monkeypatch, vr: str, raw: bytes, charset: str | None):
    """Return dicominfo.text of a raw element read quickly and as pydicom reads it."""
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import RawDataElement

    keyword = _TEXT_FIELDS[vr]
    tag = tag_for_keyword(keyword)

    def dataset():
        ds = pydicom.Dataset()
        if charset is not None:
            ds.SpecificCharacterSet = charset
        ds._dict[tag] = RawDataElement(pydicom.tag.Tag(tag), vr, len(raw), raw, 0, False, True)
        return ds

    with warnings.catch_warnings():  # pydicom's, on the malformed values given it
        warnings.simplefilter("ignore")
        quick = dicominfo.text(dataset(), keyword)
        with monkeypatch.context() as m:
            m.setattr(dicominfo, "_ASCII_TEXT_VRS", {})
            m.setattr(dicominfo, "_PLAIN_NUMBERS", {})
            slow = dicominfo.text(dataset(), keyword)
    return quick, slow


@pytest.mark.parametrize("charset", [None, "ISO_IR 100", "ISO_IR 192", "ISO 2022 IR 87",
                                     "ISO_IR 13", "GB18030", "ISO_IR 144"])
@pytest.mark.parametrize("vr", _TEXTS)
def test_text_read_without_pydicom_is_the_text_pydicom_gives(monkeypatch, vr, charset):
    samples = [b"", b" ", b"\x00", b"DOE^JOHN ", b"A \\B ", b" A\\\\ B\x00", b"\\", b"A^B==",
               b"Caf\xe9", b"\x1b$B", b"line1\r\nline2  ", b"x" * 70 + b"\\ y", b"  \\  "]
    for raw in samples:
        quick, slow = _text_both_ways(monkeypatch, vr, raw, charset)
        assert quick == slow, (vr, charset, raw)


def test_text_read_without_pydicom_matches_pydicom_on_any_ascii(monkeypatch):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from(_TEXTS),
           st.lists(st.sampled_from(list(b"AZaz09^=\\ \x00.-_\t")), max_size=40).map(bytes))
    def check(vr, raw):
        quick, slow = _text_both_ways(monkeypatch, vr, raw, None)
        assert quick == slow

    check()


@pytest.mark.parametrize("vr", ["IS", "DS"])
def test_a_number_read_without_pydicom_is_the_text_pydicom_gives(monkeypatch, vr):
    samples = [b"12", b"0012", b"+12 ", b" -0", b"1.50", b"1e3 ", b"1E+03", b".5", b"5.",
               b"-.0", b"1e400", b"9" * 12, b"9" * 16, b"9" * 17 + b" ", b"1.5\\2 ", b"12\x00",
               b"", b"  ", b"1 2 ", b"0x10", b"nan ", b"inf ", b"1.5.", b"--1", b"e5"]
    for raw in samples:
        quick, slow = _text_both_ways(monkeypatch, vr, raw, None)
        assert quick == slow, (vr, raw)


def test_a_number_read_without_pydicom_matches_pydicom_on_any_digits(monkeypatch):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=400, deadline=None)
    @given(st.sampled_from(["IS", "DS"]),
           st.lists(st.sampled_from(list(b"0123456789+-.eE \\\x00")), max_size=18).map(bytes))
    def check(vr, raw):
        quick, slow = _text_both_ways(monkeypatch, vr, raw, None)
        assert quick == slow

    check()
