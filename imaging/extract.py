"""Safe extraction of zip and tar uploads.

Every entry is checked before anything is written (paths, links, special
files, sizes, zip bombs), and members are streamed to disk in chunks, so a
hostile or damaged archive ends in an ExtractError, never in a file outside
the upload folder or a full disk.
"""

import contextlib
import io
import lzma
import os
import pathlib
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from imaging.labels import shown
from imaging.zipmembers import faster_inflate, small_member

try:  # Intel's ISA-L inflates deflate streams about twice as fast as zlib
    from isal import igzip, isal_zlib
except ImportError:  # pragma: no cover - a platform without its wheels
    igzip = isal_zlib = None

CHUNK = 2**20
_RATIO_FLOOR = 16 * 2**20
_MAX_NAME_PART_BYTES = 255
_ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")
# What reading a damaged archive raises (gzip.BadGzipFile is an OSError).
_DAMAGE = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError,
           *([isal_zlib.error] if isal_zlib is not None else []))
_CHANGED = "The archive changed while it was being unpacked."
_LYING = "holds more data than its header declares; the archive is damaged or forged"


@dataclass(frozen=True)
class Limits:
    """How much an archive may hold; the ratio is only checked above 16 MiB."""

    max_entries: int = 200_000
    max_total_bytes: int = 64 * 2**30
    max_ratio: float = 200.0
    max_entry_bytes: int = 8 * 2**30


class ExtractError(ValueError):
    """An archive that cannot be unpacked safely; the message is for the user."""


@dataclass(frozen=True)
class Member:
    """A regular file of an archive.

    `name` is a normalised relative posix path, `index` the entry's position
    in the archive (every entry counts, directories too), `size` the declared
    uncompressed size. Two members may share a name; the caller renames one.
    """

    name: str
    index: int
    size: int


