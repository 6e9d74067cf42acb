"""Small zip members read in one piece, as the upload's batches read them
(imaging.zipmembers), against zipfile's reading of the same archives."""

import os
import random
import zipfile

import pytest

from imaging import extract, zipmembers
from imaging.extract import CHUNK, ExtractError, extract_members, list_members, unpack_members
from tests.test_imaging_extract import make_zip


def read_whole(path, members, dest):
    """Return {name: content} as a batch reads members: the small ones read
    whole and not written, the others written."""
    return {m.name: data if data is not None else p.read_bytes() for m, p, data in
            unpack_members(path, members, dest, keep_bytes=CHUNK, write_kept=False)}


def extract_written(path, members, dest):
    return {m.name: p.read_bytes() for m, p in extract_members(path, members, dest)}


READERS = pytest.mark.parametrize("read", [read_whole, extract_written],
                                  ids=["whole", "streamed"])


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED,
                                    zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_small_members_read_whole_are_those_zipfile_reads(tmp_path, method, monkeypatch):
    whole = []
    real = extract.small_member
    monkeypatch.setattr(extract, "small_member",
                        lambda *a: whole.append(real(*a)) or whole[-1])
    rng = random.Random(5)
    entries = [(f"f{n}.bin", bytes(rng.randrange(4) for _ in range(size)))
               for n, size in enumerate((1, 4095, 70_000, CHUNK, CHUNK + 1))]
    entries.append(("noise.bin", os.urandom(200_000)))  # deflated to more than it holds
    archive = make_zip(tmp_path / "up.zip", entries, method)
    assert read_whole(archive, list_members(archive), tmp_path / "out") == dict(entries)
    # Stored and deflated members of up to CHUNK bytes, not through zipfile.
    read_alone = method in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
    assert sum(data is not None for data in whole) == (5 if read_alone else 0)
    assert all(type(data) is bytes for data in whole if data is not None)


def _forge_central(archive, field: int, value: int, at: bytes = b"PK\x01\x02") -> None:
    """Overwrite a 4-byte field of the first central header (offset `field`)."""
    data = bytearray(archive.read_bytes())
    start = data.find(at)
    data[start + field:start + field + 4] = value.to_bytes(4, "little")
    archive.write_bytes(bytes(data))


@READERS
@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_a_member_whose_data_is_corrupt_is_refused(tmp_path, read, method):
    content = bytes(range(256)) * 200
    archive = make_zip(tmp_path / "up.zip", [("a.dcm", content)], method)
    data = bytearray(archive.read_bytes())
    start = data.index(b"a.dcm") + len("a.dcm")
    data[start + 20:start + 60] = b"\xff" * 40
    archive.write_bytes(bytes(data))
    with pytest.raises(ExtractError, match="^The zip archive is damaged: "):
        read(archive, list_members(archive), tmp_path / "out")
    assert not (tmp_path / "out" / "a.dcm").exists()


@READERS
@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_a_member_whose_central_header_understates_its_size_is_refused(tmp_path, read,
                                                                       method):
    archive = make_zip(tmp_path / "up.zip", [("a.dcm", b"x" * 1000)], method)
    _forge_central(archive, 24, 10)
    members = list_members(archive)
    assert members[0].size == 10
    with pytest.raises(ExtractError, match="damaged"):
        read(archive, members, tmp_path / "out")


@READERS
def test_a_member_whose_local_name_differs_from_the_central_one_is_refused(tmp_path, read):
    archive = make_zip(tmp_path / "up.zip", [("a.dcm", b"x" * 1000)])
    data = archive.read_bytes()
    local = data.index(b"a.dcm")
    archive.write_bytes(data[:local] + b"b.dcm" + data[local + 5:])
    with pytest.raises(ExtractError, match="differ"):
        read(archive, list_members(archive), tmp_path / "out")


@READERS
def test_a_member_whose_local_header_is_missing_is_refused(tmp_path, read):
    archive = make_zip(tmp_path / "up.zip", [("a.dcm", b"x" * 1000)])
    _forge_central(archive, 42, 7)  # the local header's offset, into its middle
    with pytest.raises(ExtractError, match="damaged"):
        read(archive, list_members(archive), tmp_path / "out")


def test_a_member_whose_deflated_data_runs_past_the_archive_is_refused(tmp_path):
    archive = make_zip(tmp_path / "up.zip", [("a.dcm", b"x" * 5000)])
    _forge_central(archive, 20, 5000 + 1000)  # compressed size: more than the file holds
    with pytest.raises(ExtractError, match="damaged"):
        read_whole(archive, list_members(archive), tmp_path / "out")


@READERS
def test_a_member_whose_central_header_overstates_its_size_is_read_as_zipfile_reads_it(
        tmp_path, read):
    # What the data inflates to, its CRC right: zipfile reads it so.
    content = os.urandom(1000) + b"x" * 1000
    archive = make_zip(tmp_path / "up.zip", [("a.dcm", content)])
    _forge_central(archive, 24, 3000)
    assert read(archive, list_members(archive), tmp_path / "out") == {"a.dcm": content}


@pytest.mark.skipif(zipmembers.libdeflate is None, reason="libdeflate's wheel is missing")
def test_without_libdeflate_small_members_are_inflated_by_isal_alike(tmp_path, monkeypatch):
    entries = [(f"f{n}.bin", os.urandom(n * 700) + b"y" * n * 300) for n in range(1, 6)]
    archive = make_zip(tmp_path / "up.zip", entries)
    with_libdeflate = read_whole(archive, list_members(archive), tmp_path / "a")
    monkeypatch.setattr(zipmembers, "libdeflate", None)
    assert read_whole(archive, list_members(archive), tmp_path / "b") == with_libdeflate \
        == dict(entries)
