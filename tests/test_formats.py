"""Format recognition by content, header summaries, pairing, and bad input."""

import gzip
import shutil
from pathlib import Path

import nibabel
import nrrd
import numpy as np
import pydicom
import pytest
from nibabel import ecat as nib_ecat
from nibabel.testing import data_path
from pydicom.data import get_testdata_file

from imaging import formats, routing
from imaging.formats import FormatError, detect, pair_files, read_header

DATA = Path(data_path)
CT = get_testdata_file("CT_small.dcm")


def copy(name: str, dest: Path) -> Path:
    shutil.copyfile(DATA / name, dest)
    return dest


def zeros_img(hdr_name: str, dest: Path, size: int | None = None) -> Path:
    """Write the .img an Analyze/NIfTI header describes (zeros), or `size` bytes."""
    img = nibabel.load(DATA / hdr_name)
    # Where nibabel itself reads the data from: nifti2.hdr says 544 bytes in.
    needed = int(img.dataobj.offset) + int(np.prod(img.shape)) * img.get_data_dtype().itemsize
    dest.write_bytes(bytes(needed if size is None else size))
    return dest


def pet_with_patient(dest: Path, name=b"DOE^JANE", pid=b"PET042",
                     description=b"Project:PETLAB") -> Path:
    img = nib_ecat.load(DATA / "tinypet.v")
    img.header["patient_name"] = name
    img.header["patient_id"] = pid
    img.header["study_description"] = description
    img.to_filename(str(dest))
    return dest


# Recognition by content -------------------------------------------------------

@pytest.mark.parametrize(("name", "fmt", "variant"), [
    ("tinypet.v", "ECAT", "MATRIX72v"),
    ("analyze.hdr", "ANALYZE", "Analyze 7.5"),
    ("anatomical.nii", "NIFTI", "NIfTI-1"),
    ("nifti1.hdr", "NIFTI", "NIfTI-1"),
    ("nifti2.hdr", "NIFTI", "NIfTI-2"),
    ("example4d.nii.gz", "NIFTI", "NIfTI-1"),
    ("example_nifti2.nii.gz", "NIFTI", "NIfTI-2"),
    ("standard.nii.gz", "NIFTI", "NIfTI-1"),
    ("test.mgz", "MGH", "MGZ"),
    ("minc1_4d.mnc", "MINC", "MINC1"),
    ("minc2_4d.mnc", "MINC", "MINC2"),
    ("phantom_EPI_asc_CLEAR_2_1.PAR", "PARREC", "PAR"),
    ("0.dcm", "DICOM", None),
])
def test_nibabel_samples_are_recognised_by_their_content(name, fmt, variant):
    info = detect(DATA / name)
    assert (info.format, info.variant) == (fmt, variant)


@pytest.mark.parametrize(("name", "wrong_name", "fmt", "compressed"), [
    ("anatomical.nii", "x.dcm", "NIFTI", False),
    ("example4d.nii.gz", "volume.dat", "NIFTI", True),
    ("tinypet.v", "pet.nii", "ECAT", False),
    ("test.mgz", "brain.txt", "MGH", True),
    ("minc2_4d.mnc", "scan.h5", "MINC", False),
])
def test_a_file_with_the_wrong_extension_is_recognised_by_content(tmp_path, name, wrong_name,
                                                                   fmt, compressed):
    info = detect(copy(name, tmp_path / wrong_name))
    assert (info.format, info.compressed) == (fmt, compressed)
    summary = read_header(tmp_path / wrong_name)
    assert summary["format"] == fmt


def test_a_dicom_named_nii_is_dicom(tmp_path):
    path = tmp_path / "x.nii"
    shutil.copyfile(CT, path)
    assert detect(path).format == "DICOM"
    assert read_header(path)["modality"] == "CT"


def test_a_siemens_ima_that_is_dicom_is_dicom(tmp_path):
    path = tmp_path / "MR.0001.0001.2024.01.15.IMA"
    shutil.copyfile(get_testdata_file("MR_small.dcm"), path)
    assert detect(path).format == "DICOM"


def test_a_dicom_without_preamble_is_dicom(tmp_path):
    ds = pydicom.dcmread(CT)
    del ds.file_meta
    ds.preamble = None
    path = tmp_path / "bare"
    ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert path.read_bytes()[:2] == b"\x08\x00"
    assert detect(path) == formats.FormatInfo("DICOM", "no preamble")


