"""The site anonymization script run by the batches of an upload
(workers.site_script) and the fast writer it uses (imaging.dicomwrite):
the files come out as the finishing job would have made them, the script
runs once on each file, from its original, whatever the labels turn out to be."""
from __future__ import annotations

import io
import random
import struct
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement

from imaging import dicomio, dicomwrite, fastheader
from imaging.anonymize import (
    DEFAULT_SITE_SCRIPT,
    ScriptRejected,
    anonymize_bytes,
    anonymize_header,
    anonymize_read,
    apply_script,
    parse_script,
)
from tests.dicomgen import make_study
from tests.test_anonymization_flow import set_script, upload
from workers import anonymization

SCRIPTS = [DEFAULT_SITE_SCRIPT,
           "replace uids\nshift dates\nremove private\nPatientName := subject",
           "basic-profile retain-longitudinal-dates"]
VARIABLES = {"project": "P1", "subject": "S01", "session": "S01_MR1", "scan": "4"}
SECRET = b"k" * 32


def _pydicom_files() -> list[str]:
    # The files pydicom ships, not get_testdata_files(): that one also fetches
    # pydicom's larger test files from the network, or tries to, file by file.
    shipped = Path(get_testdata_file("MR_small.dcm")).parent
    return sorted(str(f) for f in shipped.glob("*.dcm")
                  if "MR" in f.name or "CT" in f.name or "SC" in f.name)


@pytest.mark.parametrize("text", SCRIPTS)
def test_the_fast_writer_writes_the_dataset_pydicom_writes(text):
    script, compared = parse_script(text), 0
    for name in _pydicom_files():
        data = Path(name).read_bytes()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ours = anonymize_bytes(data, script, VARIABLES, SECRET).data
                ds = pydicom.dcmread(io.BytesIO(data), force=True)
                apply_script(script, ds, VARIABLES, SECRET)
                buffer = io.BytesIO()
                pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
            except (ScriptRejected, ValueError, AttributeError, TypeError):
                continue  # a file pydicom cannot write after this script
        if ours is None:
            continue
        theirs = buffer.getvalue()
        a, b = pydicom.dcmread(io.BytesIO(ours)), pydicom.dcmread(io.BytesIO(theirs))
        assert a.file_meta.MediaStorageSOPInstanceUID == b.file_meta.MediaStorageSOPInstanceUID
        assert a.file_meta.TransferSyntaxUID == b.file_meta.TransferSyntaxUID
        assert [e.tag for e in a] == [e.tag for e in b], name
        assert all(x.value == y.value for x, y in zip(a, b, strict=True)
                   if x.tag != 0x7FE00010 and x.VR not in ("UN", "SQ")), name
        assert a.get("PixelData") == b.get("PixelData"), name
        compared += 1
    assert compared > 10


@pytest.mark.parametrize("template", ["MR_small.dcm", "CT_small.dcm", "JPEG2000.dcm",
                                      "MR_small_implicit.dcm", "MR_small_bigendian.dcm"])
def test_rewriting_the_header_alone_gives_the_bytes_of_the_whole_rewrite(template):
    data = Path(get_testdata_file(template)).read_bytes()
    for text in SCRIPTS:
        script = parse_script(text)
        whole = anonymize_bytes(data, script, VARIABLES, SECRET)
        info, ds, pixels = dicomio.read_header(data)
        done = anonymize_header(ds, data, pixels, script, VARIABLES, SECRET)
        if done is None:  # big endian: the caller rewrites it whole
            assert template == "MR_small_bigendian.dcm"
            continue
        changes, new, changed = done
        assert new == whole.data and changes == whole.changes
        assert dicomio.changed_info(info, ds, new, changed) == dicomio.read_dicom(None, new)


