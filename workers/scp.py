"""The DICOM receiver (``flask --app app scp``): a pynetdicom C-STORE and C-ECHO SCP.

Several AE titles share one port; each association is checked against the
receivers an admin set up (``workers.receivers``) and refused with the
A-ASSOCIATE-RJ reason a sender's log can explain. Every storage SOP class,
private ones included, is accepted in the transfer syntax the sender
proposes first, compressed ones too, and stored as received: the handler
writes the dataset bytes of the C-STORE with a file meta group in front,
without decoding them (``workers.receiving``). It answers with a DICOM
status and never raises.
"""
from __future__ import annotations

import errno
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field

from flask import Flask
from pynetdicom import AE, PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.sop_class import Verification
from pynetdicom.utils import make_target
from sqlalchemy import update

from imaging import dicomwrite
from models import DicomAssociation, db, utcnow
from workers import receivers, scp_reactors
from workers.receiving import Receiving, Unreadable, build_idle_sessions
from workers.scp_processes import LISTEN_FD_ENV, SharedSocketServer, run_processes, until_listening

log = logging.getLogger("scanyard.scp")

# C-STORE response statuses.
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # Refused: out of resources (the disk is full)
CANNOT_UNDERSTAND = 0xC210  # Failed: the dataset could not be read (pynetdicom's code)
PROCESSING_FAILURE = 0xC211  # Failed: an unexpected error in the handler (pynetdicom's code)

# A-ASSOCIATE-RJ: result "rejected (permanent)", source "service user", and the reasons.
REJECTED_PERMANENT = 0x01
SOURCE_SERVICE_USER = 0x01
REJECT_DIAGNOSTICS = {receivers.CALLED_NOT_RECOGNISED: 0x07,
                      receivers.CALLING_NOT_RECOGNISED: 0x03}

FLUSH_EVERY = 1.0
SIGNAL_CHECK_EVERY = 0.5  # seconds between the main thread's looks at SIGINT and SIGTERM
IDLE_CHECK_EVERY = 2.0
MAX_ASSOCIATIONS = 32
# The largest P-DATA PDU a sender may send us. pynetdicom's default (16 KB)
# cuts a 130 KB MR image into nine PDUs, each decoded in Python; at 128 KB
# (the most DCMTK's and Orthanc's settings allow) two, and the receiver took
# 11-14% more instances a second on one association.
MAX_PDU = 131072


@dataclass
class Peer:
    """One association: who called which AE title, and what it sent."""

    called_ae: str
    calling_ae: str
    host: str
    receiver: receivers.ReceiverInfo | None = None
    log_id: int | None = None
    instances: int = 0
    bytes: int = 0
    duplicates: int = 0
    failures: int = 0
    outcome: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)
    messages: object = None  # the association's queue of decoded requests
    wake: scp_reactors.Wake | None = None


