"""Safe extraction of zip and tar uploads."""

import io
import multiprocessing
import os
import random
import stat
import tarfile
import zipfile
from concurrent.futures import ProcessPoolExecutor

import pytest

from imaging.extract import (
    ExtractError,
    Limits,
    Member,
    archive_kind,
    extract_members,
    list_members,
)


def make_zip(path, entries, compression=zipfile.ZIP_DEFLATED):
    """Write a zip of (name or ZipInfo, bytes) pairs and return its path."""
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return path


def make_tar(path, entries, mode="w"):
    """Write a tar of TarInfo or (name, bytes) entries and return its path."""
    with tarfile.open(path, mode) as tf:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tf.addfile(entry)
            else:
                name, data = entry
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def tar_entry(name, kind, linkname=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def patch_zip_flags(path, flag):
    """Set a general-purpose flag bit in every local and central header."""
    data = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = data.find(signature)
        while start != -1:
            data[start + offset] |= flag
            start = data.find(signature, start + 4)
    path.write_bytes(bytes(data))


def extract_all(path, dest):
    return {m.name: p.read_bytes() for m, p in extract_members(path, list_members(path), dest)}


def _extract_subset(path, members, dest):
    return [str(p) for _, p in extract_members(path, members, dest)]


# --- names ---------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["../evil.dcm", "a/../../evil.dcm", "/etc/passwd", "C:/evil.dcm", "..\\..\\evil.dcm"]
)
def test_zip_with_a_path_outside_the_folder_is_refused(tmp_path, name):
    archive = make_zip(tmp_path / "up.zip", [("ok.dcm", b"1"), (name, b"2")])
    with pytest.raises(ExtractError, match="points outside the upload folder"):
        list_members(archive)


def test_zip_slip_message_names_the_entry(tmp_path):
    archive = make_zip(tmp_path / "up.zip", [("../../etc/passwd", b"x")])
    with pytest.raises(ExtractError) as caught:
        list_members(archive)
    assert str(caught.value) == 'Archive entry "../../etc/passwd" points outside the upload folder.'


def test_tar_with_parent_path_is_refused(tmp_path):
    archive = make_tar(tmp_path / "up.tar", [("../evil.dcm", b"x")])
    with pytest.raises(ExtractError, match="outside"):
        list_members(archive)


def test_names_are_normalised_and_backslashes_are_separators(tmp_path):
    archive = make_zip(tmp_path / "up.zip", [("./a//b/../c.dcm", b"1"), ("win\\dir\\d.dcm", b"2")])
    assert [m.name for m in list_members(archive)] == ["a/c.dcm", "win/dir/d.dcm"]


@pytest.mark.parametrize("name", ["esc\x1b[31m.dcm", "line\nbreak.dcm", "del\x7f.dcm", "tab\t.dcm"])
def test_names_with_control_characters_are_refused(tmp_path, name):
    archive = make_tar(tmp_path / "up.tar", [(name, b"x")])
    with pytest.raises(ExtractError, match="control characters") as caught:
        list_members(archive)
    assert not any(c in str(caught.value) for c in "\x1b\n\x7f\t")


def test_a_file_without_a_name_is_refused_not_skipped(tmp_path):
    archive = make_tar(tmp_path / "up.tar", [("a/..", b"x")])
    with pytest.raises(ExtractError, match="has no file name"):
        list_members(archive)


def test_a_name_part_too_long_for_disk_is_refused(tmp_path):
    archive = make_zip(tmp_path / "up.zip", [("a" * 300 + ".dcm", b"x")])
    with pytest.raises(ExtractError, match="too long"):
        list_members(archive)


# --- links and special files ---------------------------------------------


def test_tar_with_a_symlink_is_refused(tmp_path):
    archive = make_tar(
        tmp_path / "up.tar", [("a.dcm", b"x"), tar_entry("a/b", tarfile.SYMTYPE, "/etc")]
    )
    with pytest.raises(ExtractError) as caught:
        list_members(archive)
    assert (
        str(caught.value) == 'The archive holds a link ("a/b" -> "/etc"); links are not accepted.'
    )


def test_tar_with_a_hardlink_is_refused(tmp_path):
    archive = make_tar(
        tmp_path / "up.tar", [("a.dcm", b"x"), tar_entry("b.dcm", tarfile.LNKTYPE, "a.dcm")]
    )
    with pytest.raises(ExtractError, match="link"):
        list_members(archive)


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_tar_with_a_device_or_pipe_is_refused(tmp_path, kind):
    archive = make_tar(tmp_path / "up.tar", [tar_entry("dev/null", kind)])
    with pytest.raises(ExtractError, match="device or pipe"):
        list_members(archive)


