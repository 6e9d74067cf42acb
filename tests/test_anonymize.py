"""Anonymization scripts on pydicom's test files: the rule language, the
PS3.15 basic profile and its options, consistent UIDs, atomic rewrites."""
from __future__ import annotations

import copy
import datetime as dt
import shutil

import pydicom
import pytest
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from imaging import dicomio
from imaging.anonymize import (
    DEFAULT_SITE_SCRIPT,
    ScriptError,
    ScriptRejected,
    anonymize_file,
    anonymize_in_place,
    apply_script,
    parse_script,
)
from imaging.deid_profile import OPTIONS, build_table
from tests.dicomgen import make_series, write_files

SECRET = b"site-secret-for-tests"
VARIABLES = {"project": "STUDY1", "subject": "SUBJ01", "session": "SUBJ01_MR1", "scan": "1"}
PROFILE_FILES = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "rtstruct.dcm", "test-SR.dcm",
                 "JPEG2000.dcm", "nested_priv_SQ.dcm"]


def copy_testfile(tmp_path, name: str):
    target = tmp_path / name
    shutil.copy(get_testdata_file(name), target)
    return target


def read(name: str) -> Dataset:
    return pydicom.dcmread(get_testdata_file(name), force=True)


def walk(ds: Dataset):
    """Yield every element of `ds` at every depth."""
    for elem in ds:
        yield elem
        if elem.VR == "SQ":
            for item in elem.value:
                yield from walk(item)


def uid_values(ds: Dataset) -> set[str]:
    values = set()
    for elem in walk(ds):
        if elem.VR == "UI":
            values.update(str(v) for v in (elem.value if elem.VM > 1 else [elem.value]) if v)
    return values


# --- the language -------------------------------------------------------------

def test_project_script_removes_birth_date_and_names_the_patient_by_subject(tmp_path):
    path = copy_testfile(tmp_path, "MR_small.dcm")
    before = pydicom.dcmread(path)
    script = parse_script("// project script\n-(0010,0030)\nPatientName := subject\n")

    changes = anonymize_file(path, script, VARIABLES, SECRET)

    after = pydicom.dcmread(path)
    assert "PatientBirthDate" not in after
    assert after.PatientName == "SUBJ01"
    assert after.PatientID == before.PatientID and after.StudyDate == before.StudyDate
    assert any("PatientBirthDate" in c and "removed" in c for c in changes)
    assert after.file_meta.TransferSyntaxUID == before.file_meta.TransferSyntaxUID
    assert after.PixelData == before.PixelData


@pytest.mark.parametrize("name", ["SC_rgb_jpeg_dcmtk.dcm", "JPEG2000.dcm", "MR_small_bigendian.dcm",
                                  "image_dfl.dcm", "MR_small_RLE.dcm"])
def test_rewriting_keeps_transfer_syntax_and_pixel_bytes(tmp_path, name):
    path = copy_testfile(tmp_path, name)
    before = pydicom.dcmread(path)

    script = parse_script("remove PatientBirthDate\nPatientName := subject")
    anonymize_file(path, script, VARIABLES, SECRET)

    after = pydicom.dcmread(path)
    assert after.file_meta.TransferSyntaxUID == before.file_meta.TransferSyntaxUID
    assert after.PixelData == before.PixelData
    assert after.PatientName == "SUBJ01"
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_default_site_script_puts_project_subject_and_session_where_xnat_does():
    ds = read("CT_small.dcm")
    apply_script(parse_script(DEFAULT_SITE_SCRIPT), ds, VARIABLES, SECRET)
    assert (ds.StudyDescription, ds.PatientName, ds.PatientID) == ("STUDY1", "SUBJ01", "SUBJ01_MR1")


def test_a_variable_without_value_leaves_its_attribute_unchanged():
    ds = read("CT_small.dcm")
    description = ds.StudyDescription
    no_project = {**VARIABLES, "project": None}
    changes = apply_script(parse_script(DEFAULT_SITE_SCRIPT), ds, no_project, SECRET)
    assert ds.StudyDescription == description
    assert any("no project" in c for c in changes)


def test_texts_take_variables_in_braces_and_blank_keeps_an_empty_attribute():
    ds = read("MR_small.dcm")
    script = parse_script('PatientID := "{project}_{subject}"  # comment\n'
                          'StudyDescription := "a # b {{x}}"\nblank (0008,0090)\nblank StationName')
    apply_script(script, ds, VARIABLES, SECRET)
    assert ds.PatientID == "STUDY1_SUBJ01"
    assert ds.StudyDescription == "a # b {x}"
    assert ds["ReferringPhysicianName"].is_empty and ds["StationName"].is_empty


