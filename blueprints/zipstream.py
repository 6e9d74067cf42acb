"""Zip files streamed to the client as they are written: bounded memory and no
temporary copy of the whole zip."""
from __future__ import annotations

import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from flask import Response

CHUNK = 1 << 20


class _Sink:
    """A write-only, unseekable file for ZipFile whose bytes are taken out as they come."""

    def __init__(self):
        self._parts: list[bytes] = []
        self._offset = 0

    def write(self, data) -> int:
        self._parts.append(bytes(data))
        self._offset += len(data)
        return len(data)

    def tell(self) -> int:
        return self._offset

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def iter_zip(entries: Iterable[tuple[str, Path]]) -> Iterator[bytes]:
    """Yield the bytes of a zip holding each (name in the zip, file on disk)."""
    sink = _Sink()
    # DICOM pixel data hardly compresses; storing keeps downloads fast.
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for arcname, path in entries:
            with open(path, "rb") as src, zf.open(arcname, "w", force_zip64=True) as dst:
                while chunk := src.read(CHUNK):
                    dst.write(chunk)
                    yield sink.take()
            yield sink.take()
    yield sink.take()


def zip_response(entries: Iterable[tuple[str, Path]], filename: str) -> Response:
    """Return a response that streams a zip of the entries as ``filename``.

    The entries are paths worked out beforehand, so the generator needs no
    request context while it streams.
    """
    return Response(
        iter_zip(entries), mimetype="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'})
