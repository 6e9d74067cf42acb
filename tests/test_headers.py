"""Header dumps and DICOM JSON of pydicom's test files."""
from __future__ import annotations

import json
import shutil

import pydicom
from pydicom.data import get_testdata_file

from imaging.anonymize import apply_script, parse_script
from imaging.headers import MAX_VALUE, diff, dump, read_header, to_dicom_json

SCRIPT_NAME = "<script>alert('x')</script>^Evil"


def rows_by_keyword(rows):
    return {row["keyword"]: row for row in rows if row["keyword"]}


def test_dump_returns_markup_in_a_header_unchanged_as_data(tmp_path):
    path = tmp_path / "evil.dcm"
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.PatientName = SCRIPT_NAME
    ds.save_as(path, enforce_file_format=True)

    rows = rows_by_keyword(dump(read_header(path)))

    assert rows["PatientName"]["value"] == SCRIPT_NAME
    assert rows["PatientName"] == {"tag": "(0010,0010)", "vr": "PN", "keyword": "PatientName",
                                   "name": "Patient's Name", "value": SCRIPT_NAME, "depth": 0,
                                   "path": "(0010,0010)"}


def test_dump_lists_file_meta_first_and_shows_no_pixel_data():
    rows = dump(pydicom.dcmread(get_testdata_file("CT_small.dcm")))
    assert rows[0]["tag"].startswith("(0002,")
    pixel = [row for row in rows if row["tag"] == "(7FE0,0010)"]
    assert pixel and pixel[0]["value"] == "(pixel data, 32768 bytes, not shown)"
    header_only = dump(read_header(get_testdata_file("CT_small.dcm")))
    assert not [row for row in header_only if row["tag"] == "(7FE0,0010)"]


def test_dump_indents_sequence_items_under_their_sequence():
    rows = dump(pydicom.dcmread(get_testdata_file("rtplan.dcm")))
    start = next(i for i, row in enumerate(rows) if row["keyword"] == "FractionGroupSequence")
    assert rows[start]["value"] == "1 item" and rows[start]["depth"] == 0
    assert rows[start + 1]["name"] == "Item 1" and rows[start + 1]["depth"] == 1
    assert rows[start + 2]["keyword"] == "FractionGroupNumber" and rows[start + 2]["depth"] == 2
    assert max(row["depth"] for row in rows) >= 4  # a sequence inside a sequence


def test_dump_shortens_long_values_and_summarises_binary_ones():
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.ImageComments = "x" * 500
    ds.add_new(0x00291010, "OB", bytes(range(40)))
    rows = dump(ds)
    comment = next(row for row in rows if row["keyword"] == "ImageComments")
    assert len(comment["value"]) == MAX_VALUE and comment["value"].endswith("…")
    binary = next(row for row in rows if row["tag"] == "(0029,1010)")
    assert binary["value"].startswith("00 01 02 03") and binary["value"].endswith("(40 bytes)")


def test_dicom_json_leaves_out_pixel_data_and_keeps_values_as_data(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.PatientName = SCRIPT_NAME
    model = to_dicom_json(ds)
    assert "7FE00010" not in model
    assert model["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": SCRIPT_NAME}]}
    assert json.loads(json.dumps(model)) == model


def test_dicom_json_references_or_omits_large_binary_values():
    ds = pydicom.dcmread(get_testdata_file("examples_overlay.dcm"))
    referenced = to_dicom_json(ds, bulk_data_uri=lambda elem: f"bulk/{elem.tag:08X}")
    assert referenced["60003000"] == {"vr": "OW", "BulkDataURI": "bulk/60003000"}
    omitted = to_dicom_json(ds)
    assert "60003000" not in omitted and "60000010" in omitted


def test_read_header_reads_files_without_file_meta(tmp_path):
    path = tmp_path / "no_meta.dcm"
    shutil.copy(get_testdata_file("ExplVR_LitEndNoMeta.dcm"), path)
    rows = rows_by_keyword(dump(read_header(path)))
    assert "PatientName" in rows or "SOPInstanceUID" in rows


def test_diff_marks_changed_removed_and_added_rows_in_sequences_too():
    before = pydicom.dcmread(get_testdata_file("rtplan.dcm"))
    after = pydicom.dcmread(get_testdata_file("rtplan.dcm"))
    script = parse_script("-PatientBirthDate\nPatientName := subject\nreplace uids")
    apply_script(script, after, {"subject": "S01"}, b"secret")

    rows = {(row["keyword"], row["change"]) for row in diff(dump(before), dump(after))}

    assert ("PatientBirthDate", "removed") in rows
    assert ("PatientName", "changed") in rows
    assert ("DeidentificationMethod", "added") in rows
    assert ("ReferencedSOPInstanceUID", "changed") in rows  # inside a sequence
    assert ("Modality", "") in rows