def test_a_raw_element_keeps_its_bytes():
    data = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.PatientName = "X"
    out = dicomwrite.encode(ds, data)
    assert out.startswith(data[:dicomio.dataset_offset(data)])  # the file meta as it came
    assert out.endswith(data[-1000:])  # the pixel data and the padding after it


def _mutated(count: int, seed: int = 5):
    """Yield (name, bytes): pydicom's files cut short, or with a byte or
    three changed, mostly in the headers of elements (tag, VR, length), as a
    damaged or odd file may come."""
    rng = random.Random(seed)
    names = ["MR_small.dcm", "CT_small.dcm", "MR_small_implicit.dcm",
             "MR_small_bigendian.dcm", "rtplan.dcm", "rtdose.dcm", "SC_rgb_small_odd.dcm"]
    originals = {n: Path(get_testdata_file(n)).read_bytes() for n in names}
    headers = {n: [e.value_tell for e in pydicom.dcmread(io.BytesIO(data))._dict.values()
                   if getattr(e, "value_tell", 0) >= 140] for n, data in originals.items()}
    for _ in range(count):
        name = rng.choice(names)
        data = bytearray(originals[name])
        if rng.random() < 0.2:
            del data[rng.randrange(300, len(data)):]
        else:
            for _ in range(rng.randint(1, 3)):
                at = rng.choice(headers[name]) - rng.randint(1, 8) if rng.random() < 0.5 \
                    else rng.randrange(132, min(len(data), 3000))
                data[at] = rng.choice([0, 0x20, 0x41, 0x55, 0xFF, rng.randrange(256)])
        yield name, bytes(data)


