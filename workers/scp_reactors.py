"""How the DICOM receiver's associations run inside pynetdicom.

pynetdicom runs two reactor threads per association that poll for work
every millisecond, and builds each C-STORE response as a pydicom dataset.
With a sender that waits for each response, both add to the time of every
instance. Here the reactors wait for their work instead (attach), and a
plain C-STORE response is written straight to its bytes.
"""
from __future__ import annotations

import logging
import os
import select
import struct
import threading
import time

from pynetdicom import _config as pynetdicom_config
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA


def install() -> None:
    """Set pynetdicom up for the receiver (before its AE is made)."""
    # pynetdicom's standard handlers describe every message and PDU in text
    # that its logger drops below INFO (the receiver's setting). They stay
    # bound where that text is shown.
    shown = logging.getLogger("pynetdicom").isEnabledFor(logging.INFO)
    pynetdicom_config.LOG_HANDLER_LEVEL = "standard" if shown else "none"
    _install_clocks()


_thread = threading.local()  # the association a reactor thread serves


class _ReactorClock:
    """The `time` module as pynetdicom's association reactor sees it.

    The reactor looks for a decoded request every millisecond, sleeping in
    between: with a sender that waits for each response, that adds up to a
    millisecond to every instance. Once an association has sent an
    instance, its reactor waits on the queue of decoded requests instead,
    for at most the same millisecond: it wakes as soon as one arrives, and
    costs no more CPU than the sleep.
    """

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def sleep(self, seconds: float) -> None:
        peer = getattr(_thread, "peer", None)
        messages = peer.messages if peer is not None else None
        if seconds == 0.001 and messages is not None:
            with messages.not_empty:
                if not messages._qsize():
                    messages.not_empty.wait(seconds)
            return
        self._real.sleep(seconds)


class _DulClock(_ReactorClock):
    """The `time` module as pynetdicom's DUL reactor sees it.

    The DUL reactor sleeps a millisecond whenever it found nothing to do,
    both while the sender's next PDU is on its way and while our response
    waits to be sent. Once an association has sent an instance, its DUL
    waits for either instead (Wake), for at most that millisecond.
    """

    def sleep(self, seconds: float) -> None:
        wake = getattr(threading.current_thread(), "scanyard_wake", None)
        if wake is None or not wake.wait(seconds):
            self._real.sleep(seconds)


class Wake:
    """What a DUL reactor waits for: data on the association's socket, or a
    primitive put on its queue to send (which writes a byte to a pipe).

    The pipe is read, written and closed under a lock: once closed, its
    file numbers may belong to a file another thread is writing.
    """

    def __init__(self, dul):
        self._socket = dul.socket.socket
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self.closed = False
        self._lock = threading.Lock()
        queue, put = dul.to_provider_queue, dul.to_provider_queue.put

        def put_and_wake(item, block=True, timeout=None):
            put(item, block, timeout)
            self.kick()

        queue.put = put_and_wake

    def kick(self) -> None:
        with self._lock:
            if self.closed:
                return
            try:
                os.write(self._write, b"\0")
            except BlockingIOError:  # the pipe is full: a wake is due anyway
                pass

    def wait(self, seconds: float) -> bool:
        """Wait up to `seconds` for something to do; False when it cannot."""
        if self.closed:
            return False
        try:
            ready, _, _ = select.select([self._socket, self._read], [], [], seconds)
        except (OSError, ValueError):  # the socket or the pipe was closed meanwhile
            return False
        if self._read in ready:
            with self._lock:
                if self.closed:
                    return False
                try:
                    os.read(self._read, 4096)
                except BlockingIOError:
                    pass
        return True

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            for fd in (self._read, self._write):
                os.close(fd)


def _install_clocks() -> None:
    import pynetdicom.association as association
    import pynetdicom.dul as dul

    if not isinstance(association.time, _ReactorClock):
        association.time = _ReactorClock(time)
    if not isinstance(dul.time, _DulClock):
        dul.time = _DulClock(time)


def attach(peer, assoc) -> None:
    """Let the association's reactors wait for work rather than poll for it,
    and its C-STORE responses skip pynetdicom's datasets (runs in its
    reactor thread, at each instance; does its work once)."""
    if peer.messages is not None:
        return
    _thread.peer = peer
    if assoc.dul.socket is not None and assoc.dul.socket.socket is not None:
        peer.wake = Wake(assoc.dul)
        assoc.dul.scanyard_wake = peer.wake
    assoc.dimse.send_msg = _Responses(assoc.dimse)
    peer.messages = assoc.dimse.msg_queue


def detach(peer, assoc) -> None:
    """The association ended: its DUL sleeps as pynetdicom's does."""
    peer.messages = None
    if peer.wake is not None:
        assoc.dul.scanyard_wake = None
        peer.wake.close()


# C-STORE-RSP command set elements (group 0000, implicit VR little endian).
_US = struct.Struct("<HHIH")
_UL = struct.Struct("<HHII")
_C_STORE_RSP, _NO_DATA_SET = 0x8001, 0x0101


def store_response(primitive) -> bytes | None:
    """Return the command set of a C-STORE response as pynetdicom encodes it,
    for a plain one (status, message ID and the two UIDs); else None."""
    if type(primitive) is not C_STORE or primitive.MessageIDBeingRespondedTo is None:
        return None
    if primitive.ErrorComment is not None or primitive.OffendingElement is not None:
        return None
    sop_class, sop_instance = _uid(0x0002, primitive.AffectedSOPClassUID), \
        _uid(0x1000, primitive.AffectedSOPInstanceUID)
    if sop_class is None or sop_instance is None or primitive.Status is None:
        return None
    try:
        body = b"".join((sop_class, _US.pack(0, 0x0100, 2, _C_STORE_RSP),
                         _US.pack(0, 0x0120, 2, primitive.MessageIDBeingRespondedTo),
                         _US.pack(0, 0x0800, 2, _NO_DATA_SET),
                         _US.pack(0, 0x0900, 2, primitive.Status), sop_instance))
    except struct.error:  # a status that is no US value: pynetdicom says what is wrong
        return None
    return _UL.pack(0, 0, 4, len(body)) + body


def _uid(element: int, value) -> bytes | None:
    if not value or not str(value).isascii():
        return None
    raw = str(value).encode()
    if len(raw) % 2:
        raw += b"\0"
    return struct.pack("<HHI", 0, element, len(raw)) + raw


class _Responses:
    """An association's DIMSE send_msg that sends a plain C-STORE response
    itself: pynetdicom builds it as a dataset, which it encodes twice (once
    for its length). Any other message, or an association with handlers
    for the messages sent, goes through pynetdicom."""

    def __init__(self, dimse):
        self._dimse, self._send = dimse, dimse.send_msg

    def __call__(self, primitive, context_id: int) -> None:
        command = store_response(primitive)
        limit = self._dimse.maximum_pdu_size
        if command is None or (limit and len(command) + 6 > limit) or \
                self._dimse.assoc.get_handlers(evt.EVT_DIMSE_SENT):
            self._send(primitive, context_id)
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, b"\x03" + command))
        self._dimse.dul.send_pdu(pdata)