@pytest.mark.parametrize("text, line, words", [
    ("PatientName := subject\nPatientNme := \"x\"", 2, "unknown DICOM keyword 'PatientNme'"),
    ("// header\n\nPatientName := subjet", 3, "unknown variable 'subjet'"),
    ("-(0010,0030)\nremove\n", 2, "not a statement"),
    ("Modality := \"mr\"", 1, "not a valid value for Modality"),
    ("Rows := \"12\"", 1, "only text attributes"),
    ("PatientName := \"unterminated", 1, "double quotes"),
    ("basic-profile retain-everything", 1, "unknown basic-profile option 'retain-everything'"),
    ("(0002,0010) := \"1.2\"", 1, "file meta"),
    ("-(7FE0,0010)", 1, "pixel data"),
    ("reject if Modality ~ \"(\"", 1, "invalid regular expression"),
    ("PatientName := \"{subjct}\"", 1, "unknown variable {subjct}"),
    ("shift dates 99999", 1, "from 1 to"),
])
def test_a_script_with_a_mistake_is_refused_naming_its_line(text, line, words):
    with pytest.raises(ScriptError) as info:
        parse_script(text)
    assert info.value.line == line
    assert str(info.value).startswith(f"line {line}: ")
    assert words in str(info.value)


def test_reject_refuses_a_file_and_anonymize_file_leaves_it_untouched(tmp_path):
    path = copy_testfile(tmp_path, "CT_small.dcm")
    original = path.read_bytes()
    script = parse_script('PatientName := subject\nreject if Modality = "CT"\n')
    with pytest.raises(ScriptRejected) as info:
        anonymize_file(path, script, VARIABLES, SECRET)
    assert "line 2" in info.value.reason and 'Modality = "CT"' in info.value.reason
    assert path.read_bytes() == original


def test_reject_conditions_present_missing_and_pattern():
    ds = read("MR_small.dcm")
    for text in ("reject if PatientName present", "reject if BurnedInAnnotation missing",
                 'reject if Modality ~ "^M"', 'reject if Modality != "CT"'):
        with pytest.raises(ScriptRejected):
            apply_script(parse_script(text), ds, VARIABLES, SECRET)
    for text in ("reject if BurnedInAnnotation present", 'reject if Modality = "CT"',
                 'reject if Modality ~ "^C"'):
        assert apply_script(parse_script(text), ds, VARIABLES, SECRET) == []


def test_a_value_the_file_cannot_take_rejects_the_file():
    ds = read("MR_small.dcm")
    with pytest.raises(ScriptRejected, match="line 1"):
        apply_script(parse_script("PatientName := subject"), ds, {"subject": "x" * 80}, SECRET)


@pytest.mark.parametrize("name", PROFILE_FILES)
@pytest.mark.parametrize("text", [DEFAULT_SITE_SCRIPT,
                                  "replace uids\nshift dates\nPatientName := subject",
                                  'reject if Modality = "CT"\nPatientID := "{project}_{subject}"'])
def test_in_place_the_header_is_read_once_with_anonymize_files_outcome(tmp_path, name, text):
    script = parse_script(text)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    by_file, in_place = copy_testfile(tmp_path / "a", name), copy_testfile(tmp_path / "b", name)
    outcomes = []
    for run in (lambda: (anonymize_file(by_file, script, VARIABLES, SECRET),
                         dicomio.read_dicom(by_file)),
                lambda: anonymize_in_place(in_place, script, VARIABLES, SECRET)):
        try:
            outcomes.append(run())
        except ScriptRejected as exc:
            outcomes.append(exc.reason)
        except dicomio.NotDicom as exc:  # no study UID: the build never keeps such a file
            outcomes.append(str(exc))
    assert outcomes[0] == outcomes[1]
    assert by_file.read_bytes() == in_place.read_bytes()


def test_applying_a_script_twice_changes_nothing_more(tmp_path):
    path = copy_testfile(tmp_path, "CT_small.dcm")
    script = parse_script("replace uids\nshift dates\nPatientName := subject")
    assert anonymize_file(path, script, VARIABLES, SECRET)
    once = path.read_bytes()
    assert anonymize_file(path, script, VARIABLES, SECRET) == []
    assert path.read_bytes() == once


