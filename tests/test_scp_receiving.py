"""The DICOM receiver, end to end: real SCUs (pynetdicom's, DCMTK's storescu)
send over TCP on loopback to the real receiver, a real worker builds the
sessions, and the prearchive shows them."""
from __future__ import annotations

import datetime as dt
import errno
import io
import json
import os
import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from sqlalchemy import select

from imaging import dicomio, dicomwrite, routing
from models import DicomAssociation, PrearchiveSession, Receiver, RoutingRule, db, utcnow
from tests.dicomgen import make_series, make_study, write_files
from tests.scpnet import echo, needs_storescu, send, storescu
from workers import instance_files, prearchive, receiving, scp_reactors
from workers.building import session_files
from workers.scp import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, PROCESSING_FAILURE, StoreSCP


@pytest.fixture
def scp(app):
    server = StoreSCP(app, "127.0.0.1", 0)
    server.directory.cache_seconds = 0  # admins' changes show at once in tests
    server.start(upkeep=False)
    yield server
    server.stop()


def settle(app, scp, run_jobs):
    """Write the counts, queue the builds as if the idle time had passed, run them."""
    scp.upkeep(now=utcnow() + dt.timedelta(hours=1))
    run_jobs()


def rows(app) -> list[PrearchiveSession]:
    with app.app_context():
        found = list(db.session.scalars(select(PrearchiveSession).order_by(PrearchiveSession.id)))
        db.session.expunge_all()
        return found


def record_of(app, ps) -> dict:
    with app.app_context():
        return prearchive.load_record(db.session.get(PrearchiveSession, ps.id))


def folder_of(app, ps) -> Path:
    with app.app_context():
        return prearchive.session_dir(db.session.get(PrearchiveSession, ps.id))


def study_files(tmp_path, name="study", **kw) -> tuple[str, list[Path]]:
    study_uid, files = make_study(**kw)
    return study_uid, write_files(tmp_path / name, files)


def test_multi_series_study_in_one_association_becomes_one_ready_session_with_its_scans(
        app, scp, run_jobs, tmp_path):
    study_uid, paths = study_files(tmp_path, series=3, per_series=4)
    assert send(scp.port, paths) == [0] * 12
    scp.upkeep(idle_check=False)
    [ps] = rows(app)
    assert (ps.status, ps.file_count, ps.source, ps.sender_ae) == (
        "RECEIVING", 12, "scp", "TESTSCU")
    settle(app, scp, run_jobs)
    [ps] = rows(app)
    assert ps.status == "READY" and ps.study_uid == study_uid
    assert [(s["id"], s["files"]) for s in ps.scans] == [("1", 4), ("2", 4), ("3", 4)]
    folder = folder_of(app, ps)
    for path in paths:
        uid = dcmread(path, stop_before_pixels=True).SOPInstanceUID
        number = dcmread(path, stop_before_pixels=True).SeriesNumber
        assert (folder / "SCANS" / str(number) / "DICOM" / f"{uid}.dcm").exists()
    with app.app_context():
        log = db.session.scalar(select(DicomAssociation))
        assert (log.calling_ae, log.called_ae, log.instances, log.outcome) == (
            "TESTSCU", "SCANYARD", 12, "released")
        assert log.bytes > 12 * 1000 and log.ended is not None


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_an_association_leaves_no_wake_pipe_open_when_it_ends(app, scp, tmp_path):
    _uid, paths = study_files(tmp_path, series=1, per_series=3)
    send(scp.port, paths)  # opens pynetdicom's modules and the database first
    before = _open_fds()
    assert send(scp.port, paths) == [0] * 3
    deadline = time.monotonic() + 5
    while _open_fds() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _open_fds() <= before


def test_a_dul_reactor_wakes_for_a_pdu_or_a_response_at_once():
    import queue
    import socket
    from types import SimpleNamespace

    ours, theirs = socket.socketpair()
    dul = SimpleNamespace(socket=SimpleNamespace(socket=ours), to_provider_queue=queue.Queue())
    wake = scp_reactors.Wake(dul)
    try:
        started = time.monotonic()
        assert wake.wait(0.05) and time.monotonic() - started >= 0.04  # nothing: the timeout

        def later(action):
            threading.Timer(0.1, action).start()
            started = time.monotonic()
            assert wake.wait(10)
            return time.monotonic() - started

        assert later(lambda: dul.to_provider_queue.put("response")) < 5
        assert dul.to_provider_queue.get_nowait() == "response"
        assert later(lambda: theirs.sendall(b"PDU")) < 5
        assert ours.recv(3) == b"PDU"
    finally:
        wake.close()
        ours.close()
        theirs.close()
    assert wake.wait(0.01) is False  # closed: the reactor sleeps as pynetdicom's does