@pytest.mark.parametrize("content", [
    b"", b"subject,rt\n1,0.5\n", b"\x08\x00 not really dicom" * 20, bytes(2000),
    b"\x1f\x8b\x08\x00" + bytes(40), gzip.compress(b"just some text" * 100),
])
def test_other_content_is_not_an_imaging_format(tmp_path, content):
    path = tmp_path / "behaviour.hdr"
    path.write_bytes(content)
    assert detect(path) is None
    with pytest.raises(FormatError, match="not in an imaging format"):
        read_header(path)


def test_an_hdf5_file_that_is_not_minc_is_a_plain_file(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "physio.mnc"
    with h5py.File(path, "w") as f:
        f["pulse"] = np.arange(10)
    assert detect(path) is None


# Header summaries ---------------------------------------------------------------

def test_a_nifti_summary_gives_dimensions_voxel_size_type_and_orientation():
    summary = read_header(DATA / "anatomical.nii")
    assert summary["dimensions"] == [33, 41, 25]
    assert summary["voxel_size"] == [2.0, 2.0, 2.0]
    assert summary["data_type"] == "int16"
    assert summary["orientation"] == "LAS"
    assert summary["frames"] == 1


def test_a_4d_nifti_counts_its_frames():
    summary = read_header(DATA / "example4d.nii.gz")
    assert summary["dimensions"] == [128, 96, 24, 2]
    assert summary["frames"] == 2
    assert summary["compressed"] is True


def test_a_nifti2_summary_is_read():
    summary = read_header(DATA / "example_nifti2.nii.gz")
    assert (summary["variant"], summary["dimensions"]) == ("NIfTI-2", [32, 20, 12, 2])


def test_an_analyze_pair_is_read_with_its_image_file(tmp_path):
    hdr = copy("analyze.hdr", tmp_path / "brain.hdr")
    img = zeros_img("analyze.hdr", tmp_path / "brain.img")
    summary = read_header(hdr, img)
    assert summary["format"] == "ANALYZE"
    assert summary["dimensions"] == [91, 109, 91, 1]
    assert summary["data_type"] == "uint8"
    assert summary["orientation"] == "LAS"


@pytest.mark.parametrize(("name", "variant"), [("nifti1.hdr", "NIfTI-1"),
                                              ("nifti2.hdr", "NIfTI-2")])
def test_a_nifti_pair_is_read_with_its_image_file(tmp_path, name, variant):
    hdr = copy(name, tmp_path / "pair.hdr")
    img = zeros_img(name, tmp_path / "pair.img")
    summary = read_header(hdr, img)
    assert (summary["variant"], summary["dimensions"]) == (variant, [91, 109, 91])
    img.write_bytes(img.read_bytes()[:-1])
    with pytest.raises(FormatError, match='"pair.img" is truncated'):
        read_header(hdr, img)


def test_an_ecat_summary_gives_geometry_study_and_frames():
    summary = read_header(DATA / "tinypet.v")
    assert summary["format"] == "ECAT"
    assert summary["dimensions"] == [10, 10, 3, 1]
    assert summary["frames"] == 1
    assert summary["modality"] == "PT"
    assert summary["study_description"] == "fdg em - Iter(Brain Mode) 4 ite"
    assert summary["scan_start"] == "2010-11-18T23:56:55"
    assert summary["radiopharmaceutical"] == "FDG"
    assert summary["voxel_size"] == [2.20242, 2.20242, 3.125]


def test_an_ecat_is_routed_like_dicom_from_its_main_header(tmp_path):
    path = pet_with_patient(tmp_path / "pet.v", description=b"PETLAB")
    header = formats.ecat_identity_header(path)
    assert header == {routing.STUDY_DESCRIPTION: "PETLAB", routing.PATIENT_NAME: "DOE^JANE",
                      routing.PATIENT_ID: "PET042"}
    identity = routing.identify(header)
    assert (identity.project, identity.subject, identity.session) == (
        "PETLAB", "DOE_JANE", "PET042")
    explicit = routing.identify(header, explicit={"project": "P1", "session": "S9"})
    assert (explicit.project, explicit.subject, explicit.session) == ("P1", "DOE_JANE", "S9")
    assert read_header(path)["patient_name"] == "DOE^JANE"


def test_an_nrrd_summary_gives_geometry_in_its_space(tmp_path):
    path = tmp_path / "seg.nrrd"
    data = np.zeros((4, 5, 6), dtype=np.int16)
    nrrd.write(str(path), data, {"space": "left-posterior-superior",
                                 "space directions": np.diag([0.5, 0.75, 2.0]),
                                 "space origin": [0.0, 0.0, 0.0]})
    summary = read_header(path)
    assert detect(path).variant == "attached"
    assert summary["dimensions"] == [4, 5, 6]
    assert summary["voxel_size"] == [0.5, 0.75, 2.0]
    assert summary["data_type"] == "int16"
    assert summary["orientation"] == "LPS"


@pytest.mark.parametrize("encoding", ["raw", "gzip"])
def test_a_detached_nrrd_is_read_with_its_data_file(tmp_path, encoding):
    header = tmp_path / "vol.nhdr"
    nrrd.write(str(header), np.ones((3, 4), dtype=np.float32),
               {"encoding": encoding, "spacings": [1.5, 2.5]}, detached_header=True)
    info = detect(header)
    assert (info.format, info.variant) == ("NRRD", "detached")
    summary = read_header(header, tmp_path / info.partner)
    assert (summary["dimensions"], summary["voxel_size"]) == ([3, 4], [1.5, 2.5])


def test_mgh_minc_and_parrec_summaries_are_read():
    assert read_header(DATA / "test.mgz")["dimensions"] == [3, 4, 5, 2]
    minc = read_header(DATA / "minc2_4d.mnc")
    assert (minc["dimensions"], minc["frames"], minc["voxel_size"]) == (
        [2, 10, 20, 20], 2, [2.0, 2.0, 2.0])
    assert read_header(DATA / "minc1_4d.mnc")["frames"] == 2
    par = DATA / "phantom_EPI_asc_CLEAR_2_1.PAR"
    summary = read_header(par, par.with_suffix(".REC"))
    assert (summary["dimensions"], summary["orientation"]) == ([64, 64, 9, 3], "LPS")


# Pairing ------------------------------------------------------------------------

def test_pairs_are_kept_together_and_other_files_stand_alone(tmp_path):
    hdr = copy("analyze.hdr", tmp_path / "a.hdr")
    img = zeros_img("analyze.hdr", tmp_path / "a.IMG")
    nhdr = tmp_path / "v.nhdr"
    nrrd.write(str(nhdr), np.ones((2, 2), dtype=np.uint8), {"encoding": "raw"},
               detached_header=True)
    raw = tmp_path / "v.raw"
    nii = copy("anatomical.nii", tmp_path / "t1.nii")
    notes = tmp_path / "notes.txt"
    notes.write_text("scanner was cold")
    groups = pair_files([img, nii, raw, hdr, notes, nhdr])
    assert [(g.format, [p.name for p in g.files], g.error) for g in groups] == [
        ("NIFTI", ["t1.nii"], None),
        ("ANALYZE", ["a.hdr", "a.IMG"], None),
        (None, ["notes.txt"], None),
        ("NRRD", ["v.nhdr", "v.raw"], None),
    ]
    assert read_header(groups[1].primary, groups[1].partner)["dimensions"] == [91, 109, 91, 1]


def test_a_header_without_its_data_file_is_a_problem_with_a_reason(tmp_path):
    hdr = copy("analyze.hdr", tmp_path / "lonely.hdr")
    nhdr = tmp_path / "v.nhdr"
    nrrd.write(str(nhdr), np.ones((2, 2), dtype=np.uint8), {"encoding": "raw"},
               detached_header=True)
    par = copy("phantom_EPI_asc_CLEAR_2_1.PAR", tmp_path / "p.PAR")
    groups = pair_files([hdr, nhdr, par])
    assert [g.error for g in groups] == [
        'The Analyze header "lonely.hdr" has no "lonely.img" beside it.',
        'The NRRD header "v.nhdr" names the data file "v.raw", which is missing.',
        'The PAR header "p.PAR" has no "p.REC" beside it.',
    ]


def test_an_nrrd_data_file_outside_its_folder_is_never_paired(tmp_path):
    secret = tmp_path / "secret.raw"
    secret.write_bytes(bytes(4))
    sub = tmp_path / "upload"
    sub.mkdir()
    nhdr = sub / "v.nhdr"
    nhdr.write_text("NRRD0004\ntype: uint8\ndimension: 1\nsizes: 4\nencoding: raw\n"
                    "data file: ../secret.raw\n\n")
    [group] = [g for g in pair_files([nhdr, secret]) if g.primary == nhdr]
    assert group.files == [nhdr]
    assert "missing" in group.error


# Bad input ------------------------------------------------------------------------

def test_an_hdr_without_its_img_gives_a_clear_reason():
    with pytest.raises(FormatError, match='"analyze.hdr" has no "analyze.img" beside it'):
        read_header(DATA / "analyze.hdr")


def test_a_truncated_nifti_gives_a_clear_reason(tmp_path):
    path = tmp_path / "cut.nii"
    path.write_bytes((DATA / "anatomical.nii").read_bytes()[:20000])
    with pytest.raises(FormatError, match=r'"cut.nii" is truncated: .* the file has 20000'):
        read_header(path)


def test_a_truncated_nifti_gz_gives_a_clear_reason(tmp_path):
    path = tmp_path / "cut.nii.gz"
    whole = gzip.compress((DATA / "anatomical.nii").read_bytes())
    path.write_bytes(whole[: len(whole) // 2])
    assert detect(path).format == "NIFTI"
    with pytest.raises(FormatError, match="damaged or cut short"):
        read_header(path)


def test_an_img_shorter_than_its_header_says_gives_a_clear_reason(tmp_path):
    hdr = copy("analyze.hdr", tmp_path / "a.hdr")
    img = zeros_img("analyze.hdr", tmp_path / "a.img", size=1000)
    with pytest.raises(FormatError, match='"a.img" is truncated'):
        read_header(hdr, img)


@pytest.mark.parametrize(("damage", "reason"), [
    (lambda raw: raw[:600], "could not be read"),
    (lambda raw: raw[:512] + b"\xff" * 512 + raw[1024:], "could not be read"),
    (lambda raw: raw[:1800], "truncated"),
])
def test_an_ecat_with_a_broken_header_gives_a_clear_reason(tmp_path, damage, reason):
    path = tmp_path / "broken.v"
    path.write_bytes(damage((DATA / "tinypet.v").read_bytes()))
    assert detect(path).format == "ECAT"
    with pytest.raises(FormatError, match=reason):
        read_header(path)
    if reason == "could not be read":
        with pytest.raises(FormatError, match='ECAT header of "broken.v"'):
            formats.ecat_identity_header(path)


def test_an_nrrd_pointing_to_a_missing_data_file_gives_a_clear_reason(tmp_path):
    nhdr = tmp_path / "v.nhdr"
    nrrd.write(str(nhdr), np.ones((2, 2), dtype=np.uint8), {"encoding": "raw"},
               detached_header=True)
    (tmp_path / "v.raw").unlink()
    with pytest.raises(FormatError, match='names the data file "v.raw", which is missing'):
        read_header(nhdr)


def test_an_nrrd_with_a_damaged_header_gives_a_clear_reason(tmp_path):
    path = tmp_path / "bad.nrrd"
    path.write_bytes(b"NRRD0004\ntype: complex\ndimension: two\n\n" + bytes(8))
    info = detect(path)
    assert info.format == "NRRD" and info.error
    with pytest.raises(FormatError, match='NRRD header of "bad.nrrd" could not be read'):
        read_header(path)
    [group] = pair_files([path])
    assert group.error == info.error


def test_an_nrrd_with_data_cut_short_gives_a_clear_reason(tmp_path):
    path = tmp_path / "cut.nrrd"
    nrrd.write(str(path), np.ones((10, 10), dtype=np.float64), {"encoding": "raw"})
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(FormatError, match='"cut.nrrd" is truncated'):
        read_header(path)


def test_a_header_with_no_valid_dimensions_gives_a_clear_reason(tmp_path):
    raw = bytearray((DATA / "anatomical.nii").read_bytes())
    raw[40:56] = b"\xff" * 16  # dim[0..7] = -1
    path = tmp_path / "nodims.nii"
    path.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match="no valid dimensions"):
        read_header(path)
