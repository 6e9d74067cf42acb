"""Sending DICOM to a receiver over TCP, with pynetdicom's SCU or DCMTK's storescu."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE, _config, build_context
from pynetdicom.sop_class import Verification


def dcmtk_tool(name: str) -> str | None:
    """Return the path of DCMTK's `name`, passing over the script of the same
    name that pynetdicom installs beside Python."""
    ours = os.path.realpath(os.path.dirname(sys.executable))
    path = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep)
                           if d and os.path.realpath(d) != ours)
    return shutil.which(name, path=path)


STORESCU = dcmtk_tool("storescu")
needs_storescu = pytest.mark.skipif(
    STORESCU is None and os.environ.get("CI", "").lower() != "true",
    reason="DCMTK's storescu is not installed (apt-get install dcmtk); CI installs it")


def _contexts(paths: list[Path]):
    pairs = {}
    for path in paths:
        meta = dcmread(path, stop_before_pixels=True).file_meta
        pairs.setdefault(meta.MediaStorageSOPClassUID, set()).add(meta.TransferSyntaxUID)
    return [build_context(sop_class, sorted(syntaxes)) for sop_class, syntaxes in pairs.items()]


def send(port: int, paths: list[Path], called: str = "SCANYARD", calling: str = "TESTSCU"):
    """Send files in one association; return their C-STORE statuses, or
    ("rejected", result, source, reason) when the association is refused."""
    ae = AE(ae_title=calling)
    ae.requested_contexts = _contexts(paths)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if assoc.is_rejected:
        rj = assoc.acceptor.primitive
        return ("rejected", rj.result, rj.result_source, rj.diagnostic)
    assert assoc.is_established, "the association was neither accepted nor rejected"
    # Send each file's dataset as it is on disk (pynetdicom would otherwise
    # decode and re-encode it), so that byte-for-byte checks mean something.
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        return [assoc.send_c_store(path).Status for path in paths]
    finally:
        assoc.release()


def echo(port: int, called: str = "SCANYARD") -> int | tuple:
    ae = AE(ae_title="ECHOSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if assoc.is_rejected:
        return ("rejected", assoc.acceptor.primitive.diagnostic)
    try:
        return assoc.send_c_echo().Status
    finally:
        assoc.release()


def storescu(port: int, folder: Path, called: str = "SCANYARD", calling: str = "STORESCU",
             wait: bool = True):
    """Send every file of `folder` with DCMTK's storescu; return the process
    (finished when `wait`)."""
    if STORESCU is None:
        pytest.fail("storescu is not installed; CI must install dcmtk")
    cmd = [STORESCU, "-aet", calling, "-aec", called, "+sd", "127.0.0.1", str(port),
           str(folder)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if wait:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
    return proc