def test_the_writers_shortcut_for_neighbouring_elements_agrees_with_the_full_check(
        monkeypatch):
    # encode_fast checks an element that follows a copied one by unpacking
    # its header (_next_to); with that shortcut off, each is checked by
    # writing its header and comparing bytes (_where). Same bytes out.
    written = []
    for name, data in _mutated(400):
        script = parse_script(SCRIPTS[len(written) % len(SCRIPTS)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(io.BytesIO(data), force=True)
                if not apply_script(script, ds, VARIABLES, SECRET):
                    continue
            except Exception:  # noqa: BLE001 - a file this damage makes unreadable
                continue
        written.append((name, ds, data))
    assert len(written) > 200
    # And elements the parser kept otherwise than their headers say.
    for name in ("MR_small.dcm", "MR_small_implicit.dcm", "CT_small.dcm"):
        data = Path(get_testdata_file(name)).read_bytes()
        for tag in pydicom.dcmread(io.BytesIO(data))._dict:
            for change in ({"value": b"", "length": 0}, {"VR": "LO"}, {"tag": tag + 1}):
                ds = pydicom.dcmread(io.BytesIO(data))
                apply_script(parse_script(DEFAULT_SITE_SCRIPT), ds, VARIABLES, SECRET)
                raw = ds._dict.get(tag)
                if isinstance(raw, RawDataElement):
                    if raw.VR == "LO":
                        change = {"VR": "SH"}
                    ds._dict[tag] = raw._replace(**change)
                    written.append((f"{name} {tag:08X} {change}", ds, data))

    def outcomes():
        for _name, ds, data in written:
            try:
                yield dicomwrite.encode_fast(ds, data)
            except Exception as exc:  # noqa: BLE001 - the same refusal either way
                yield type(exc)

    fast = list(outcomes())
    monkeypatch.setattr(dicomwrite, "_next_to", lambda *args: None)
    assert sum(isinstance(out, bytes) for out in fast) > 200
    for (name, _ds, _data), ours, checked in zip(written, fast, outcomes(), strict=True):
        assert ours == checked, name


def test_the_writers_splice_for_files_read_in_one_pass_agrees_with_the_full_check():
    # A file imaging.fastheader read carries where each element lies;
    # encode_fast copies the runs of those still as read in one piece each,
    # looking only at the others. Without that record, the same bytes out.
    compared = 0
    for n, (_name, data) in enumerate(_mutated(300, seed=7)):
        script = parse_script(SCRIPTS[n % len(SCRIPTS)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                _info, ds, pixels = dicomio.read_header(data)
            except dicomio.NotDicom:
                continue
            if "read_plain" not in ds.__dict__ or not dicomio.add_rest(ds, data, pixels):
                continue
            try:
                if not apply_script(script, ds, VARIABLES, SECRET):
                    continue
            except Exception:  # noqa: BLE001 - a value this damage makes unusable
                continue
            ours = dicomwrite.encode_fast(ds, data)
            del ds.__dict__["read_plain"]
            assert ours == dicomwrite.encode_fast(ds, data)
        compared += ours is not None
    assert compared > 40


def _with_elements(data: bytes, *elements: bytes) -> bytes:
    """`data` (explicit VR little endian) with each element (tag first)
    put in its place among the top-level elements."""
    for element in elements:
        (group, number) = struct.unpack_from("<HH", element)
        read = fastheader.read_to_pixels(data)[0].read_plain.values()
        at = min(start for tag, _elem, start, _end, _exact in read
                 if tag > (group << 16 | number))
        data = data[:at] + element + data[at:]
    return data


@pytest.mark.parametrize("text", [
    DEFAULT_SITE_SCRIPT,
    # an element removed, one added between those read, one changed
    "-(0008,0080)\n(0010,1010) := \"042Y\"\n(0010,0010) := subject",
    "basic-profile retain-longitudinal-dates"])
def test_the_splice_writes_what_pydicom_writes_around_odd_elements(text):
    # A retired group length (left out when written) and a 4-byte length
    # whose reserved bytes are not zero (written as zeros) among the
    # elements read in one pass.
    data = _with_elements(
        Path(get_testdata_file("CT_small.dcm")).read_bytes(),
        struct.pack("<HH2sHI", 0x0008, 0x0000, b"UL", 4, 600),
        struct.pack("<HH2s2sI", 0x0040, 0xA160, b"UT", b"\x01\x02", 4) + b"TEXT")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info, ds, pixels = dicomio.read_header(data)
        assert "read_plain" in ds.__dict__
        _changes, ours, _new_info = anonymize_read(info, ds, pixels, data, parse_script(text),
                                                   VARIABLES, SECRET)
        expected = pydicom.dcmread(io.BytesIO(data), force=True)
        apply_script(parse_script(text), expected, VARIABLES, SECRET)
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, expected, enforce_file_format=True)
    assert ours == buffer.getvalue()
    again = pydicom.dcmread(io.BytesIO(ours))
    assert 0x00080000 not in again and again[0x0040A160].value == "TEXT"


def test_an_element_whose_header_says_more_than_the_parser_kept_is_written_anew():
    # Three bytes changed in rtplan.dcm (implicit VR): pydicom keeps
    # (300A,0010) as an element of length 0 while its header in the file
    # says 324 bytes. Copied as it lies, that header would swallow the
    # elements after it.
    data = bytearray(Path(get_testdata_file("rtplan.dcm")).read_bytes())
    for offset, value in ((2598, 32), (1810, 85), (273, 85)):
        data[offset] = value
    data = bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        assert ds._dict[0x300A0010].length == 0
        apply_script(parse_script(DEFAULT_SITE_SCRIPT), ds, VARIABLES, SECRET)
        out = dicomwrite.encode_fast(ds, data)
        again = pydicom.dcmread(io.BytesIO(out), force=True)
    assert again.PatientName == "S01"
    assert again[0x300A0070].value == ds[0x300A0070].value


def _prearchived(app) -> dict[str, pydicom.Dataset]:
    root = Path(app.config["DATA_DIR"]) / "prearchive"
    return {p.name: pydicom.dcmread(p) for p in root.rglob("*.dcm")}


def test_when_the_batches_guess_the_labels_wrong_the_script_runs_once_on_the_original(
        app, client, run_jobs, make_project):
    """Two studies with one session label given: the second becomes S01_MR1_1,
    which no batch could know; its files get the script once, with that label."""
    make_project("study1")
    text = "shift dates\nPatientID := session\nPatientName := subject"
    set_script(app, anonymization.SITE, text)
    _uid1, first = make_study(series=1, per_series=2, patient_name="DOE^JOHN")
    _uid2, second = make_study(series=1, per_series=2, patient_name="DOE^JOHN")
    upload_id = upload(client, first + second)
    run_jobs()
    report = client.get(f"/api/uploads/{upload_id}").get_json()
    assert report["status"] == "DONE" and report["stored"] == 4
    with app.app_context():
        secret = anonymization.secret()
    stored = _prearchived(app)
    assert sorted(ds.PatientID for ds in stored.values()) == \
        ["S01_MR1", "S01_MR1", "S01_MR1_1", "S01_MR1_1"]
    script = parse_script(text)
    for original in first + second:
        sop = pydicom.dcmread(io.BytesIO(original)).SOPInstanceUID
        ds = next(d for d in stored.values() if d.SOPInstanceUID == sop)
        # The date shifted once: as the script makes it from the original.
        values = {"project": "study1", "subject": "S01", "session": ds.PatientID,
                  "scan": None}
        expected = pydicom.dcmread(io.BytesIO(
            anonymize_bytes(original, script, values, secret).data))
        assert ds.StudyDate == expected.StudyDate != pydicom.dcmread(
            io.BytesIO(original)).StudyDate


def test_the_batches_rewrite_each_file_once_and_the_record_describes_it(
        app, client, run_jobs, make_project):
    make_project("study1")
    _uid, files = make_study(series=2, per_series=3, patient_name="DOE^JOHN",
                             patient_id="MRN123")
    upload_id = upload(client, files)
    run_jobs()
    assert client.get(f"/api/uploads/{upload_id}").get_json()["stored"] == 6
    root = Path(app.config["DATA_DIR"]) / "prearchive"
    for path in root.rglob("*.dcm"):
        raw = path.read_bytes()
        assert b"DOE^JOHN" not in raw and b"MRN123" not in raw
        ds = pydicom.dcmread(path)
        assert (ds.PatientName, ds.PatientID, ds.StudyDescription) == \
            ("S01", "S01_MR1", "study1")
    record = next(root.rglob("*.json")).read_text()
    assert "MRN123" not in record and "DOE^JOHN" not in record
    assert not (Path(app.config["DATA_DIR"]) / "uploads" / upload_id).exists()


def test_a_script_changed_while_an_upload_is_read_runs_alone_on_the_original(
        app, client, run_jobs, make_project):
    """The batches rewrote the files with the script of the time; the finishing
    job finds another: each file gets the new one, from the original."""
    from workers.queue import get_queue, get_redis
    from workers.runner import ThreadWorker

    make_project("study1")
    set_script(app, anonymization.SITE, "PatientName := subject\nPatientID := \"OLD\"")
    _uid, files = make_study(series=1, per_series=3, patient_name="DOE^JOHN",
                             patient_id="MRN123")
    upload_id = upload(client, files)
    with app.app_context():
        worker = ThreadWorker([get_queue()], connection=get_redis())
        worker.work(burst=True, max_jobs=2, logging_level="WARNING")  # extract, one batch
    assert client.get(f"/api/uploads/{upload_id}").get_json()["status"] != "DONE"
    set_script(app, anonymization.SITE, "PatientComments := \"NEW\"")
    run_jobs()
    assert client.get(f"/api/uploads/{upload_id}").get_json()["stored"] == 3
    stored = _prearchived(app)
    assert len(stored) == 3
    for ds in stored.values():
        assert (ds.PatientName, ds.PatientID, ds.PatientComments) == \
            ("DOE^JOHN", "MRN123", "NEW")