def _human(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _entry_error(raw: str, why: str) -> ExtractError:
    return ExtractError(f"Archive entry {shown(raw)} {why}.")


@contextlib.contextmanager
def _reading(kind: str):
    """Turn an error raised while reading the archive into ExtractError."""
    try:
        yield
    except _DAMAGE as exc:
        detail = str(exc).strip().rstrip(".") or type(exc).__name__
        raise ExtractError(f"The {kind} archive is damaged: {detail}.") from exc


def normalise_name(raw: str) -> str:
    """Return `raw` as a relative posix path ("" for the archive's root).

    Backslashes count as separators (Windows zip tools write them). Raises
    ExtractError for control characters, absolute paths, drive letters, a
    ".." that climbs out of the archive, or a name part too long for disk.
    """
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
        raise _entry_error(raw, "has control characters in its name")
    name = raw.replace("\\", "/")
    if name.startswith("/") or (name[1:2] == ":" and name[:1].isalpha()):
        raise _entry_error(raw, "points outside the upload folder")
    parts: list[str] = []
    for part in name.split("/"):
        if part == "..":
            if not parts:
                raise _entry_error(raw, "points outside the upload folder")
            parts.pop()
        elif part not in ("", "."):
            if len(part.encode("utf-8", "surrogateescape")) > _MAX_NAME_PART_BYTES:
                raise _entry_error(raw, "has a name too long for a file")
            parts.append(part)
    return "/".join(parts)


def is_junk(name: str) -> bool:
    """Return True for macOS clutter (__MACOSX/, ._*, .DS_Store), never unpacked."""
    parts = name.split("/")
    return parts[0] == "__MACOSX" or parts[-1].startswith("._") or parts[-1] == ".DS_Store"


def archive_kind(path) -> str:
    """Return "zip" or "tar" (plain or gz/bz2/xz compressed), judged by content.

    Raises ExtractError when the file is neither.
    """
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    with contextlib.suppress(*_DAMAGE):
        if tarfile.is_tarfile(path):
            return "tar"
    if head.startswith(_COMPRESSED_MAGIC):
        raise ExtractError("The file is compressed but is not a readable tar archive.")
    raise ExtractError("The file is not a zip or tar archive.")


def _checked_name(raw: str, kind: str, link_target=None) -> str | None:
    """Return the normalised name of a regular file, None for a directory or junk.

    `kind` is "file", "dir", "link" or "special". Raises ExtractError for a
    bad name, a link or a special file.
    """
    name = normalise_name(raw)
    if kind == "link":
        raise ExtractError(
            f"The archive holds a link ({shown(raw)} -> {shown(link_target())}); "
            "links are not accepted."
        )
    if kind == "dir" or is_junk(name):
        return None
    if not name:
        raise _entry_error(raw, "has no file name")
    if kind != "file":
        raise _entry_error(raw, "is a device or pipe; only regular files are accepted")
    return name


def _zip_name(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> str | None:
    """Return a zip entry's name as _checked_name does; also refuse encryption."""
    # Only Unix zip tools store a file type in the high bits of external_attr.
    mode = stat.S_IFMT(info.external_attr >> 16) if info.create_system == 3 else 0
    kinds = {0: "file", stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "link"}
    kind = "dir" if info.is_dir() else kinds.get(mode, "special")
    name = _checked_name(info.filename, kind, lambda: _zip_link_target(zf, info))
    if name is not None and info.flag_bits & 0x1:
        raise _entry_error(info.filename, "is encrypted; encrypted archives are not accepted")
    if name is not None and info.compress_type not in _ZIP_METHODS:
        raise _entry_error(
            info.filename,
            f"uses a compression method ({info.compress_type}) that cannot be read; "
            "zip it again with standard settings",
        )
    return name


def _zip_link_target(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> str:
    # Only shown to the user, so a damaged, encrypted or huge target is "?".
    if info.file_size > 4096 or info.flag_bits & 0x1:
        return "?"
    try:
        return zf.read(info).decode("utf-8", "replace")
    except (*_DAMAGE, NotImplementedError, RuntimeError):
        return "?"


def _tar_name(info: tarfile.TarInfo) -> str | None:
    """Return a tar entry's name as _checked_name does."""
    if info.issym() or info.islnk():
        kind = "link"
    else:
        kind = "dir" if info.isdir() else "file" if info.isfile() else "special"
    return _checked_name(info.name, kind, lambda: info.linkname)


def _tar_entries(tf: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """Yield the headers of `tf` in order; raise ExtractError when it is damaged."""
    entries = iter(tf)
    while True:
        with _reading("tar"):
            info = next(entries, None)
        if info is None:
            return
        # TarFile keeps every header it has read; a huge tar would fill memory.
        tf.members.clear()
        yield info


def _check_sizes(members: list[Member], limits: Limits) -> int:
    """Return the members' total declared size; raise ExtractError over `limits`."""
    for member in members:
        if member.size > limits.max_entry_bytes:
            raise _entry_error(
                member.name,
                f"would unpack to {_human(member.size)}, more than the "
                f"{_human(limits.max_entry_bytes)} allowed for one file",
            )
    total = sum(member.size for member in members)
    if total > limits.max_total_bytes:
        raise ExtractError(
            f"The archive would unpack to {_human(total)}, more than the "
            f"{_human(limits.max_total_bytes)} allowed."
        )
    return total


def list_members(path, limits: Limits = Limits()) -> list[Member]:
    """Return the regular files of the zip or tar at `path`, in archive order.

    Every entry is checked and the first problem raises ExtractError: a bad
    name (see normalise_name), a link, a device, an encrypted entry, too many
    entries, too many bytes, a zip-bomb ratio, a damaged archive.
    Directories and macOS clutter are left out.
    """
    members: list[Member] = []
    for index, name, size in _entries(path, archive_kind(path)):
        if index >= limits.max_entries:
            raise ExtractError(
                f"The archive holds more than the {limits.max_entries} entries allowed."
            )
        if name is not None:
            members.append(Member(name, index, size))
    total = _check_sizes(members, limits)
    ratio = total / max(os.path.getsize(path), 1)
    if total > _RATIO_FLOOR and ratio > limits.max_ratio:
        raise ExtractError(
            f"The archive expands {ratio:.0f} times its size; this looks like a zip bomb."
        )
    return members


def _open(path, kind: str):
    """Return the open ZipFile or TarFile; raise ExtractError when it is damaged."""
    with _reading(kind):
        if kind == "zip":
            return zipfile.ZipFile(path)
        return _TarFile.open(path, "r:*")


class _TarFile(tarfile.TarFile):
    """A tar archive whose gzip compression ISA-L inflates (as zip members)."""

    @classmethod
    def gzopen(cls, name, mode="r", fileobj=None, compresslevel=9, **kwargs):
        if igzip is None or mode != "r":
            return super().gzopen(name, mode, fileobj, compresslevel, **kwargs)
        stream = igzip.IGzipFile(name, "rb", fileobj=fileobj)
        try:
            archive = cls.taropen(name, mode, stream, **kwargs)
        except (OSError, EOFError, tarfile.ReadError, isal_zlib.error) as exc:
            stream.close()
            raise tarfile.ReadError("not a gzip file") from exc
        except BaseException:
            stream.close()
            raise
        archive._extfileobj = False  # closing the archive closes the stream
        return archive


def _entries(path, kind: str) -> Iterator[tuple[int, str | None, int]]:
    """Yield (index, checked name or None, declared size) for every entry."""
    with _open(path, kind) as archive:
        if kind == "zip":
            for index, info in enumerate(archive.infolist()):
                yield index, _zip_name(archive, info), info.file_size
        else:
            for index, info in enumerate(_tar_entries(archive)):
                yield index, _tar_name(info), info.size


def _target(root: pathlib.Path, member: Member, parents: dict) -> pathlib.Path:
    """Return where `member` is written; raise ExtractError if that leaves `root`.

    `parents` caches the resolved folders of one extraction: members share
    a few folders, and resolving walks every part of the path.
    """
    if not member.name or normalise_name(member.name) != member.name:
        raise _entry_error(member.name, "is not a safe file name")
    target = root / member.name
    parent = parents.get(target.parent)
    if parent is None:
        parent = parents[target.parent] = target.parent.resolve()
    if not parent.is_relative_to(root):
        raise _entry_error(member.name, "points outside the upload folder")
    return parent / target.name


def _write(source, kind: str, member: Member, target: pathlib.Path, made: set,
           keep: bool) -> bytes | None:
    """Stream `source` into `target` (mode 0o644), never more than declared.

    Returns the bytes written when `keep` is true, else None. `made` holds
    the folders this extraction has already created. Raises ExtractError
    for a damaged archive, a lying header or a name clash; errors of the
    destination disk are raised as they are. A file cut short is removed.
    """
    fd = _create(target, member.name, made)
    written, kept = 0, [] if keep else None
    try:
        with os.fdopen(fd, "wb") as out:
            while True:
                with _reading(kind):
                    chunk = source.read(CHUNK)
                if not chunk:
                    break
                written += len(chunk)
                if written > member.size:
                    raise _entry_error(member.name, _LYING)
                out.write(chunk)
                if kept is not None:
                    kept.append(chunk)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    # One chunk (keep_bytes <= CHUNK) is returned as it is, without a copy.
    return b"".join(kept) if kept is not None else None


def _zip_sources(path, members: list[Member], whole: int = 0
                 ) -> Iterator[tuple[Member, object]]:
    """Yield (member, open source) for each member, read by its index.

    A stored or deflated member of up to `whole` bytes comes read in one
    piece (zipmembers.small_member), as a BytesIO of its content.
    """
    with _open(path, "zip") as archive:
        infos = archive.infolist()
        fd = archive.fp.fileno()
        for member in members:
            info = infos[member.index] if 0 <= member.index < len(infos) else None
            if info is None or _zip_name(archive, info) is None:
                raise ExtractError(_CHANGED)
            with _reading("zip"):
                data = small_member(fd, info) if 0 < info.file_size <= whole else None
                source = io.BytesIO(data) if data is not None else archive.open(info)
            if data is None:
                faster_inflate(source)
            yield member, source


def _tar_sources(path, members: list[Member]) -> Iterator[tuple[Member, object]]:
    """Yield (member, open source) in archive order, reading the tar once."""
    wanted: dict[int, list[Member]] = {}
    for member in members:
        wanted.setdefault(member.index, []).append(member)
    with _open(path, "tar") as archive:
        for index, info in enumerate(_tar_entries(archive)):
            for member in wanted.pop(index, ()):
                if _tar_name(info) is None:
                    raise ExtractError(_CHANGED)
                with _reading("tar"):
                    source = archive.extractfile(info)
                yield member, source
            if not wanted:
                return
    if wanted:
        raise ExtractError(_CHANGED)


def extract_members(
    path, members: list[Member], dest_dir, limits: Limits = Limits()
) -> Iterator[tuple[Member, pathlib.Path]]:
    """Write each of `members` to `dest_dir / member.name`; yield (member, path).

    Each pair is yielded once its file is written and closed. Zip members
    are read by index, so several processes can unpack disjoint subsets of
    one zip; a tar is read once, in archive order. Raises ExtractError for
    members over `limits` (before anything is written), a damaged archive,
    or a member holding more than it declares. Errors of the destination
    disk (full, no permission) are raised as OSError.
    """
    for member, target, _data in unpack_members(path, members, dest_dir, limits):
        yield member, target


def unpack_members(
    path, members: list[Member], dest_dir, limits: Limits = Limits(), keep_bytes: int = 0,
    write_kept: bool = True,
) -> Iterator[tuple[Member, pathlib.Path, bytes | None]]:
    """Do what extract_members does, and yield (member, path, data) where `data`
    is the member's content when it holds at most `keep_bytes` (<= CHUNK),
    else None: a caller that reads each file then need not read it back.

    With `write_kept` false, a member whose data is yielded is not written:
    the caller writes it (write_file), or what it makes of it, to the path.
    """
    _check_sizes(members, limits)
    root = pathlib.Path(dest_dir).resolve()
    kind = archive_kind(path)
    parents: dict = {}
    made: set = set()
    keep_bytes = min(keep_bytes, CHUNK)
    sources = _zip_sources(path, members, keep_bytes) if kind == "zip" else \
        _tar_sources(path, members)
    for member, source in sources:
        with source:
            target = _target(root, member, parents)
            keep = 0 < member.size <= keep_bytes
            if keep and not write_kept:
                data = _read(source, kind, member)
            else:
                data = _write(source, kind, member, target, made, keep)
        yield member, target, data


def _read(source, kind: str, member: Member) -> bytes:
    """Return the content of a small member, never more than it declares."""
    with _reading(kind):
        data = source.read(member.size + 1)
    if len(data) > member.size:
        raise _entry_error(member.name, _LYING)
    return data


def write_file(target: pathlib.Path, data: bytes, name: str, made: set | None = None) -> None:
    """Write `data` to `target` (the path unpack_members gave the member
    `name`), as _write would; `made` holds the folders known to exist (and
    gets those made here), so that a batch makes each folder once."""
    with os.fdopen(_create(target, name, made), "wb") as out:
        out.write(data)


def _create(target: pathlib.Path, name: str, made: set | None = None) -> int:
    """Open `target` for writing (mode 0o644, never through a link), making its
    folder unless `made` holds it; raise ExtractError when an entry clashes."""
    try:
        if made is None or target.parent not in made:
            target.parent.mkdir(parents=True, exist_ok=True)
            if made is not None:
                made.add(target.parent)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
        raise _entry_error(name, "clashes with another entry of the same name") from exc
    os.fchmod(fd, 0o644)
    return fd
