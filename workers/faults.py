"""Crash points for the fault tests: a worker killed at an exact step.

A test sets SCANYARD_CRASH_AT to a point's name and SCANYARD_CRASH_MARKER to a
file that exists; the first process to reach the point removes the file and
kills itself and the worker that forked it with SIGKILL (RQ puts its work
horse in a process group of its own), as a power cut or the OOM killer
would. Without those variables a crash point costs one dictionary lookup.
"""
from __future__ import annotations

import os
import signal


def crash_point(name: str) -> None:
    """Die here, once, if a fault test asked for it."""
    if os.environ.get("SCANYARD_CRASH_AT") != name:
        return
    marker = os.environ.get("SCANYARD_CRASH_MARKER", "")
    try:
        os.unlink(marker)
    except OSError:
        return  # crashed here once already
    os.killpg(os.getpgid(os.getppid()), signal.SIGKILL)
    os.killpg(os.getpgid(0), signal.SIGKILL)
