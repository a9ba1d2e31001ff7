"""Open Outlook .msg files (OLE2 compound documents) like a winmail.dat: attachments out, whole.

Outlook's "Save as" and drag-and-drop forwarding produce .msg files, and vendors' AP mail often
carries its invoice inside one. The one maintained reader, extract-msg, is GPL-3.0, so this reads
the few MAPI properties we need straight from olefile (BSD): subject, Message-ID, sender and each
``__attach_version1.0_#XXXXXXXX`` storage (data, long filename, MIME tag). Attached messages
(``__substg1.0_3701000D`` storages) are walked too, to a fixed depth, their attachments named
"<message name>/<attachment name>" so that the caller's member paths say where they came from.

Results are the :class:`~mailingest.mime_archive.Member` / ``Refused`` list that the zip and TNEF
readers return, so :mod:`mailingest.mime` treats all three alike. Property layout: [MS-OXMSG].
"""

from __future__ import annotations

import codecs
import io
import struct
from dataclasses import dataclass, field

import olefile

from mailingest.errors import (
    DocumentTooLarge,
    HostileDocument,
    MalformedDocument,
    UnsupportedDocument,
)
from mailingest.mime_archive import Member, Refused

MSG_MAX_EMBED_DEPTH = 2
"""A forward of a forward inside a .msg, as with winmail.dat; deeper nesting is refused."""

MSG_MAX_ATTACHMENTS = 1000
"""More attachments than any mail carries; beyond this the rest are refused with one entry."""

_MAX_PROPERTY_BYTES = 1 << 16
"""Subject, names and addresses are short; a longer string stream is cut, never read whole."""

_OLE_ERRORS = (OSError, ValueError, IndexError, KeyError, TypeError, struct.error, UnicodeError)
"""What olefile raises on damaged sectors, FAT loops and truncated streams."""

_PROPERTIES = "__properties_version1.0"
_ATTACH_PREFIX = "__attach_version1.0_#"
_EMBEDDED = "__substg1.0_3701000D"
_SENDER_IDS = ("5D01", "0C1F", "0065")
"""PR_SENDER_SMTP_ADDRESS first: the other two hold an X.500 DN for Exchange senders."""


@dataclass
class OutlookMessage:
    """What one .msg yields: a few headers for the record and its attachments in stored order."""

    subject: str = ""
    message_id: str = ""
    sender: str = ""
    items: list[Member | Refused] = field(default_factory=list)


def read_msg(data: bytes, *, max_bytes: int) -> list[Member | Refused]:
    """Attachments of an Outlook .msg, embedded messages' too; the ``read_tnef`` contract.

    Raises ``MalformedDocument`` when ``data`` is not a readable OLE2 file and
    ``UnsupportedDocument`` when it is OLE2 but not a message (a .doc or .xls without its name).
    """
    return parse_msg(data, max_bytes=max_bytes).items


def parse_msg(data: bytes, *, max_bytes: int) -> OutlookMessage:
    """Open ``data`` (held in memory, so the caller's size budget is the cap) and read it all.

    Damage below the top level (one attachment's stream cut short) becomes a ``Refused`` for that
    attachment only; the others are still returned.
    """
    try:
        # BytesIO always: olefile takes bytes under 1536 long for a *file name*.
        ole = olefile.OleFileIO(io.BytesIO(data))
    except _OLE_ERRORS as exc:
        raise MalformedDocument(f"unreadable Outlook .msg: {type(exc).__name__}: {exc}") from exc
    with ole:
        try:
            if ole.get_type(_PROPERTIES) != olefile.STGTY_STREAM:
                raise UnsupportedDocument("OLE2 file is not an Outlook message (no MAPI properties)")
            reader = _Reader(ole, max_bytes)
            message = OutlookMessage(
                subject=reader.text([], "0037"),
                message_id=reader.text([], "1035"),
                sender=reader.sender([]),
            )
            reader.attachments([], "", depth=0, out=message.items)
        except _OLE_ERRORS as exc:
            raise MalformedDocument(f"damaged Outlook .msg: {type(exc).__name__}: {exc}") from exc
    return message