def test_zip_with_a_symlink_is_refused(tmp_path):
    link = zipfile.ZipInfo("a/b")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = make_zip(tmp_path / "up.zip", [(link, b"/etc")])
    with pytest.raises(ExtractError) as caught:
        list_members(archive)
    assert (
        str(caught.value) == 'The archive holds a link ("a/b" -> "/etc"); links are not accepted.'
    )


def test_zip_with_an_encrypted_entry_is_refused(tmp_path):
    archive = make_zip(tmp_path / "up.zip", [("secret.dcm", b"x" * 100)])
    patch_zip_flags(archive, 0x1)
    with pytest.raises(ExtractError, match="encrypted"):
        list_members(archive)


# --- sizes and zip bombs -------------------------------------------------


def test_too_many_entries_are_refused(tmp_path):
    archive = make_zip(tmp_path / "up.zip", [(f"{i}.dcm", b"x") for i in range(4)])
    assert len(list_members(archive, Limits(max_entries=4))) == 4
    with pytest.raises(ExtractError, match="more than the 3 entries"):
        list_members(archive, Limits(max_entries=3))


def test_an_entry_declaring_more_than_the_limit_is_refused(tmp_path):
    archive = make_zip(tmp_path / "up.zip", [("big.dcm", b"\0" * 5000)])
    with pytest.raises(ExtractError, match="allowed for one file"):
        list_members(archive, Limits(max_entry_bytes=4096))


def test_an_archive_declaring_more_than_the_total_limit_is_refused(tmp_path):
    archive = make_zip(tmp_path / "up.zip", [(f"{i}.dcm", b"\0" * 3000) for i in range(4)])
    with pytest.raises(ExtractError) as caught:
        list_members(archive, Limits(max_total_bytes=10_000))
    assert str(caught.value) == "The archive would unpack to 11.7 KB, more than the 9.8 KB allowed."


def test_an_archive_that_expands_too_much_is_refused_as_a_zip_bomb(tmp_path):
    archive = make_zip(tmp_path / "bomb.zip", [("zeros.dcm", b"\0" * (17 * 2**20))])
    with pytest.raises(ExtractError, match=r"expands \d+ times its size; this looks like a zip"):
        list_members(archive)
    assert list_members(archive, Limits(max_ratio=5000))[0].size == 17 * 2**20


def test_a_small_highly_compressible_archive_is_accepted(tmp_path):
    archive = make_zip(tmp_path / "up.zip", [("zeros.dcm", b"\0" * 2**20)])
    assert [m.size for m in list_members(archive, Limits(max_ratio=2))] == [2**20]


# --- damaged or foreign files --------------------------------------------


def test_a_truncated_zip_is_reported_as_damaged(tmp_path):
    archive = make_zip(tmp_path / "up.zip", [("a.dcm", os.urandom(5000))])
    archive.write_bytes(archive.read_bytes()[:3000])
    with pytest.raises(ExtractError, match=r"^The zip archive is damaged: .+\.$"):
        list_members(archive)


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:xz"])
def test_a_truncated_tar_is_reported_as_damaged(tmp_path, mode):
    archive = make_tar(
        tmp_path / "up.tar", [(f"{i}.dcm", os.urandom(50_000)) for i in range(3)], mode
    )
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(ExtractError, match="damaged"):
        list_members(archive)


@pytest.mark.parametrize("content", [b"", b"hello, this is text\n" * 50, os.urandom(4096)])
def test_junk_is_not_an_archive(tmp_path, content):
    path = tmp_path / "upload.zip"
    path.write_bytes(content)
    with pytest.raises(ExtractError) as caught:
        list_members(path)
    assert str(caught.value) == "The file is not a zip or tar archive."


def test_a_zip_whose_data_is_corrupt_fails_while_extracting(tmp_path):
    archive = make_zip(tmp_path / "up.zip", [("a.dcm", b"A" * 5000)], zipfile.ZIP_STORED)
    data = archive.read_bytes().replace(b"A" * 100, b"B" * 100, 1)
    archive.write_bytes(data)
    members = list_members(archive)
    with pytest.raises(ExtractError, match="damaged"):
        list(extract_members(archive, members, tmp_path / "out"))
    assert not (tmp_path / "out" / "a.dcm").exists()


