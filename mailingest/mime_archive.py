"""Open the archives that mail carries invoices in: zip files and winmail.dat (TNEF).

Kept apart from :mod:`mailingest.mime` because archives are where hostile input does its damage
(zip bombs, lying size headers, encrypted members) and the guards deserve a module of their own.
Both readers return members and refusals side by side, in archive order, so that one bad member
never costs the others; an archive that cannot be read at all raises an ``InputError`` for the
caller to record. Member names come back as stored; :func:`safe_filename` and
:func:`safe_member_path` make those and attachment filenames safe the same way.
"""

from __future__ import annotations

import io
import re
import zipfile
import zlib
from dataclasses import dataclass

from tnefparse.tnef import TNEF

from mailingest.errors import (
    DocumentTooLarge,
    EncryptedDocument,
    HostileDocument,
    InputError,
    MalformedDocument,
)

ZIP_MAX_MEMBERS = 1000
"""More files than an invoice bundle ever has; beyond this the archive is refused whole."""

ZIP_MAX_RATIO = 200
"""Uncompressed/compressed limit per member. Real XML rarely passes 30:1, PDFs 5:1; deflate
bombs sit near 1000:1."""

_RATIO_FLOOR = 1 << 20
"""Members smaller than this are never ratio-checked: a tiny highly compressible file cannot hurt."""

_TNEF_MAX_EMBED_DEPTH = 2

_ZIP_READ_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    NotImplementedError,
    RuntimeError,
    OSError,
    ValueError,
)
"""What zipfile raises on damaged members: bad CRC, truncated streams, unknown compression
methods (NotImplementedError), encryption it was not told about (RuntimeError)."""


@dataclass(frozen=True)
class Member:
    """One file taken out of an archive; ``name`` is the raw stored name (may hold directories)."""

    name: str
    data: bytes


@dataclass(frozen=True)
class Refused:
    """A member left inside its archive, and why."""

    name: str
    error: InputError


def read_zip(
    data: bytes, *, max_bytes: int, max_members: int = ZIP_MAX_MEMBERS, max_ratio: int = ZIP_MAX_RATIO
) -> list[Member | Refused]:
    """Read every regular member of a zip, refusing those that look like bombs.

    Sizes and ratios are checked on the central directory *before* anything is inflated, so a
    bomb costs a directory read, not gigabytes. zipfile stops inflating at the declared size, so
    a member that lies about its size ends in a CRC error instead of a blow-up.

    Raises ``MalformedDocument`` when ``data`` is not a readable zip, ``HostileDocument`` when the
    archive as a whole is over ``max_members`` or declares more than ``max_bytes`` in total.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise MalformedDocument(f"unreadable zip archive: {exc}") from exc
    with archive:
        files = [i for i in infos if not i.is_dir() and not _is_resource_fork(i.filename)]
        if len(files) > max_members:
            raise HostileDocument(f"zip archive has {len(files)} members (limit {max_members})")
        declared = sum(i.file_size for i in files)
        if declared > max_bytes:
            raise HostileDocument(f"zip archive unpacks to {declared} bytes (limit {max_bytes})")
        return [_read_member(archive, info, max_ratio) for info in files]


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, max_ratio: int) -> Member | Refused:
    name = _member_name(info)
    if info.flag_bits & 0x1:
        return Refused(name, EncryptedDocument(f"{name}: zip member is encrypted"))
    if info.file_size > _RATIO_FLOOR and info.file_size > max_ratio * max(info.compress_size, 1):
        return Refused(
            name,
            HostileDocument(
                f"{name}: compression ratio {info.file_size // max(info.compress_size, 1)}:1 "
                f"exceeds {max_ratio}:1 ({info.file_size} bytes declared)"
            ),
        )
    try:
        with archive.open(info) as handle:
            content = handle.read()
    except _ZIP_READ_ERRORS as exc:
        return Refused(name, MalformedDocument(f"{name}: damaged zip member: {exc}"))
    return Member(name, content)


def _member_name(info: zipfile.ZipInfo) -> str:
    """Undo zipfile's cp437 guess when the name is really UTF-8 written without the UTF-8 flag.

    Windows' and macOS' built-in zippers do exactly that, and cp437 would turn "Müller" into
    "M├╝ller".
    """
    if info.flag_bits & 0x800:
        return info.filename
    try:
        return info.filename.encode("cp437").decode("utf-8")
    except UnicodeError:
        return info.filename


def _is_resource_fork(name: str) -> bool:
    """macOS Finder adds ``__MACOSX/`` copies of every file's metadata; they are never content."""
    return name.startswith("__MACOSX/") or "/__MACOSX/" in name