@pytest.mark.parametrize("name", ["MR_small.dcm", "CT_small.dcm", "MR_small_implicit.dcm",
                                  "MR_small_bigendian.dcm", "image_dfl.dcm", "SC_rgb_jpeg.dcm",
                                  "rtplan.dcm"])
def test_the_routing_header_read_in_the_associations_syntax_is_dcmreads(name):
    data = open(get_testdata_file(name), "rb").read()
    syntax = dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID
    tags = routing.header_tags()
    offset = dicomio.dataset_offset(data)
    by_dcmread = receiving.read_header(data, tags)
    by_syntax = receiving.read_header(data, tags, offset, syntax)
    fields = ("study_uid", "series_uid", "sop_uid", "series_number", "study_date")
    assert [getattr(by_syntax, f) for f in fields] == [getattr(by_dcmread, f) for f in fields]
    for tag in tags:
        assert receiving._text(by_syntax.dataset, tag) == receiving._text(by_dcmread.dataset, tag)
    with pytest.raises(receiving.Unreadable):  # cut inside an element's header
        receiving.read_header(data[:offset + 5], tags, offset, syntax)


def test_a_store_response_is_the_bytes_pynetdicom_would_send():
    from pynetdicom.dimse_messages import C_STORE_RSP
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.dsutils import encode

    def response(message_id, status, sop_class, instance, **more):
        rsp = C_STORE()
        rsp.MessageIDBeingRespondedTo, rsp.Status = message_id, status
        rsp.AffectedSOPClassUID, rsp.AffectedSOPInstanceUID = sop_class, instance
        for name, value in more.items():
            setattr(rsp, name, value)
        return rsp

    def pynetdicom_bytes(rsp):
        message = C_STORE_RSP()
        message.primitive_to_message(rsp)
        return encode(message.command_set, True, True)

    mr, ct = "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.2"
    for message_id, status, sop_class, instance in [
            (1, 0x0000, mr, "1.2.3.4"), (65535, 0xB000, ct, "1.2.3.45"),
            (7, 0xA700, mr, generate_uid()), (300, 0xC211, ct, "1.2")]:
        rsp = response(message_id, status, sop_class, instance)
        assert scp_reactors.store_response(rsp) == pynetdicom_bytes(rsp)
    # Anything more than a plain response is left to pynetdicom.
    assert scp_reactors.store_response(
        response(1, 0xC210, mr, "1.2.3", ErrorComment="cannot read")) is None
    assert scp_reactors.store_response(
        response(1, 0xC210, mr, "1.2.3", OffendingElement=[0x00100010])) is None
    assert scp_reactors.store_response(response(None, 0, mr, "1.2.3")) is None
    assert scp_reactors.store_response(response(1, 0x1FFFF, mr, "1.2.3")) is None
    request = response(1, 0, mr, "1.2.3")
    request.MessageIDBeingRespondedTo = None
    assert scp_reactors.store_response(request) is None


@needs_storescu
def test_storescu_sends_a_study_that_becomes_one_ready_session(app, scp, run_jobs, tmp_path):
    _uid, paths = study_files(tmp_path, series=2, per_series=3)
    storescu(scp.port, paths[0].parent)
    settle(app, scp, run_jobs)
    [ps] = rows(app)
    assert (ps.status, ps.scan_count, ps.file_count, ps.sender_ae) == ("READY", 2, 6, "STORESCU")