def test_a_zip_whose_deflated_data_is_corrupt_fails_while_extracting(tmp_path):
    content = bytes(range(256)) * 200
    archive = make_zip(tmp_path / "up.zip", [("a.dcm", content)])
    data = bytearray(archive.read_bytes())
    start = data.index(b"a.dcm") + len("a.dcm")
    data[start + 20:start + 60] = b"\xff" * 40  # inside the deflate stream
    archive.write_bytes(bytes(data))
    with pytest.raises(ExtractError, match="damaged"):
        list(extract_members(archive, list_members(archive), tmp_path / "out"))
    assert not (tmp_path / "out" / "a.dcm").exists()


def test_a_tar_gz_whose_compressed_data_is_corrupt_fails_while_extracting(tmp_path):
    content = bytes(range(256)) * 400
    archive = make_tar(tmp_path / "up.tgz", [("a.dcm", content), ("b.dcm", content)], "w:gz")
    members = list_members(archive)
    data = bytearray(archive.read_bytes())
    data[len(data) // 2:len(data) // 2 + 40] = b"\xff" * 40
    archive.write_bytes(bytes(data))
    with pytest.raises(ExtractError, match="damaged"):
        list(extract_members(archive, members, tmp_path / "out"))


def test_deflated_members_are_inflated_exactly(tmp_path):
    rng = random.Random(3)
    entries = [(f"f{n}.bin", bytes(rng.randrange(4) for _ in range(size)))
               for n, size in enumerate((0, 1, 4095, 4096, 70_000, 300_000))]
    archive = make_zip(tmp_path / "up.zip", entries)
    for member, path in extract_members(archive, list_members(archive), tmp_path / "out"):
        assert path.read_bytes() == dict(entries)[member.name]


def test_a_zip_whose_header_understates_the_size_is_refused(tmp_path):
    archive = make_zip(tmp_path / "up.zip", [("a.dcm", b"x" * 1000)], zipfile.ZIP_STORED)
    data = bytearray(archive.read_bytes())
    central = data.find(b"PK\x01\x02")
    data[central + 24 : central + 28] = (10).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    members = list_members(archive)
    assert members[0].size == 10
    with pytest.raises(ExtractError):
        list(extract_members(archive, members, tmp_path / "out"))
    assert not (tmp_path / "out" / "a.dcm").exists()


def test_more_bytes_than_a_member_declares_stop_the_extraction(tmp_path):
    archive = make_tar(tmp_path / "up.tar", [("a.dcm", b"x" * 1000)])
    (member,) = list_members(archive)
    lying = Member(member.name, member.index, 10)
    with pytest.raises(ExtractError, match="more data than its header declares"):
        list(extract_members(archive, [lying], tmp_path / "out"))
    assert not (tmp_path / "out" / "a.dcm").exists()


def test_extraction_over_the_limits_is_refused_before_writing(tmp_path):
    archive = make_zip(tmp_path / "up.zip", [(f"{i}.dcm", b"x" * 1000) for i in range(3)])
    members = list_members(archive)
    dest = tmp_path / "out"
    with pytest.raises(ExtractError, match="more than the 2.4 KB allowed"):
        list(extract_members(archive, members, dest, Limits(max_total_bytes=2500)))
    with pytest.raises(ExtractError, match="allowed for one file"):
        list(extract_members(archive, members, dest, Limits(max_entry_bytes=999)))
    assert not dest.exists()


# --- what is listed ------------------------------------------------------


def test_directories_and_macos_clutter_are_not_listed(tmp_path):
    archive = make_zip(
        tmp_path / "up.zip",
        [
            ("study/", b""),
            ("study/1.dcm", b"1"),
            ("__MACOSX/study/._1.dcm", b"junk"),
            ("study/._2.dcm", b"junk"),
            ("study/.DS_Store", b"junk"),
            ("study/2.dcm", b"2"),
        ],
    )
    members = list_members(archive)
    assert [(m.name, m.index, m.size) for m in members] == [
        ("study/1.dcm", 1, 1),
        ("study/2.dcm", 5, 1),
    ]


def test_duplicate_names_are_both_listed(tmp_path):
    with pytest.warns(UserWarning, match="Duplicate name"):
        archive = make_zip(tmp_path / "up.zip", [("a.dcm", b"1"), ("a.dcm", b"22")])
    assert [(m.name, m.size) for m in list_members(archive)] == [("a.dcm", 1), ("a.dcm", 2)]


def test_archive_kind_is_judged_by_content_not_by_extension(tmp_path):
    zipped = make_zip(tmp_path / "study.tar.gz", [("a.dcm", b"1")])
    tarred = make_tar(tmp_path / "study.zip", [("a.dcm", b"1")], "w:bz2")
    assert archive_kind(zipped) == "zip"
    assert archive_kind(tarred) == "tar"


# --- extraction ----------------------------------------------------------


def test_zip_members_are_extracted_with_their_content(tmp_path):
    payload = os.urandom(3 * 2**20 + 17)  # more than one chunk
    archive = make_zip(tmp_path / "up.zip", [("s/1.dcm", payload), ("s/sub/2.dcm", b"two")])
    assert extract_all(archive, tmp_path / "out") == {"s/1.dcm": payload, "s/sub/2.dcm": b"two"}
    assert (tmp_path / "out" / "s" / "sub" / "2.dcm").read_bytes() == b"two"


@pytest.mark.parametrize("mode", ["w:gz", "w:bz2", "w:xz", "w"])
def test_tar_members_are_extracted_with_their_content(tmp_path, mode):
    archive = make_tar(
        tmp_path / "up.tgz", [("s/1.dcm", b"one"), ("s/2.dcm", b"two" * 100_000)], mode
    )
    assert extract_all(archive, tmp_path / "out") == {
        "s/1.dcm": b"one",
        "s/2.dcm": b"two" * 100_000,
    }


def test_only_the_given_tar_members_are_extracted(tmp_path):
    archive = make_tar(tmp_path / "up.tar.gz", [(f"{i}.dcm", b"%d" % i) for i in range(5)], "w:gz")
    members = list_members(archive)
    done = [
        m.name for m, _ in extract_members(archive, members[3:4] + members[1:2], tmp_path / "o")
    ]
    assert done == ["1.dcm", "3.dcm"]
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["1.dcm", "3.dcm"]


def test_each_file_is_complete_when_it_is_yielded(tmp_path):
    archive = make_zip(tmp_path / "up.zip", [(f"{i}.dcm", b"z" * 5000) for i in range(3)])
    for member, path in extract_members(archive, list_members(archive), tmp_path / "out"):
        assert path.stat().st_size == member.size


@pytest.mark.parametrize("mode", [0o100777, 0o100000, 0o104755])
def test_files_are_written_with_mode_644_whatever_the_archive_says(tmp_path, mode):
    info = zipfile.ZipInfo("a.dcm")
    info.create_system = 3
    info.external_attr = mode << 16
    archive = make_zip(tmp_path / "up.zip", [(info, b"x")])
    ((_, path),) = extract_members(archive, list_members(archive), tmp_path / "out")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_disjoint_subsets_of_a_zip_are_extracted_in_parallel(tmp_path):
    entries = [(f"s/{i:03d}.dcm", os.urandom(2000)) for i in range(40)]
    archive = make_zip(tmp_path / "up.zip", entries)
    members = list_members(archive)
    batches = [members[0::3], members[1::3], members[2::3]]
    dest = tmp_path / "out"
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=3, mp_context=context) as pool:
        results = list(pool.map(_extract_subset, [archive] * 3, batches, [dest] * 3))
    assert sum(len(r) for r in results) == 40
    for name, data in entries:
        assert (dest / name).read_bytes() == data


