"""Scan snapshots from pydicom's test files: MR, CT, compressed, montages, placeholders."""
from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from imaging.snapshot import make_snapshot
from tests.dicomgen import make_series, write_files


def image_of(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image)


@pytest.mark.parametrize("name, window", [
    ("MR_small.dcm", "header"),          # Window Center/Width in the header
    ("CT_small.dcm", "percentiles"),     # none: 1st-99th percentiles
    ("SC_rgb_jpeg_dcmtk.dcm", "color"),  # JPEG baseline, decoded through Pillow
    ("JPEG2000.dcm", "percentiles"),     # JPEG 2000
    ("MR_small_RLE.dcm", "header"),      # RLE
])
def test_snapshot_shows_the_image_of_a_single_file(tmp_path, name, window):
    out = tmp_path / "snap.png"
    result = make_snapshot([get_testdata_file(name)], str(out))
    assert result["placeholder"] is False and result["reason"] is None
    assert result["window"] == window and result["tiles"] == 1
    pixels = image_of(out)
    assert max(pixels.shape[:2]) == 256
    assert pixels.std() > 10  # an image, not a flat field


def test_snapshot_of_a_multiframe_file_is_a_3x3_montage_of_its_frames(tmp_path):
    out = tmp_path / "snap.png"
    result = make_snapshot([get_testdata_file("examples_ybr_color.dcm")], str(out))
    assert (result["images"], result["tiles"]) == (30, 9)
    assert (result["width"], result["height"]) == (255, 255)  # 3 tiles of 256 // 3
    assert image_of(out).shape == (255, 255, 3)


def test_snapshot_of_a_volume_spreads_its_tiles_through_the_slices(tmp_path):
    files = make_series(generate_uid(), 20, template="CT_small.dcm")
    paths = write_files(tmp_path / "scan", files)
    result = make_snapshot([str(p) for p in reversed(paths)], str(tmp_path / "snap.png"))
    assert (result["images"], result["tiles"], result["placeholder"]) == (20, 9, False)


def test_snapshot_of_a_short_scan_is_its_middle_image(tmp_path):
    files = make_series(generate_uid(), 3, template="MR_small.dcm")
    paths = write_files(tmp_path / "scan", files)
    result = make_snapshot([str(p) for p in paths], str(tmp_path / "snap.png"))
    assert (result["images"], result["tiles"], result["width"]) == (3, 1, 256)


def test_snapshot_without_a_decoder_is_a_placeholder_that_says_why(tmp_path):
    path = tmp_path / "mpeg2.dcm"
    ds = pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no pydicom decoder
    ds.save_as(path, enforce_file_format=True)
    out = tmp_path / "snap.png"

    result = make_snapshot([str(path)], str(out))

    assert result["placeholder"] is True
    assert "MPEG2" in result["reason"]
    assert image_of(out).std() > 0  # the reason is written on it


def test_snapshot_of_a_scan_without_images_is_a_placeholder(tmp_path):
    path = tmp_path / "sr.dcm"
    shutil.copy(get_testdata_file("test-SR.dcm"), path)
    result = make_snapshot([str(path)], str(tmp_path / "snap.png"))
    assert result["placeholder"] is True and "no images" in result["reason"]
    assert (tmp_path / "snap.png").exists()