@needs_storescu
def test_a_study_split_over_associations_and_sent_by_two_senders_at_once_is_one_session(
        app, scp, run_jobs, tmp_path):
    _uid, paths = study_files(tmp_path, series=2, per_series=8)
    assert send(scp.port, paths[:5]) == [0] * 5
    assert send(scp.port, paths[5:10], calling="OTHERSCU") == [0] * 5
    # Now two senders at once, each with the whole study.
    proc = storescu(scp.port, paths[0].parent, wait=False)
    statuses = []
    sender = threading.Thread(target=lambda: statuses.extend(send(scp.port, paths)))
    sender.start()
    sender.join(timeout=60)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert statuses == [0] * 16
    settle(app, scp, run_jobs)
    [ps] = rows(app)
    assert (ps.status, ps.file_count) == ("READY", 16)
    assert len(session_files(folder_of(app, ps))) == 16


def test_the_same_instance_sent_twice_is_stored_once(app, scp, run_jobs, tmp_path):
    _uid, paths = study_files(tmp_path, series=1, per_series=2)
    assert send(scp.port, paths) == [0, 0]
    assert send(scp.port, paths[:1], calling="AGAIN") == [0]
    settle(app, scp, run_jobs)
    [ps] = rows(app)
    assert ps.file_count == 2 and len(session_files(folder_of(app, ps))) == 2
    with app.app_context():
        again = db.session.scalar(select(DicomAssociation).filter_by(calling_ae="AGAIN"))
        assert again.instances == 0 and "1 duplicate" in again.outcome


def test_instances_arriving_after_ready_join_the_session_again(app, scp, run_jobs, tmp_path):
    study_uid = generate_uid()
    first = write_files(tmp_path / "a", make_series(study_uid, 3, series_number=1))
    later = write_files(tmp_path / "b", make_series(study_uid, 2, series_number=2))
    send(scp.port, first)
    settle(app, scp, run_jobs)
    [ready] = rows(app)
    assert ready.status == "READY"
    send(scp.port, later)
    scp.upkeep(idle_check=False)
    [again] = rows(app)
    assert (again.id, again.status, again.file_count) == (ready.id, "RECEIVING", 5)
    settle(app, scp, run_jobs)
    [built] = rows(app)
    assert (built.id, built.status, built.scan_count, built.file_count) == (
        ready.id, "READY", 2, 5)


def test_the_called_ae_title_routes_to_its_project(app, scp, run_jobs, tmp_path, make_project):
    make_project("study1")
    with app.app_context():
        db.session.add(Receiver(ae_title="STUDY1", project="study1"))
        db.session.commit()
    _uid, paths = study_files(tmp_path, series=1, per_series=2, study_description="other")
    assert send(scp.port, paths, called="STUDY1") == [0, 0]
    settle(app, scp, run_jobs)
    [ps] = rows(app)
    assert (ps.project, ps.subject, ps.session) == ("study1", "DOE_JOHN", "P001")


def test_comments_route_and_ask_for_auto_archive(app, client, scp, run_jobs, tmp_path,
                                                  make_project):
    make_project("study2")
    _uid, paths = study_files(tmp_path, series=1, per_series=2,
                              PatientComments="Project:study2 Subject:S9 Session:E9 AA:true")
    send(scp.port, paths)
    settle(app, scp, run_jobs)
    assert rows(app) == []  # AA:true: archived as soon as it was built
    with app.app_context():
        from models import ImagingSession

        session = db.session.scalar(select(ImagingSession).filter_by(label="E9"))
        assert (session.project.label, session.subject.label) == ("study2", "S9")
        assert sum(s.instance_count for s in session.scans) == 2


def test_a_custom_rule_routes_before_comments_and_defaults(app, scp, run_jobs, tmp_path,
                                                            make_project):
    make_project("study3")
    with app.app_context():
        db.session.add_all([
            RoutingRule(field="project", rule=r"(0008,1030):^Proj-(\w+)", position=1),
            RoutingRule(field="subject", rule=r"(0010,0020):(\d+)$", position=2)])
        db.session.commit()
    _uid, paths = study_files(tmp_path, series=1, per_series=1, study_description="Proj-study3",
                              patient_id="SUBJ042", PatientComments="Project:study9")
    send(scp.port, paths)
    settle(app, scp, run_jobs)
    [ps] = rows(app)
    assert (ps.project, ps.subject) == ("study3", "042")


def test_a_study_for_no_existing_project_waits_in_the_unassigned_prearchive(
        app, scp, run_jobs, tmp_path):
    _uid, paths = study_files(tmp_path, series=1, per_series=1, study_description="nosuch")
    send(scp.port, paths)
    settle(app, scp, run_jobs)
    [ps] = rows(app)
    assert ps.project is None and ps.project_key == "_unassigned" and ps.status == "READY"
    assert any("'nosuch'" in line["message"] for line in record_of(app, ps)["log"])


