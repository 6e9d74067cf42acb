"""The DICOM receiver as several processes on one port (``flask scp`` with
SCANYARD_SCP_PROCESSES > 1): pynetdicom serves the associations of one
process under one interpreter lock, so `flask scp` binds the socket, starts
several receiver processes on it (two per core by default, so that
associations sent at once seldom share one), listens once all are ready
and starts again any that dies; each process accepts on the shared socket.
"""
from __future__ import annotations

import ctypes
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from pynetdicom.transport import ThreadedAssociationServer

log = logging.getLogger("scanyard.scp")

# A listening socket opened by `flask scp` and shared by its receiver processes;
# the pause before accepting per association a process already holds.
ACCEPT_DELAY = 0.01
LISTEN_FD_ENV = "SCANYARD_SCP_LISTEN_FD"
# The pipe on which each receiver process says it is ready to accept; the
# socket listens once all are, so that the first senders spread over them
# (a process still starting would leave its share to the others), and an
# open port means the receiver is ready.
READY_FD_ENV = "SCANYARD_SCP_READY_FD"
READY_WAIT = 60.0  # then listen anyway, if one process at least is ready
LISTEN_BACKLOG = 128


class SharedSocketServer(ThreadedAssociationServer):
    """A pynetdicom server accepting on a listening socket that other receiver
    processes share (its file descriptor inherited from `flask scp`): a new
    association goes to whichever process accepts it first, so associations
    spread over the processes, and over the cores."""

    def __init__(self, *args, listen_fd: int, **kwargs):
        self._listen_fd = listen_fd
        self._open = 0  # connections accepted and not yet ended
        self._open_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        self.socket.close()
        self.socket = socket.socket(fileno=os.dup(self._listen_fd))
        # Non-blocking: a process that loses the race for a connection goes
        # back to waiting instead of blocking in accept().
        self.socket.settimeout(0.0)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        pass  # `flask scp` made it listen

    def get_request(self):
        # Every process wakes for a new connection and the first to call
        # accept() gets it. A process that has just taken one pauses before
        # it waits again, the longer the more it holds, so that senders that
        # connect at once are spread over the processes.
        request = super().get_request()
        with self._open_lock:
            self._open += 1
            pause = min(0.05, ACCEPT_DELAY * self._open)
        time.sleep(pause)
        return request

    def connection_closed(self) -> None:
        """An association's connection ended (pynetdicom's EVT_CONN_CLOSE)."""
        with self._open_lock:
            self._open = max(0, self._open - 1)

    def server_close(self) -> None:
        self.socket.close()  # no shutdown(): the other processes listen on it


def shared_socket(host: str, port: int) -> socket.socket:
    """Bind the receiver's socket for processes to share (inheritable); it
    listens once they are ready (`_run_processes`)."""
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def until_listening(stopping: threading.Event) -> bool:
    """In a receiver process on the shared socket: tell `flask scp` that this
    one is ready, then wait until the socket listens. False when told to
    stop first."""
    ready = os.environ.pop(READY_FD_ENV, None)
    if ready:  # absent in a process started again once the socket listens
        try:
            os.write(int(ready), b".")
        except OSError:  # `flask scp` is gone: this process gets SIGTERM
            pass
        os.close(int(ready))
    with socket.socket(fileno=os.dup(int(os.environ[LISTEN_FD_ENV]))) as sock:
        while not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            if stopping.wait(0.01):
                return False
    return True


def run_processes(host: str, port: int, processes: int) -> None:
    """Bind the socket, run `processes` receivers on it (``flask scp`` each,
    which finds the socket in LISTEN_FD_ENV), listen once they are ready and
    start again any that dies, until SIGINT or SIGTERM, which they are passed."""
    sock = shared_socket(host, port)
    ready_read, ready_write = os.pipe()
    env = {**os.environ, LISTEN_FD_ENV: str(sock.fileno()), READY_FD_ENV: str(ready_write),
           "SCANYARD_SCP_PROCESSES": str(processes)}
    fds = [sock.fileno(), ready_write]
    command = [sys.executable, "-m", "flask", "--app", "app", "scp", "--host", host,
               "--port", str(port)]
    root = Path(__file__).resolve().parent.parent

    def start() -> subprocess.Popen:
        return subprocess.Popen(command, env=env, cwd=root, pass_fds=tuple(fds),
                                preexec_fn=_die_with_parent)

    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    children = [start() for _ in range(processes)]
    ready, began = 0, time.monotonic()
    while not stopping.is_set() and ready < processes:
        if ready and time.monotonic() - began > READY_WAIT:
            log.warning("%d of %d receiver processes ready after %.0f s; listening",
                        ready, processes, READY_WAIT)
            break
        if select.select([ready_read], [], [], 0.5)[0]:
            ready += len(os.read(ready_read, processes))
        _restart_dead(children, start, stopping)
    # Processes started from now on find the socket listening.
    del env[READY_FD_ENV]
    fds.remove(ready_write)
    os.close(ready_write)
    os.close(ready_read)
    if not stopping.is_set():
        sock.listen(LISTEN_BACKLOG)
        log.info("DICOM receiver: %d processes on %s:%s", processes, host, port)
    while not stopping.wait(0.5):
        _restart_dead(children, start, stopping)
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
    sock.close()


def _restart_dead(children: list[subprocess.Popen], start, stopping: threading.Event) -> None:
    """Start again each receiver process that exited (after a pause)."""
    for n, child in enumerate(children):
        if child.poll() is not None and not stopping.is_set():
            log.warning("receiver process %d exited with %s; starting it again",
                        child.pid, child.returncode)
            if stopping.wait(1.0):
                return
            children[n] = start()


def _die_with_parent() -> None:
    """In a receiver process: get SIGTERM when the process that started it dies
    (killed even), so none keeps listening on the socket after it (Linux)."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