class StoreSCP:
    """The receiver of one process: a pynetdicom server plus the upkeep thread
    that writes counts to the session rows and queues idle sessions' builds."""

    def __init__(self, app: Flask, host: str = "0.0.0.0", port: int | None = None):
        self.app = app
        self.address = (host, app.config["SCP_PORT"] if port is None else port)
        with app.app_context():
            self.directory = receivers.Directory(app.config["SCP_AE_TITLE"], db.engine)
        self.receiving = Receiving(app, self.directory)
        self.idle_seconds = app.config["SESSION_IDLE_SECONDS"]
        self._peers: dict[object, Peer] = {}
        self._server = None
        self._stop = threading.Event()
        self._upkeep: threading.Thread | None = None
        self._last_idle_check = 0.0

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self, upkeep: bool = True) -> int:
        """Start listening (in background threads); return the port."""
        ae = build_ae(self.app.config["SCP_AE_TITLE"])
        shared = os.environ.get(LISTEN_FD_ENV)
        if shared:
            self._server = ae.make_server(self.address, evt_handlers=self._handlers(),
                                          server_class=SharedSocketServer,
                                          listen_fd=int(shared))
            threading.Thread(target=make_target(self._server.serve_forever), daemon=True,
                             name="scp-acceptor").start()
            ae._servers.append(self._server)  # as start_server does: shutdown() looks there
        else:
            self._server = ae.start_server(self.address, block=False,
                                           evt_handlers=self._handlers())
        if upkeep:
            self._upkeep = threading.Thread(target=self._run_upkeep, name="scp-upkeep",
                                            daemon=True)
            self._upkeep.start()
        log.info("DICOM receiver %s listening on %s:%s", self.app.config["SCP_AE_TITLE"],
                 self.address[0], self.port)
        return self.port

    def stop(self) -> None:
        """Stop listening, end the associations and write the last counts."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
        if self._upkeep is not None:
            self._upkeep.join(timeout=10)
        self.upkeep(idle_check=False)

    def _handlers(self):
        return [(evt.EVT_REQUESTED, self._on_requested), (evt.EVT_C_STORE, self._on_store),
                (evt.EVT_RELEASED, self._on_released), (evt.EVT_ABORTED, self._on_aborted),
                (evt.EVT_CONN_CLOSE, self._on_closed)]

    def upkeep(self, idle_check: bool = True, now=None) -> list[int]:
        """Write pending counts; with `idle_check`, queue the builds of quiet
        sessions. Returns the ids of the sessions queued."""
        self.receiving.flush()
        if not idle_check:
            return []
        with self.app.app_context():
            try:
                return build_idle_sessions(self.idle_seconds, now)
            finally:
                db.session.remove()

    def _run_upkeep(self) -> None:
        while not self._stop.wait(FLUSH_EVERY):
            due = time.monotonic() - self._last_idle_check >= IDLE_CHECK_EVERY
            try:
                self.upkeep(idle_check=due)
            except Exception:  # the next round tries again; the files are safe on disk
                log.exception("receiver upkeep failed")
            if due:
                self._last_idle_check = time.monotonic()

    def _on_requested(self, event) -> None:
        """Accept or refuse an association by its called and calling AE titles."""
        assoc = event.assoc
        request = assoc.requestor.primitive
        peer = Peer(called_ae=str(request.called_ae_title).strip(),
                    calling_ae=str(request.calling_ae_title).strip(),
                    host=str(assoc.requestor.address))
        try:
            refusal = self.directory.refusal(peer.called_ae, peer.calling_ae, peer.host)
            peer.receiver = self.directory.receiver(peer.called_ae)
        except Exception:
            log.exception("receivers could not be read")
            refusal = receivers.CALLED_NOT_RECOGNISED
        peer.outcome = f"rejected: {refusal}" if refusal else "receiving"
        self._log_start(peer)
        self._peers[assoc] = peer
        if refusal:
            log.info("refused %s (%s) calling %s: %s", peer.calling_ae, peer.host,
                     peer.called_ae, refusal)
            assoc.acse.send_reject(REJECTED_PERMANENT, SOURCE_SERVICE_USER,
                                   REJECT_DIAGNOSTICS[refusal])
            # As pynetdicom's own refusals do: wait until the reply is sent.
            assoc.kill()

    def _on_store(self, event) -> int:
        """Store one instance; return its C-STORE status."""
        peer = self._peers.get(event.assoc)
        data = b""
        try:
            scp_reactors.attach(peer, event.assoc)
            request = event.request
            meta = dicomwrite.file_meta_bytes(
                request.AffectedSOPClassUID, request.AffectedSOPInstanceUID,
                event.context.transfer_syntax, implementation_uid=PYNETDICOM_IMPLEMENTATION_UID,
                implementation_version=PYNETDICOM_IMPLEMENTATION_VERSION,
                source_ae=peer.calling_ae)
            data = meta + request.DataSet.getvalue()
            stored = self.receiving.store(data, len(meta), peer.receiver.project,
                                          peer.calling_ae, peer.called_ae,
                                          syntax=event.context.transfer_syntax)
            peer_count(peer, len(data), stored)
            return SUCCESS
        except Unreadable as exc:
            return self._keep_unreadable(peer, data, str(exc))
        except Exception as exc:
            return self._failed(peer, exc)

    def _keep_unreadable(self, peer: Peer, data: bytes, reason: str) -> int:
        try:
            folder = self.receiving.quarantine(
                data, reason, calling_ae=peer.calling_ae, called_ae=peer.called_ae,
                host=peer.host)
        except Exception as exc:
            return self._failed(peer, exc)
        log.warning("instance from %s quarantined in %s: %s", peer.calling_ae, folder.name,
                    reason)
        peer_count(peer, 0, False, failed=True)
        return CANNOT_UNDERSTAND

    def _failed(self, peer: Peer | None, exc: Exception) -> int:
        if peer is not None:
            peer_count(peer, 0, False, failed=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            log.error("no room on disk for an instance from %s: %s",
                      peer.calling_ae if peer else "?", exc)
            return OUT_OF_RESOURCES
        log.exception("instance from %s could not be stored", peer.calling_ae if peer else "?")
        return PROCESSING_FAILURE

    def _on_released(self, event) -> None:
        peer = self._peers.get(event.assoc)
        if peer is not None:
            peer.outcome = "released"

    def _on_aborted(self, event) -> None:
        peer = self._peers.get(event.assoc)
        if peer is not None:
            peer.outcome = "aborted"

    def _on_closed(self, event) -> None:
        if isinstance(self._server, SharedSocketServer):
            self._server.connection_closed()
        peer = self._peers.pop(event.assoc, None)
        if peer is not None:
            scp_reactors.detach(peer, event.assoc)
            if peer.outcome == "receiving" and _released_meanwhile(event.assoc):
                peer.outcome = "released"
            self._log_end(peer)

    def _log_start(self, peer: Peer) -> None:
        try:
            with self.app.app_context():
                row = DicomAssociation(calling_ae=peer.calling_ae[:16], host=peer.host[:64],
                                       called_ae=peer.called_ae[:16], outcome=peer.outcome)
                db.session.add(row)
                db.session.commit()
                peer.log_id = row.id
                db.session.remove()
        except Exception:  # the log is for people; receiving goes on without it
            log.exception("association log failed")

    def _log_end(self, peer: Peer) -> None:
        if peer.log_id is None:
            return
        outcome = peer.outcome if peer.outcome != "receiving" else "connection closed"
        if peer.failures:
            outcome += f", {peer.failures} failed"
        if peer.duplicates:
            outcome += f", {peer.duplicates} duplicate(s)"
        try:
            with self.app.app_context():
                db.session.execute(update(DicomAssociation).where(
                    DicomAssociation.id == peer.log_id).values(
                    ended=utcnow(), instances=peer.instances, bytes=peer.bytes,
                    failures=peer.failures, outcome=outcome))
                db.session.commit()
                db.session.remove()
        except Exception:
            log.exception("association log failed")


def peer_count(peer: Peer, size: int, stored: bool, failed: bool = False) -> None:
    with peer.lock:
        if failed:
            peer.failures += 1
        elif stored:
            peer.instances += 1
            peer.bytes += size
        else:
            peer.duplicates += 1


def build_ae(ae_title: str) -> AE:
    """Return the receiver's application entity: storage and verification SCP."""
    # Accept every storage SOP class, standard or private, in the transfer
    # syntax the sender prefers; what pydicom cannot read goes to quarantine.
    pynetdicom_config.UNRESTRICTED_STORAGE_SERVICE = True
    scp_reactors.install()
    ae = AE(ae_title=ae_title)
    ae.require_called_aet = False  # several AE titles share the port: checked per association
    ae.maximum_associations = MAX_ASSOCIATIONS
    ae.maximum_pdu_size = MAX_PDU
    ae.add_supported_context(Verification)
    return ae