class _Reader:
    """One open .msg: the 8-bit codepage of the top-level message and the remaining byte budget."""

    def __init__(self, ole: olefile.OleFileIO, budget: int) -> None:
        self.ole = ole
        self.budget = budget
        self.count = 0
        self.codepage = _codepage(self.stream([_PROPERTIES], _MAX_PROPERTY_BYTES) or b"")

    def stream(self, path: list[str], limit: int) -> bytes | None:
        """A stream's bytes, at most ``limit`` of them; None when there is no such stream."""
        if self.ole.get_type(path) != olefile.STGTY_STREAM:  # False when missing
            return None
        with self.ole.openstream(path) as handle:
            return bytes(handle.read(limit))

    def text(self, base: list[str], prop: str) -> str:
        """A string property: the Unicode (001F) stream if present, else the 8-bit (001E) one."""
        raw = self.stream([*base, f"__substg1.0_{prop}001F"], _MAX_PROPERTY_BYTES)
        if raw is not None:
            return raw.decode("utf-16-le", "replace").strip("\x00").strip()
        raw = self.stream([*base, f"__substg1.0_{prop}001E"], _MAX_PROPERTY_BYTES)
        return "" if raw is None else raw.decode(self.codepage, "replace").strip("\x00").strip()

    def sender(self, base: list[str]) -> str:
        found = [text for prop in _SENDER_IDS if (text := self.text(base, prop))]
        return next((text for text in found if "@" in text), found[0] if found else "")

    def attachments(self, base: list[str], prefix: str, depth: int, out: list[Member | Refused]) -> None:
        """Append the attachments stored directly under ``base`` (the message's storage path)."""
        entries = self.ole.listdir(streams=False, storages=True)
        children = {e[len(base)] for e in entries if len(e) > len(base) and e[: len(base)] == base}
        for storage in sorted(s for s in children if s.startswith(_ATTACH_PREFIX)):
            self.count += 1
            if self.count > MSG_MAX_ATTACHMENTS:
                out.append(Refused(prefix, HostileDocument(f"more than {MSG_MAX_ATTACHMENTS} attachments")))
                return
            try:
                self.attachment([*base, storage], prefix, depth, out)
            except _OLE_ERRORS as exc:
                name = prefix + storage[len(_ATTACH_PREFIX) :]
                out.append(Refused(name, MalformedDocument(f"{name}: damaged attachment: {exc}")))

    def attachment(self, path: list[str], prefix: str, depth: int, out: list[Member | Refused]) -> None:
        name = self.text(path, "3707") or self.text(path, "3704") or self.text(path, "3001")
        embedded = [*path, _EMBEDDED]
        if self.ole.get_type(embedded) == olefile.STGTY_STORAGE:
            self.embedded(embedded, prefix + (name or self.text(embedded, "0037") or "message"), depth, out)
            return
        name, data = prefix + name, [*path, "__substg1.0_37010102"]
        size = self.ole.get_size(data) if self.ole.get_type(data) == olefile.STGTY_STREAM else -1
        if size < 0:
            out.append(
                Refused(name, UnsupportedDocument(f"{name or 'attachment'}: no data (link or OLE object)"))
            )
        elif size > self.budget:
            out.append(Refused(name, DocumentTooLarge(f"{name}: {size} bytes exceed the budget")))
        else:
            content = self.stream(data, size) or b""
            if len(content) < size:
                out.append(Refused(name, MalformedDocument(f"{name}: attachment is cut short")))
                return
            self.budget -= size
            out.append(Member(name, content))

    def embedded(self, path: list[str], label: str, depth: int, out: list[Member | Refused]) -> None:
        """An attached message: its attachments, under "<label>/", unless nested too deeply."""
        if not label.lower().endswith(".msg"):
            label += ".msg"
        label = label.replace("/", "_")
        if depth >= MSG_MAX_EMBED_DEPTH:
            out.append(Refused(label, HostileDocument(f"{label}: messages embedded too deeply")))
            return
        if self.ole.get_type([*path, _PROPERTIES]) != olefile.STGTY_STREAM:
            out.append(Refused(label, UnsupportedDocument(f"{label}: embedded OLE object, not a message")))
            return
        self.attachments(path, label + "/", depth + 1, out)


def _codepage(properties: bytes) -> str:
    """PR_MESSAGE_CODEPAGE (else PR_INTERNET_CPID) from the fixed-size property stream; cp1252 else.

    The top-level stream has a 32-byte header, then 16-byte entries: tag, flags, 8-byte value.
    """
    found: dict[int, int] = {}
    for offset in range(32, len(properties) - 15, 16):
        tag, _flags, value = struct.unpack_from("<IIi", properties, offset)
        found[tag] = value
    for tag in (0x3FFD0003, 0x3FDE0003):
        page = found.get(tag)
        if page is None:
            continue
        name = "utf-8" if page == 65001 else f"cp{page}"
        try:
            return codecs.lookup(name).name
        except LookupError:
            continue
    return "cp1252"