def test_keep_exempts_an_attribute_from_later_removals_and_the_profile():
    ds = read("CT_small.dcm")
    script = parse_script("keep PatientAge\nkeep (0010,0030)\nremove PatientAge\nbasic-profile\n")
    changes = apply_script(script, ds, VARIABLES, SECRET)
    assert ds.PatientAge == read("CT_small.dcm").PatientAge
    assert ds.PatientBirthDate == read("CT_small.dcm").PatientBirthDate
    assert any("kept (line 1)" in c for c in changes)


def test_remove_private_removes_private_attributes_at_every_depth():
    ds = read("nested_priv_SQ.dcm")
    assert any(e.tag.is_private for e in walk(ds))
    apply_script(parse_script("remove private"), ds, VARIABLES, SECRET)
    assert not any(e.tag.is_private for e in walk(ds))


# --- UIDs and dates ------------------------------------------------------------

def make_study_with_reference(folder):
    """Write a 3-image CT series and a derived image that references two of them."""
    study_uid = generate_uid()
    ct = write_files(folder, make_series(study_uid, 3, template="CT_small.dcm"), prefix="ct")
    sources = [pydicom.dcmread(p) for p in ct[:2]]
    derived = read("MR_small.dcm")
    derived.StudyInstanceUID = study_uid
    derived.SeriesInstanceUID = generate_uid()
    derived.SOPInstanceUID = derived.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    derived.FrameOfReferenceUID = sources[0].FrameOfReferenceUID
    items = []
    for source in sources:
        item = Dataset()
        item.ReferencedSOPClassUID = source.SOPClassUID
        item.ReferencedSOPInstanceUID = source.SOPInstanceUID
        items.append(item)
    derived.SourceImageSequence = items
    path = folder / "derived.dcm"
    derived.save_as(path, enforce_file_format=True)
    return [*ct, path]


def anonymize_folder(paths, text, secret=SECRET):
    script = parse_script(text)
    for path in paths:
        anonymize_file(path, script, VARIABLES, secret)
    return [pydicom.dcmread(p) for p in paths]


@pytest.mark.parametrize("text", ["basic-profile", "replace uids"])
def test_uids_are_replaced_consistently_within_a_study(tmp_path, text):
    paths = make_study_with_reference(tmp_path / "a")
    before = [pydicom.dcmread(p) for p in paths]
    after = anonymize_folder(paths, text)

    old_uids = set().union(*(uid_values(ds) for ds in before)) - {ds.SOPClassUID for ds in before}
    for ds in after:
        assert not (uid_values(ds) & old_uids), "an original UID is left"
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.SOPClassUID == before[after.index(ds)].SOPClassUID
    assert len({ds.StudyInstanceUID for ds in after}) == 1
    assert len({ds.SeriesInstanceUID for ds in after[:3]}) == 1
    derived = after[3]
    assert [i.ReferencedSOPInstanceUID for i in derived.SourceImageSequence] == \
        [ds.SOPInstanceUID for ds in after[:2]]
    assert derived.FrameOfReferenceUID == after[0].FrameOfReferenceUID


def test_a_second_upload_of_a_study_gets_the_same_new_uids_and_another_secret_others(tmp_path):
    first = make_study_with_reference(tmp_path / "first")
    second = tmp_path / "second"
    shutil.copytree(tmp_path / "first", second)
    third = tmp_path / "third"
    shutil.copytree(tmp_path / "first", third)
    one = anonymize_folder(first, "basic-profile")
    two = anonymize_folder(sorted(second.iterdir()), "basic-profile")
    other = anonymize_folder(sorted(third.iterdir()), "basic-profile", secret=b"another site")
    by_name = {p.name: ds.SOPInstanceUID for p, ds in zip(first, one, strict=True)}
    again = zip(sorted(second.iterdir()), two, strict=True)
    assert {p.name: ds.SOPInstanceUID for p, ds in again} == by_name
    assert not {ds.SOPInstanceUID for ds in other} & set(by_name.values())


def days_between(later: str, earlier: str) -> int:
    def parse(text):
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    return (parse(later) - parse(earlier)).days