def read_tnef(data: bytes, *, max_bytes: int) -> list[Member | Refused]:
    """Take the attachments out of a winmail.dat (Outlook's TNEF wrapper), embedded messages too.

    Uses tnefparse (LGPL-3.0, imported as a library, so our Apache-2.0 code stays Apache-2.0).
    tnefparse only logs a bad checksum, so damage (typically truncation) is reported here as a
    nameless ``Refused`` ahead of the attachments, which are still returned: a damaged part of one
    attachment should not cost the others. Raises ``MalformedDocument`` when nothing is readable.
    """
    try:
        tnef = TNEF(data, do_checksum=True)
    except Exception as exc:  # tnefparse slices bytes without bounds checks: any error means "damaged"
        raise MalformedDocument(f"unreadable winmail.dat: {type(exc).__name__}: {exc}") from exc
    out: list[Member | Refused] = []
    if not all(getattr(obj, "good_checksum", True) for obj in tnef.objects):
        out.append(Refused("", MalformedDocument("winmail.dat fails its checksums: attachments may be cut")))
    _collect_tnef(tnef.attachments, out, max_bytes, depth=0)
    return out


def _collect_tnef(attachments: list[object], out: list[Member | Refused], budget: int, depth: int) -> int:
    for attachment in attachments:
        name = _tnef_name(attachment)
        embedded = getattr(attachment, "embed", None)
        if embedded is not None:
            if depth >= _TNEF_MAX_EMBED_DEPTH:
                out.append(Refused(name, HostileDocument(f"{name}: messages embedded too deeply")))
            else:
                budget = _collect_tnef(embedded.attachments, out, budget, depth + 1)
            continue
        content = getattr(attachment, "data", b"")
        if not isinstance(content, bytes):
            out.append(Refused(name, MalformedDocument(f"{name}: attachment data is not a byte stream")))
        elif len(content) > budget:
            out.append(Refused(name, DocumentTooLarge(f"{name}: {len(content)} bytes exceed the budget")))
        else:
            budget -= len(content)
            out.append(Member(name, content))
    return budget


def _tnef_name(attachment: object) -> str:
    """Prefer the long filename; tnefparse hands back bytes for some codepages and names."""
    try:
        name: object = attachment.long_filename()  # type: ignore[attr-defined]
    except (AttributeError, UnicodeError):
        name = ""
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    return str(name).strip("\x00")


def safe_filename(name: str) -> str:
    """The last path component, printable, at most 255 bytes; "" when nothing usable is left.

    Filenames travel to disk (file connectors) and to people (review UI), so directory parts
    ("../../etc/passwd", "C:\\evil.pdf"), control and bidi-override characters go.
    """
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = re.sub(r"^[A-Za-z]:", "", "".join(ch for ch in name if ch.isprintable()).strip())
    if not name.strip(". "):
        return ""
    if len(name.encode("utf-8")) <= 255:
        return name
    _, dot, extension = name.rpartition(".")
    suffix = dot + extension if dot and len(extension) <= 16 else ""
    head = name[: len(name) - len(suffix)].encode("utf-8")[: 255 - len(suffix.encode("utf-8"))]
    return head.decode("utf-8", "ignore") + suffix


def safe_member_path(name: str) -> list[str]:
    """An archive member's directories and name, each made safe; ``..`` and ``.`` dropped (zip slip)."""
    return [part for part in (safe_filename(p) for p in name.replace("\\", "/").split("/")) if part]