def run_scp(app: Flask, host: str, port: int) -> None:
    """Run the receiver until SIGINT or SIGTERM: SCANYARD_SCP_PROCESSES processes
    on one listening socket, or this one process alone."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    processes = app.config["SCP_PROCESSES"]
    if processes > 1 and not os.environ.get(LISTEN_FD_ENV):
        run_processes(host, port, processes)
        return
    scp = StoreSCP(app, host, port)
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    if os.environ.get(LISTEN_FD_ENV) and not until_listening(stopping):
        return
    scp.start()
    # The kernel may hand SIGTERM to any of the receiver's threads; Python then
    # runs the handler only when the main thread next runs, which a wait
    # without a timeout would never do (a receiver outliving `flask scp`).
    while not stopping.wait(SIGNAL_CHECK_EVERY):
        pass
    log.info("stopping the DICOM receiver")
    scp.stop()


def _released_meanwhile(assoc, wait: float = 0.2) -> bool:
    """Return True when the association's own thread is releasing it.

    pynetdicom's association thread sends the A-RELEASE response before it
    marks the association released and fires EVT_RELEASED; a sender that
    closes its connection at once can have the close seen (on the other
    thread) first, and the log would say "connection closed". The close
    waits for the mark a moment, while the association's thread runs.
    """
    if threading.current_thread() is assoc:
        return assoc.is_released
    deadline = time.monotonic() + wait
    while not assoc.is_released and assoc.is_alive() and time.monotonic() < deadline:
        time.sleep(0.002)
    return assoc.is_released