def test_unknown_disabled_and_not_allowed_callers_are_rejected_with_their_reason(
        app, scp, tmp_path):
    _uid, paths = study_files(tmp_path, series=1, per_series=1)
    called_not_recognised = ("rejected", 1, 1, 7)
    assert send(scp.port, paths, called="NOSUCHAE") == called_not_recognised
    with app.app_context():
        db.session.add_all([Receiver(ae_title="OFF", enabled=False),
                            Receiver(ae_title="FENCED", allowed="CONSOLE1\n10.0.0.0/8")])
        db.session.commit()
    assert send(scp.port, paths, called="OFF") == called_not_recognised
    assert send(scp.port, paths, called="FENCED") == ("rejected", 1, 1, 3)
    assert send(scp.port, paths, called="FENCED", calling="CONSOLE1") == [0]
    with app.app_context():  # an admin's change counts without a restart
        db.session.scalar(select(Receiver).filter_by(ae_title="FENCED")).allowed = "127.0.0.1"
        db.session.commit()
    assert send(scp.port, paths, called="FENCED") == [0]
    assert echo(scp.port, called="NOSUCHAE") == ("rejected", 7)
    with app.app_context():
        outcomes = list(db.session.scalars(select(DicomAssociation.outcome)
                                           .order_by(DicomAssociation.id)))
    assert outcomes[:3] == ["rejected: called AE title not recognised"] * 2 + [
        "rejected: calling AE title not recognised"]


def test_a_compressed_transfer_syntax_is_stored_byte_for_byte(app, scp, run_jobs, tmp_path):
    from workers import anonymization

    with app.app_context():  # no site anonymization script: the bytes stay as sent
        anonymization.save_script(anonymization.SITE, "", False, "test")
        db.session.commit()
    original = Path(get_testdata_file("MR_small_jp2klossless.dcm")).read_bytes()
    path = tmp_path / "jp2k.dcm"
    path.write_bytes(original)
    assert send(scp.port, [path]) == [0]
    settle(app, scp, run_jobs)
    [ps] = rows(app)
    [stored] = [folder_of(app, ps) / name for name in session_files(folder_of(app, ps))]
    data = stored.read_bytes()
    assert data[dicomio.dataset_offset(data):] == original[dicomio.dataset_offset(original):]
    meta = dcmread(stored, stop_before_pixels=True).file_meta
    assert meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
    assert meta.SourceApplicationEntityTitle == "TESTSCU"


def _meta(transfer_syntax="1.2.840.10008.1.2.1") -> bytes:
    return dicomwrite.file_meta_bytes("1.2.840.10008.5.1.4.1.1.4", generate_uid(),
                                   transfer_syntax, implementation_uid="1.2.3")


def test_a_header_pydicom_cannot_parse_is_unreadable_with_the_reason():
    with pytest.raises(receiving.Unreadable, match="could not be read: Error -3"):
        receiving.read_header(_meta("1.2.840.10008.1.2.1.99") + b"not deflated", ())


def test_an_unreadable_dataset_gets_c210_and_its_bytes_go_to_quarantine(app, scp, tmp_path):
    garbage = b"\x08\x00\x05\x00CS\x7f\x7f" + b"not DICOM" * 20
    ds = dcmread(io.BytesIO(make_series(generate_uid(), 1)[0]))
    del ds.StudyInstanceUID
    ds.save_as(tmp_path / "nostudy.dcm", enforce_file_format=True)
    (tmp_path / "garbage.dcm").write_bytes(_meta() + garbage)
    paths = [tmp_path / "garbage.dcm", tmp_path / "nostudy.dcm"]
    assert send(scp.port, paths) == [CANNOT_UNDERSTAND, CANNOT_UNDERSTAND]
    quarantine = Path(app.config["DATA_DIR"]) / "quarantine"
    kept = sorted(quarantine.iterdir())
    assert len(kept) == 2
    reasons = [json.loads((q / "reasons.json").read_text())[0]["reason"] for q in kept]
    assert reasons == ["missing StudyInstanceUID"] * 2
    stored = [(q / "instance.dcm").read_bytes() for q in kept]
    assert any(data.endswith(garbage) for data in stored)
    assert rows(app) == []
    assert echo(scp.port) == 0  # and it goes on serving


