"""Hostile input: malformed DICOM, hostile archives, header values made to attack
the pages, labels with path tricks and SQL, oversized fields; plus fuzzing of
the header reader and the archive extractor. Each gets a clear error, never a
500, and nothing stored changes."""
from __future__ import annotations

import io
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from imaging import dicomio
from imaging.extract import CHUNK, ExtractError, Limits, list_members, unpack_members
from tests.dicomgen import make_series, zip_bytes
from tests.test_upload_flow import upload

GOOD = make_series("1.2.3.4", 1)[0]


def _write(tmp_path: Path, data: bytes, name="x.dcm") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _read_or_refuse(path: Path) -> None:
    try:
        dicomio.read_dicom(path)
    except dicomio.NotDicom as exc:
        assert str(exc)


def _huge_length(data: bytes) -> bytes:
    """Set the length of the PatientName element to 0xFFFFFFF0."""
    at = data.index(b"\x10\x00\x10\x00")  # (0010,0010) explicit VR LE
    return data[:at + 6] + struct.pack("<H", 0xFFF0) + data[at + 8:]


def _deep_sequence(depth: int) -> bytes:
    ds = dcmread(io.BytesIO(GOOD))
    inner = Dataset()
    inner.PatientComments = "bottom"
    for _ in range(depth):
        outer = Dataset()
        outer.ReferencedStudySequence = Sequence([inner])
        inner = outer
    ds.ReferencedStudySequence = inner.ReferencedStudySequence
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


MALFORMED = {
    "empty": b"",
    "preamble only": b"\0" * 128 + b"DICM",
    "truncated header": GOOD[:400],
    "truncated pixels": GOOD[:-1000],
    "huge element length": _huge_length(GOOD),
    "text": b"Project notes\n" * 50,
    "png": b"\x89PNG\r\n\x1a\n" + b"\0" * 200,
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_dicom_is_refused_with_a_reason(tmp_path, name):
    path = _write(tmp_path, MALFORMED[name])
    with pytest.raises(dicomio.NotDicom) as caught:
        dicomio.read_dicom(path)
    assert str(caught.value)


@pytest.mark.parametrize("data", [
    _deep_sequence(200),
    GOOD[:132] + b"\x02\x00\x00\x00UL\x04\x00\xff\xff\xff\x7f" + GOOD[144:],
], ids=["deep sequences", "wrong group length"])
def test_odd_but_readable_dicom_is_read_or_refused_never_crashes(tmp_path, data):
    _read_or_refuse(_write(tmp_path, data))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2048))
def test_fuzz_random_bytes_never_crash_the_header_reader(tmp_path, data):
    _read_or_refuse(_write(tmp_path, data))


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)),
                      min_size=1, max_size=8),
       cut=st.integers(0, len(GOOD)))
def test_fuzz_mutated_dicom_never_crashes_the_header_reader(tmp_path, flips, cut):
    data = bytearray(GOOD[:cut] if cut > 132 else GOOD)
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    _read_or_refuse(_write(tmp_path, bytes(data)))


GOOD_ZIP = zip_bytes({"a/1.dcm": GOOD, "a/2.dcm": GOOD[:500]})


def _extract_or_refuse(path: Path, out: Path) -> None:
    """Extract as the tar path does (streamed through the archive's reader)
    and as a batch reads a zip (small members read whole, none written)."""
    for whole in (0, CHUNK):
        try:
            members = list_members(path, Limits(max_total_bytes=10 << 20))
            for _member, target, _data in unpack_members(path, members, out / str(whole),
                                                         keep_bytes=whole,
                                                         write_kept=not whole):
                assert out in target.resolve().parents
        except ExtractError as exc:
            assert str(exc)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=st.lists(st.tuples(st.integers(0, len(GOOD_ZIP) - 1), st.integers(0, 255)),
                      min_size=1, max_size=6),
       cut=st.integers(10, len(GOOD_ZIP)))
