"""Reading the members of a zip upload: a small one in one piece
(small_member, inflated by libdeflate), the others through zipfile with
ISA-L inflating (faster_inflate). Both raise what zipfile raises for a
damaged member; imaging.extract turns that into its ExtractError.
"""
import os
import struct
import zipfile
import zlib

try:  # Intel's ISA-L inflates deflate streams about twice as fast as zlib
    from isal import isal_zlib
except ImportError:  # pragma: no cover - a platform without its wheels
    isal_zlib = None

try:  # libdeflate inflates a whole buffer a fifth to a third faster than ISA-L
    import deflate as libdeflate
except ImportError:  # pragma: no cover - a platform without its wheels
    libdeflate = None

_LOCAL_HEADER = struct.Struct("<4s2xHH16xHH")  # signature, flags, method, name and extra lengths
_INFLATE = isal_zlib or zlib


def small_member(fd: int, info: zipfile.ZipInfo) -> bytes | None:
    """Return the content of a small stored or deflated zip member, checked as
    zipfile checks it (the local header's signature and name, never more than
    the size declared, the CRC); None for a member left to zipfile.

    zipfile reads a member through a reader made for it, in steps, and takes
    its CRC with zlib (ten times ISA-L's time); here the compressed bytes
    come in one read and are inflated in one call, by libdeflate (which
    inflates into a buffer of the declared size, and fails when the data
    holds more) or else ISA-L. Raises what zipfile raises for a damaged
    member.
    """
    size, packed = info.file_size, info.compress_size
    if info.flag_bits & 0x61 or info.compress_type not in (zipfile.ZIP_STORED,
                                                           zipfile.ZIP_DEFLATED):
        return None  # encrypted or patched (zipfile refuses), or another method
    if packed > size + (size >> 6) + 1024 or \
            (info.compress_type == zipfile.ZIP_STORED and packed != size):
        return None  # more compressed bytes than a member of this size needs
    header = os.pread(fd, _LOCAL_HEADER.size, info.header_offset)
    if len(header) < _LOCAL_HEADER.size:
        raise zipfile.BadZipFile("Truncated file header")
    signature, flags, _method, name_length, extra_length = _LOCAL_HEADER.unpack(header)
    if signature != b"PK\x03\x04":
        raise zipfile.BadZipFile("Bad magic number for file header")
    start = info.header_offset + _LOCAL_HEADER.size
    raw_name = os.pread(fd, name_length, start)
    name = raw_name.decode("utf-8" if flags & 0x800 else "cp437", "surrogateescape")
    if name != info.orig_filename:
        raise zipfile.BadZipFile(
            f"File name in directory {info.orig_filename!r} and header {name!r} differ.")
    data = os.pread(fd, packed, start + name_length + extra_length)
    if len(data) < packed:
        raise EOFError("the member's data is cut short")
    if info.compress_type == zipfile.ZIP_DEFLATED:
        data = _inflate(data, size, info.filename)
    if _INFLATE.crc32(data) != info.CRC:
        raise zipfile.BadZipFile(f"Bad CRC-32 for file {info.filename!r}")
    return data


def _inflate(data: bytes, size: int, name: str) -> bytes:
    """Return the deflated `data` inflated: never more than `size` bytes,
    fewer when the data holds fewer (zipfile too reads those, when their
    CRC is right)."""
    if libdeflate is not None:
        try:
            inflated = libdeflate.deflate_decompress(data, size)
        except libdeflate.DeflateError as exc:  # bad data, or more than declared
            raise zipfile.BadZipFile(f"Bad deflated data for file {name!r}") from exc
        return bytes(inflated)  # a bytearray: its slices could not be dict keys
    inflater = _INFLATE.decompressobj(-zlib.MAX_WBITS)
    data = inflater.decompress(data, size)  # never more than declared
    if len(data) < size and not inflater.eof:
        raise EOFError("the member's deflated data is cut short")
    return data


_ZLIB_INFLATE = type(zlib.decompressobj(-zlib.MAX_WBITS))


def faster_inflate(source) -> None:
    """Let ISA-L inflate a deflated zip member that zipfile has just opened.

    zipfile reads through a zlib decompressor made when the member is
    opened; ISA-L's has the same interface and output, and takes half the
    time. zipfile still checks the size read and the member's CRC. Where
    the decompressor is not the one expected (another Python's zipfile),
    zlib's stays.
    """
    if isal_zlib is not None and type(getattr(source, "_decompressor", None)) is _ZLIB_INFLATE:
        source._decompressor = isal_zlib.decompressobj(-zlib.MAX_WBITS)