def test_a_full_disk_answers_a700_and_an_unexpected_error_c211(app, scp, tmp_path, monkeypatch):
    _uid, paths = study_files(tmp_path, series=1, per_series=1)

    def disk_full(*_args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(receiving, "write_instance", disk_full)
    assert send(scp.port, paths) == [OUT_OF_RESOURCES]
    monkeypatch.setattr(receiving, "write_instance", lambda *_a: 1 / 0)
    assert send(scp.port, paths) == [PROCESSING_FAILURE]
    monkeypatch.undo()
    assert send(scp.port, paths) == [0]


def test_c_echo_is_answered(scp):
    assert echo(scp.port) == 0


def test_senders_may_send_pdus_of_128_kb(scp):
    ae = AE(ae_title="ECHOSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="SCANYARD")
    try:
        assert assoc.is_established
        assert assoc.acceptor.maximum_length == 131072
    finally:
        assoc.release()


def test_the_receiver_builds_a_session_once_it_is_quiet(app, run_jobs, tmp_path):
    app.config["SESSION_IDLE_SECONDS"] = 1
    server = StoreSCP(app, "127.0.0.1", 0)
    server.start()
    try:
        _uid, paths = study_files(tmp_path, series=1, per_series=2)
        send(server.port, paths)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and [p.status for p in rows(app)] != [
                "QUEUED_BUILDING"]:
            time.sleep(0.2)
        assert [p.status for p in rows(app)] == ["QUEUED_BUILDING"]
    finally:
        server.stop()
    run_jobs()
    assert [(p.status, p.file_count) for p in rows(app)] == [("READY", 2)]


def test_received_files_get_the_site_script_snapshots_and_the_projects_auto_archive(
        app, scp, run_jobs, tmp_path, make_project):
    from models import ImagingSession, Project

    make_project("lab4", prearchive_code=4)
    _uid, paths = study_files(tmp_path, series=1, per_series=3, study_description="lab4")
    assert send(scp.port, paths) == [0, 0, 0]
    settle(app, scp, run_jobs)
    assert rows(app) == []  # code 4: archived once built
    with app.app_context():
        session = db.session.scalar(select(ImagingSession).join(Project)
                                    .where(Project.label == "lab4"))
        folder = Path(app.config["DATA_DIR"]) / "archive/lab4" / session.subject.label / \
            session.label / "SCANS"
        stored = sorted(folder.glob("*/DICOM/*.dcm"))
        assert len(stored) == 3
        # XNAT's default site script: the labels replace the identifying values.
        assert str(dcmread(stored[0]).PatientName) == session.subject.label
        assert list(folder.glob("*/SNAPSHOTS/thumbnail.png"))


def test_a_folder_flush_that_fails_is_not_taken_for_the_files_waiting_on_it(
        tmp_path, monkeypatch):
    # Three files in one folder. The second's and third's threads arrive
    # while the first's flush runs and wait; one of them then flushes for
    # both, and that flush fails: it raises, and the other must flush the
    # folder itself before it returns (its instance then acknowledged).
    syncs = instance_files.FolderSync()
    calls = []

    def fsync_dir(folder):
        calls.append(folder)
        if len(calls) == 1:  # the first flush ends once the other two wait
            deadline = time.monotonic() + 10
            while syncs._folders[folder].asked < 3:
                assert time.monotonic() < deadline
                time.sleep(0.01)
        elif len(calls) == 2:
            raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(instance_files.storage, "fsync_dir", fsync_dir)
    outcomes = []

    def sync():
        try:
            syncs.sync(tmp_path)
            outcomes.append("flushed")
        except OSError as exc:
            outcomes.append(exc.errno)

    threads = [threading.Thread(target=sync)]
    threads[0].start()
    while not calls:
        time.sleep(0.01)
    threads += [threading.Thread(target=sync), threading.Thread(target=sync)]
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(outcomes, key=str) == sorted(["flushed", "flushed", errno.EIO], key=str)
    assert len(calls) == 3  # the failed flush was made again
    assert not syncs._folders  # nothing kept of the folder once all are done