def test_shift_dates_moves_a_subjects_dates_by_the_same_days_within_the_range():
    ct, mr = read("CT_small.dcm"), read("MR_small.dcm")
    ct.PatientBirthDate = "19700215"
    ct.AcquisitionDateTime = "20040119072731.5+0100"
    a, b = copy.deepcopy(ct), copy.deepcopy(mr)
    apply_script(parse_script("shift dates 30"), a, VARIABLES, SECRET)
    apply_script(parse_script("shift dates 30"), b, VARIABLES, SECRET)

    days = days_between(a.StudyDate, ct.StudyDate)
    assert -30 <= days <= -1
    assert days_between(a.PatientBirthDate, ct.PatientBirthDate) == days
    assert days_between(a.AcquisitionDateTime, ct.AcquisitionDateTime) == days
    assert a.AcquisitionDateTime[8:] == ct.AcquisitionDateTime[8:]
    assert days_between(b.StudyDate, mr.StudyDate) == days
    assert a.StudyTime == ct.StudyTime
    assert a.LongitudinalTemporalInformationModified == "MODIFIED"


# --- the PS3.15 basic profile ---------------------------------------------------

@pytest.mark.parametrize("name", PROFILE_FILES)
def test_basic_profile_removes_what_the_standard_removes(name):
    ds = read(name)
    table = build_table()
    removed = {e.tag for e in walk(ds) if table.action(e.tag) == "X"}

    apply_script(parse_script("basic-profile"), ds, VARIABLES, SECRET)

    tags_after = {e.tag for e in walk(ds)}
    assert not (removed & tags_after)
    assert not any(e.tag.is_private for e in walk(ds))
    for elem in walk(ds):
        if table.action(elem.tag) == "Z":
            assert elem.is_empty, elem
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert "Basic Application Confidentiality Profile" in ds.DeidentificationMethod
    assert ds.LongitudinalTemporalInformationModified == "REMOVED"


def test_basic_profile_takes_its_table_from_the_maintained_library():
    table = build_table()
    assert table.action(0x00100030) == "Z"   # Patient's Birth Date
    assert table.action(0x00101040) == "X"   # Patient's Address
    assert table.action(0x00080018) == "U"   # SOP Instance UID
    assert table.action(0x60003000) == "X"   # Overlay Data, repeating group
    assert table.action(0x00190010) == "X"   # private
    assert table.action(0x00280010) == "K"   # Rows: not listed


def test_basic_profile_then_a_set_names_the_patient_and_blanks_dates():
    ds = read("CT_small.dcm")
    apply_script(parse_script("basic-profile\nPatientName := subject"), ds, VARIABLES, SECRET)
    assert ds.PatientName == "SUBJ01"
    assert ds["StudyDate"].is_empty and ds["PatientBirthDate"].is_empty
    assert "StudyDescription" not in ds and "PatientAge" not in ds


@pytest.mark.parametrize("option, keywords", [
    ("retain-longitudinal-dates", ["StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"]),
    ("retain-patient-characteristics", ["PatientSex", "PatientAge", "PatientWeight"]),
    ("retain-device-identity", ["StationName"]),
    ("retain-uids", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                     "FrameOfReferenceUID"]),
    ("clean-descriptors", ["StudyDescription", "SeriesDescription"]),
])
def test_each_profile_option_keeps_what_the_standard_says(option, keywords):
    original = read("CT_small.dcm")
    original.SeriesDescription = "T1 axial"
    ds = copy.deepcopy(original)
    apply_script(parse_script(f"basic-profile {option}"), ds, VARIABLES, SECRET)
    for keyword in keywords:
        assert ds[keyword].value == original[keyword].value, keyword
    codes = [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]
    assert codes == ["113100", OPTIONS[option][0]]
    plain = copy.deepcopy(original)
    apply_script(parse_script("basic-profile"), plain, VARIABLES, SECRET)
    assert any(keyword not in plain or plain[keyword].value != original[keyword].value
               for keyword in keywords)


def test_retain_modified_dates_shifts_dates_by_the_subjects_offset():
    ds, by_statement = read("CT_small.dcm"), read("CT_small.dcm")
    apply_script(parse_script("basic-profile retain-modified-dates"), ds, VARIABLES, SECRET)
    apply_script(parse_script("shift dates"), by_statement, VARIABLES, SECRET)
    assert ds.StudyDate == by_statement.StudyDate != read("CT_small.dcm").StudyDate
    assert ds.LongitudinalTemporalInformationModified == "MODIFIED"


def test_every_option_list_names_known_attributes():
    table = build_table(frozenset(OPTIONS) - {"retain-modified-dates"})
    assert table.action(0x00080020) == "K"  # Study Date, kept with full dates
