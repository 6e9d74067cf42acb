"""Orthanc as a reference for the benchmarks: a private server on free ports.

    from bench.orthanc import Orthanc, available
    server = Orthanc(work_folder)        # starts it; storage and index in work_folder
    seconds, stored = server.upload_zip(path)
    server.stop()

Debian's ``orthanc`` package (``apt-get install orthanc``) provides the
binary. The server gets a configuration of its own (no plugins, no
authentication, listening on 127.0.0.1 only), so the machine's Orthanc, if one
runs, is left alone. Not a test.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import requests

BINARY = "Orthanc"
AE_TITLE = "ORTHANC"


def available() -> bool:
    return shutil.which(BINARY) is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """An Orthanc server with its storage and index in `work`."""

    called = AE_TITLE

    def __init__(self, work: Path, dicom_threads: int = 4):
        work.mkdir(parents=True, exist_ok=True)
        self.http_port, self.port = free_port(), free_port()
        self.base = f"http://127.0.0.1:{self.http_port}"
        config = {
            "Name": "scanyard-bench", "StorageDirectory": str(work / "storage"),
            "IndexDirectory": str(work / "index"), "HttpPort": self.http_port,
            "DicomPort": self.port, "DicomAet": AE_TITLE, "DicomCheckCalledAet": False,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "Plugins": [],
            "DicomThreadsCount": dicom_threads, "HttpTimeout": 3600,
            "StorageCompression": False, "SaveJobs": False,
        }
        path = work / "orthanc.json"
        path.write_text(json.dumps(config, indent=1))
        (work / "logs").mkdir(exist_ok=True)
        # DCMTK inside Orthanc reads TCP_NODELAY as storescu does: without it each
        # response waits for a delayed ACK (40 ms an instance).
        self.proc = subprocess.Popen([BINARY, f"--logdir={work / 'logs'}", str(path)],
                                     env={**os.environ, "TCP_NODELAY": "1"},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait()

    def _wait(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}")
            try:
                requests.get(self.base + "/system", timeout=1).raise_for_status()
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except (requests.RequestException, OSError):
                time.sleep(0.2)
        raise RuntimeError("Orthanc did not answer within a minute")

    def instances(self) -> int:
        """Return how many instances Orthanc holds."""
        answer = requests.get(self.base + "/statistics", timeout=30)
        answer.raise_for_status()
        return int(answer.json()["CountInstances"])

    def upload_zip(self, zip_path: Path) -> tuple[float, int]:
        """POST the zip to /instances (Orthanc 1.8.2 and later unpack it and store each
        instance before answering); return (seconds, instances stored)."""
        start = time.perf_counter()
        with open(zip_path, "rb") as body:
            answer = requests.post(self.base + "/instances", data=body, timeout=3600,
                                   headers={"Content-Type": "application/zip"})
        seconds = time.perf_counter() - start
        answer.raise_for_status()
        return seconds, self.instances()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