def test_fuzz_mutated_zips_never_crash_the_extractor(tmp_path, flips, cut):
    data = bytearray(GOOD_ZIP[:cut])
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    path = _write(tmp_path, bytes(data), "up.zip")
    _extract_or_refuse(path, tmp_path / "out")


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=4))
def test_fuzz_member_names_stay_inside_the_folder(tmp_path, names):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = 1
            tf.addfile(info, io.BytesIO(b"x"))
    path = _write(tmp_path, buf.getvalue(), "up.tar")
    _extract_or_refuse(path, tmp_path / "out")


def _zip_named(names: list[str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in names:
            zf.writestr(zipfile.ZipInfo(name), GOOD)
    return buf.getvalue()


@pytest.mark.parametrize("archive, expect", [
    (_zip_named(["ok/\x07bell.dcm"]), "control character"),
    (_zip_named(["..\\..\\evil.dcm"]), "outside"),
    (zip_bytes({"inner.zip": zip_bytes({"1.dcm": GOOD})}), "DONE"),
])
def test_hostile_archives_get_a_clear_answer(app, client, run_jobs, make_project, archive,
                                             expect):
    make_project("study1")
    res = upload(client, archive)
    assert res.status_code == 202
    run_jobs()
    report = client.get(res.get_json()["api"]).get_json()
    if expect == "DONE":
        # An archive inside the archive is not unpacked: it is quarantined, not lost.
        assert report["status"] == "FAILED" and report["quarantined"] == 1
    else:
        assert report["status"] == "FAILED" and expect in report["error"]


def test_header_values_that_attack_the_pages_are_shown_escaped(app, client, run_jobs,
                                                                make_project):
    make_project("study1")
    attack = "<script>alert(1)</script>"
    files = make_series("1.2.3.99", 1, patient_name=attack, patient_id="X" * 60,
                        study_description="A" * 5000, description=attack)
    res = upload(client, zip_bytes({"1.dcm": files[0]}))
    run_jobs()
    report = client.get(res.get_json()["api"]).get_json()
    assert report["status"] == "DONE"
    from models import PrearchiveSession, db

    with app.app_context():
        ps = db.session.query(PrearchiveSession).one()
        assert ps.subject == "script_alert_1_script"
    page = client.get(f"/prearchive/{ps.id}")
    assert page.status_code == 200
    assert b"<script>alert" not in page.data
    assert b"&lt;script&gt;alert(1)&lt;/script&gt;" in page.data


@pytest.mark.parametrize("value", [
    "../../etc", "a/b", "/abs", "x' OR '1'='1", "x; DROP TABLE project;--", "a\x00b",
    "é", "x" * 65, "SCANS", "_unassigned", "..",
])
def test_labels_with_path_tricks_or_sql_are_refused(app, client, make_project, value):
    make_project("study1")
    assert client.post("/projects/new", data={"label": value}).status_code == 400
    assert client.post("/projects/study1/subjects", data={"label": value}).status_code == 400
    res = upload(client, b"PK", subject=value)
    assert res.status_code == 400 and "Subject label" in res.get_json()["error"]
    assert client.get("/").status_code == 200


@pytest.mark.parametrize("path", [
    "/projects/..%2f..%2fetc", "/projects/x'%20OR%201=1--", "/prearchive/-1",
    "/projects/study1/sessions/..%2F..", "/uploads/..%2f..%2fetc%2fpasswd",
    "/api/uploads/%00", "/search?q=%27%20OR%201=1--",
])
def test_urls_with_path_tricks_or_sql_answer_4xx(app, client, make_project, path):
    make_project("study1")
    res = client.get(path)
    assert res.status_code in (200, 404) and res.status_code < 500


def test_oversized_form_fields_are_refused_not_500(app, client, make_project):
    make_project("study1")
    res = client.post("/projects/new", data={"label": "big", "description": "x" * (2 << 20)})
    assert res.status_code == 413
    res = client.post("/projects/new", data={"label": "y" * 100_000})
    assert res.status_code == 400