def test_a_caller_given_unsafe_name_is_refused(tmp_path):
    archive = make_zip(tmp_path / "up.zip", [("a.dcm", b"x")])
    (member,) = list_members(archive)
    with pytest.raises(ExtractError):
        list(extract_members(archive, [Member("../a.dcm", member.index, 1)], tmp_path / "out"))
    assert not (tmp_path / "a.dcm").exists()


def test_a_symlink_already_in_the_destination_is_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "s").symlink_to(outside)
    archive = make_zip(tmp_path / "up.zip", [("s/a.dcm", b"x")])
    with pytest.raises(ExtractError, match="outside"):
        list(extract_members(archive, list_members(archive), dest))
    assert list(outside.iterdir()) == []


def test_a_file_and_a_folder_of_the_same_name_clash(tmp_path):
    archive = make_zip(tmp_path / "up.zip", [("a", b"file"), ("a/b.dcm", b"x")])
    with pytest.raises(ExtractError, match="clashes"):
        list(extract_members(archive, list_members(archive), tmp_path / "out"))


def test_a_member_that_is_not_in_the_archive_is_reported(tmp_path):
    archive = make_tar(tmp_path / "up.tar", [("a.dcm", b"x")])
    with pytest.raises(ExtractError, match="changed"):
        list(extract_members(archive, [Member("b.dcm", 7, 1)], tmp_path / "out"))
