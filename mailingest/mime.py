"""Turn one raw message into documents: attachments, forwarded mails' attachments, archive members.

Pure: bytes in, dataclasses out. Real accounts-payable mail is messy (wrong charsets, broken
boundaries, PDFs labelled application/octet-stream, forwards of forwards, zips, winmail.dat), so
the rule throughout is to take out every part that could carry an invoice and to turn a part that
cannot be taken out into a ``problems`` entry rather than an exception: one bad part must never
cost its siblings. Only input with no message structure at all raises ``MimeError``.

The standard library parser is the base, with ``policy.default`` for its RFC 2047/2231 decoding;
reading headers, and hardening that against hostile ones, is :mod:`mailingest.mime_headers`'s
job. mail-parser recovers base64 that the standard library gives up on.

Part paths are IMAP section numbers (RFC 3501, FETCH BODY[section]) so a source can refer back to
them: "2" is the second part, "2.1" the first part of the mail forwarded in part 2, and archive
members add "/name" ("3/invoice.xml").
"""

from __future__ import annotations

import codecs
import email.errors
import html
import mimetypes
import quopri
import re
from dataclasses import dataclass, field
from email.message import Message

from mailparser.utils import decode_base64_payload

from mailingest.documents import Document
from mailingest.errors import (
    DocumentTooLarge,
    HostileDocument,
    InputError,
    MalformedDocument,
    MimeError,
    UnsupportedDocument,
)
from mailingest.links import invoice_links
from mailingest.mime_archive import Refused, read_tnef, read_zip, safe_filename, safe_member_path
from mailingest.mime_headers import (
    STDLIB_ERRORS,
    MessageMeta,
    PartHeaders,
    compat_view,
    header_start,
    message_meta,
    parse_header_block,
    parse_message,
    read_part_headers,
    transfer_encoding,
)
from mailingest.mime_msg import read_msg
from mailingest.pipeline.detect import detect

__all__ = ["MessageMeta", "Unpacked", "looks_like_message", "unpack_message", "wrap_file"]

DEFAULT_MAX_DEPTH = 5
DEFAULT_MAX_PARTS = 200
DEFAULT_MAX_TOTAL_BYTES = 200 * 2**20

ARCHIVE_MAX_DEPTH = 2
"""A zip may hold one more zip (vendors do zip their e-invoice bundles twice), not a third."""

_MAX_NESTING = 64
"""multipart-in-multipart levels walked; real mail uses four, the stdlib parser itself fails near 1000."""

_BODY_TEXT_LIMIT = 1 << 20
_DEFECTS_LIMIT = 100

_INVOICE_TYPES = frozenset(
    {"application/pdf", "application/x-pdf", "application/xml", "text/xml", "application/zip"}
    | {"application/x-zip-compressed", "application/ms-tnef", "application/vnd.ms-tnef"}
    | {"application/vnd.ms-outlook"}
)
"""Types taken as documents even without a filename: what invoices and their wrappers arrive as."""

_SNIFFED_KINDS = frozenset({"pdf", "xml", "zip", "tnef", "msg", "image"})
_NESTED_MESSAGE_TYPES = frozenset({"message/rfc822", "message/global"})
_TEXT_CTES = frozenset({"7bit", "8bit", "binary"})
_KNOWN_CTES = _TEXT_CTES | {"base64", "quoted-printable", "x-uuencode", "uuencode", "uue", "x-uue"}
_CONTAINER_SUFFIXES = (".docx", ".docm", ".xlsx", ".xlsm", ".pptx", ".odt", ".ods", ".odp", ".epub", ".jar")
_OLE_OFFICE_SUFFIXES = (".doc", ".dot", ".xls", ".xlt", ".ppt", ".pps", ".vsd", ".pub", ".msi")
"""OLE2 like .msg, but documents in their own right: kept whole, not opened as Outlook mail."""
_ARCHIVE_READERS = {"zip": read_zip, "tnef": read_tnef, "msg": read_msg}
_EXTENSIONS = {"pdf": ".pdf", "xml": ".xml", "zip": ".zip", "message": ".eml", "tnef": ".dat", "msg": ".msg"}
_BASE64_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_UNSAFE_CODECS = frozenset({"punycode", "idna", "unicode-escape", "raw-unicode-escape"})
_SNIFF_BYTES = 65536


@dataclass(frozen=True)
class Unpacked:
    """Everything one message yields; ``problems`` are parts that could not be taken out.

    A problem is ``{"type", "title", "detail"}`` of an ``InputError`` plus the ``path`` of the part
    ("0" for the message as a whole). ``body_text`` is the plain-text body (or the HTML body
    stripped of markup) of the outer message, kept for the "invoice written in the body" case.
    """

    meta: MessageMeta
    documents: list[Document]
    problems: list[dict[str, str]]
    body_text: str = ""
    links: list[dict[str, str]] = field(default_factory=list)  # invoice links in the body (links.py)


def looks_like_message(data: bytes) -> bool:
    """Tell an .eml from a PDF, XML or binary file: does it open with a mail header block?"""
    return header_start(data) is not None


def unpack_message(
    raw: bytes,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_parts: int = DEFAULT_MAX_PARTS,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
) -> Unpacked:
    """Take every invoice candidate out of one raw message.

    ``max_depth`` bounds forwarded-mail nesting, ``max_parts`` the MIME parts and archive members
    visited, ``max_total_bytes`` the sum of document sizes; what lies beyond becomes a problem.
    Raises ``MimeError`` only when ``raw`` has no mail header block at all, or when neither
    policy of the stdlib parser can read it.
    """
    start = header_start(raw)
    if start is None:
        raise MimeError("empty input" if not raw.strip() else "no mail header block found")
    raw = raw[start:]
    unpacker = _Unpacker(max_depth, max_parts, max_total_bytes)
    try:
        msg = parse_message(raw)
    except RecursionError:
        # Thousands of nested multiparts: the stdlib parser recurses per level. Keep the headers.
        msg = parse_header_block(raw)
        unpacker.problem("0", HostileDocument("MIME structure is nested too deeply to parse"))
        return unpacker.result(message_meta(msg, unpacker.defects))
    unpacker.walk_message(msg, "", depth=0)
    return unpacker.result(message_meta(msg, unpacker.defects))


def wrap_file(data: bytes, filename: str, content_type: str | None = None) -> Unpacked:
    """Make a lone file (an uploaded or ``ingest``-ed PDF, XML, image, zip) look like a message.

    The file goes through the same rules as an attachment, so a zip, winmail.dat or .msg given on the
    command line is opened just as it would be in a mail. ``meta`` stays empty.
    """
    unpacker = _Unpacker()
    name = safe_filename(filename) or None
    ctype = content_type or (mimetypes.guess_type(name)[0] if name else None)
    unpacker.take(data, name, ctype, None, "1", depth=0, archive_depth=0)
    return unpacker.result(MessageMeta())


@dataclass(frozen=True)
class _Leaf:
    """A non-multipart part, decoded once so that the document rules need not touch the parser."""

    headers: PartHeaders
    data: bytes


class _Unpacker:
    """The state of one unpacking: results so far and the budgets that bound hostile input."""

    def __init__(
        self,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_parts: int = DEFAULT_MAX_PARTS,
        max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    ) -> None:
        self.max_depth = max_depth
        self.max_parts = max_parts
        self.budget = max_total_bytes
        self.documents: list[Document] = []
        self.problems: list[dict[str, str]] = []
        self.defects: list[str] = []
        self.parts = 0
        self.plain: str | None = None
        self.html: str | None = None
        self.paths: set[str] = set()

    def result(self, meta: MessageMeta) -> Unpacked:
        body = self.plain if self.plain is not None else _html_to_text(self.html or "")
        return Unpacked(
            meta=meta,
            documents=self.documents,
            problems=self.problems,
            body_text=body,
            links=invoice_links(self.plain, self.html),
        )

    def problem(self, path: str, error: InputError) -> None:
        self.problems.append({**error.as_dict(), "path": path})

    def count(self, path: str) -> bool:
        """Count one more part; past ``max_parts`` record a single problem and refuse the rest."""
        self.parts += 1
        if self.parts == self.max_parts + 1:
            self.problem(path, HostileDocument(f"more than {self.max_parts} parts; {path} and later skipped"))
        return self.parts <= self.max_parts

    def note_defects(self, obj: Message, where: str) -> None:
        for defect in obj.defects:
            if len(self.defects) < _DEFECTS_LIMIT:
                self.defects.append(f"{where}: {type(defect).__name__}")

    def walk_message(self, msg: Message, base: str, depth: int) -> None:
        """Walk one message, the outer one (``base`` "") or a forwarded one (``base`` its part)."""
        if depth > self.max_depth:
            self.problem(base, HostileDocument(f"forwarded mail nested deeper than {self.max_depth} levels"))
            return
        self.note_defects(msg, base or "message")
        if _is_container(msg):
            self.children(msg, base, depth, nesting=1)
        elif self.count(_join(base, 1)):
            self.leaf(msg, _join(base, 1), depth)

    def children(self, container: Message, base: str, depth: int, nesting: int) -> None:
        if nesting > _MAX_NESTING:
            self.problem(base or "0", HostileDocument(f"multipart nested deeper than {_MAX_NESTING} levels"))
            return
        payload = container.get_payload()
        for index, child in enumerate(payload if isinstance(payload, list) else [], start=1):
            path = _join(base, index)
            if not self.count(path):
                return
            if _is_container(child):
                self.note_defects(child, path)
                self.children(child, path, depth, nesting + 1)
            else:
                self.leaf(child, path, depth)

    def leaf(self, part: Message, path: str, depth: int) -> None:
        """Decide what one non-multipart part is: forwarded mail, document, body text or nothing."""
        try:
            ctype = part.get_content_type()
        except STDLIB_ERRORS:
            ctype = "application/octet-stream"
        if ctype in _NESTED_MESSAGE_TYPES:
            self.forwarded(part, path, depth + 1)
            return
        if ctype.startswith("message/"):
            return  # delivery reports, message/partial: header blocks, not documents
        described = self.describe(part, path)
        if described is None:
            return
        headers = described.headers
        if _is_document(described):
            # Content-Location (RFC 2557) names some parts that carry no filename at all.
            name = safe_filename(headers.filename or headers.location or "")
            self.take(described.data, name, headers.content_type, headers.charset, path, depth, 0)
        elif depth == 0 and headers.content_type in ("text/plain", "text/html"):
            text = _to_text(described.data[:_BODY_TEXT_LIMIT], headers.charset)
            if headers.content_type == "text/plain" and self.plain is None:
                self.plain = text
            elif headers.content_type == "text/html" and self.html is None:
                self.html = text

    def describe(self, part: Message, path: str) -> _Leaf | None:
        """Read a part under policy.default, again under compat32 if that raises, else a problem."""
        try:
            described = _describe(part)
        except STDLIB_ERRORS:
            try:
                part = compat_view(part)
                described = _describe(part)
            except STDLIB_ERRORS as exc:
                detail = f"part {path} is unreadable: {type(exc).__name__}: {exc}"
                self.problem(path, MalformedDocument(detail))
                return None
        self.note_defects(part, path)
        if described.headers.transfer_encoding == "base64" and _base64_is_damaged(part, described.data):
            name = described.headers.filename or f"part {path}"
            self.problem(path, MalformedDocument(f"{name}: base64 body is damaged beyond repair"))
            return None
        return described

    def forwarded(self, part: Message, path: str, depth: int) -> None:
        """Descend into an attached message (message/rfc822), however its sender encoded it."""
        payload = part.get_payload()
        inner = payload[0] if isinstance(payload, list) and payload else None
        cte = transfer_encoding(part)
        if isinstance(inner, Message) and (inner.keys() or cte in _TEXT_CTES):
            self.walk_message(inner, path, depth)
            return
        # RFC 2046 forbids encoding message/rfc822, Exchange does it anyway: the stdlib then parses
        # the base64 text as a headerless message, so decode that text and parse it again.
        try:
            data = _decode_transfer(_encoded_body(inner if isinstance(inner, Message) else part), cte)
        except STDLIB_ERRORS as exc:
            self.problem(path, MalformedDocument(f"forwarded mail in part {path} is unreadable: {exc}"))
            return
        self.nested_bytes(data, path, depth)

    def nested_bytes(self, data: bytes, path: str, depth: int) -> None:
        """Parse and walk a message that arrived as bytes (an .eml attachment or archive member)."""
        start = header_start(data)
        if start is None:
            self.problem(path, MalformedDocument(f"part {path} claims to be a mail but has no headers"))
            return
        try:
            msg = parse_message(data[start:])
        except RecursionError:
            self.problem(path, HostileDocument(f"mail in part {path} is nested too deeply to parse"))
            return
        except MimeError as exc:
            self.problem(path, MalformedDocument(f"mail in part {path}: {exc.detail}"))
            return
        self.walk_message(msg, path, depth)

    def take(
        self,
        data: bytes,
        name: str | None,
        ctype: str | None,
        charset: str | None,
        path: str,
        depth: int,
        archive_depth: int,
    ) -> None:
        """Keep a document, or open it when it is a wrapper (zip, winmail.dat, .msg, attached .eml)."""
        if len(data) > self.budget:
            label = name or f"part {path}"
            self.problem(path, DocumentTooLarge(f"{label}: {len(data)} bytes exceed the message budget"))
            return
        # Archive magic first: detect() finds "%PDF-" anywhere in the head, so a zip that stores a
        # PDF uncompressed would pass for a PDF.
        kind = (
            "zip"
            if data.startswith(b"PK\x03\x04")
            else detect(Document(data=data[:_SNIFF_BYTES], filename=name, content_type=ctype))
        )
        opens = kind == "tnef" or (kind in ("zip", "msg") and not _is_office_container(name, ctype))
        if opens and self.open_archive(kind, data, name or f"part {path}", path, depth, archive_depth):
            return
        if kind == "message" and looks_like_message(data):
            self.nested_bytes(data, path, depth + 1)
            return
        filename = name or _synthetic_name(path, kind, ctype)
        unique = path
        while unique in self.paths:  # archives may repeat a name; paths must tell documents apart
            unique += "~"
        self.paths.add(unique)
        self.budget -= len(data)
        self.documents.append(
            Document(data=data, filename=filename, content_type=ctype, path=unique, charset=charset)
        )

    def open_archive(
        self, kind: str, data: bytes, label: str, path: str, depth: int, archive_depth: int
    ) -> bool:
        """Take a zip, winmail.dat or Outlook .msg apart; False when it is not one after all.

        That happens only to OLE2 files that hold no message (a .doc without its name), which the
        caller then keeps whole.
        """
        if archive_depth >= ARCHIVE_MAX_DEPTH:
            self.problem(path, HostileDocument(f"{label}: archives nested deeper than {ARCHIVE_MAX_DEPTH}"))
            return True
        try:
            members = _ARCHIVE_READERS[kind](data, max_bytes=self.budget)
        except InputError as exc:
            if kind == "msg" and isinstance(exc, UnsupportedDocument):
                return False
            self.problem(path, type(exc)(f"{label}: {exc.detail}"))
            return True
        for index, member in enumerate(members, start=1):
            components = safe_member_path(member.name)
            if isinstance(member, Refused):  # a nameless refusal speaks about the whole archive
                self.problem(f"{path}/{'/'.join(components)}" if components else path, member.error)
                continue
            member_path = f"{path}/{'/'.join(components) or index}"
            if not self.count(member_path):
                return True
            member_name = components[-1] if components else None
            ctype = mimetypes.guess_type(member_name)[0] if member_name else None
            self.take(member.data, member_name, ctype, None, member_path, depth, archive_depth + 1)
        return True


def _describe(part: Message) -> _Leaf:
    headers = read_part_headers(part)
    return _Leaf(headers=headers, data=_decoded_payload(part, headers.transfer_encoding))


def _decoded_payload(part: Message, cte: str) -> bytes:
    declared = part.get("content-transfer-encoding")
    if declared is not None and cte in _KNOWN_CTES and str(declared).lower() != cte:
        # "base64;" or " Base64 ": the stdlib compares the header verbatim and would hand back the
        # encoded text; the part is ours, so normalise the header and let the stdlib decode.
        part.replace_header("Content-Transfer-Encoding", cte)
    data = part.get_payload(decode=True)
    if cte == "base64" and any(isinstance(d, email.errors.InvalidBase64LengthDefect) for d in part.defects):
        # Here the stdlib returns the undecoded text (bpo-27397); decode like a mail client would.
        data = _decode_transfer(_encoded_body(part), cte)
    return data if isinstance(data, bytes) else b""


def _encoded_body(part: Message) -> bytes:
    """The body as sent, still transfer-encoded.

    Not ``get_payload()``: on 8-bit bytes it decodes with the declared charset, and a sender may
    declare "punycode", whose decoder is quadratic. Without a Content-Transfer-Encoding,
    ``get_payload(decode=True)`` hands back the raw bytes, so the header is lifted meanwhile.
    """
    original = part.get("content-transfer-encoding")
    del part["content-transfer-encoding"]
    try:
        data = part.get_payload(decode=True)
    finally:
        if original is not None:
            part["Content-Transfer-Encoding"] = original
    return data if isinstance(data, bytes) else b""


def _base64_is_damaged(part: Message, data: bytes) -> bool:
    """Mostly-not-base64 text decodes to noise, so it is refused rather than passed on as a file.

    A few stray characters (a footer some gateway pasted into the part) are tolerated: past one
    in twenty the part is judged damaged.
    """
    encoded = _encoded_body(part).translate(None, b" \t\r\n\x0b\x0c")
    if not encoded:
        return False
    junk = len(encoded.translate(None, _BASE64_CHARS))
    return not data or junk * 20 > len(encoded)


def _decode_transfer(encoded: bytes, cte: str) -> bytes:
    if cte == "base64":
        return bytes(decode_base64_payload(encoded.decode("ascii", "replace")))
    return quopri.decodestring(encoded) if cte == "quoted-printable" else encoded


def _is_container(part: Message) -> bool:
    try:
        return part.is_multipart() and part.get_content_maintype() == "multipart"
    except STDLIB_ERRORS:
        return False


def _join(base: str, index: int) -> str:
    return f"{base}.{index}" if base else str(index)


def _is_document(leaf: _Leaf) -> bool:
    """The attachment rule: named or attached parts, plus unnamed parts whose content is a candidate.

    Images referenced only by Content-ID are logos and signatures in an HTML body, not invoices.
    """
    headers = leaf.headers
    if headers.filename or headers.disposition == "attachment":
        return True
    if headers.content_type.startswith("image/"):
        return not headers.content_id
    if headers.content_type in _INVOICE_TYPES:
        return True
    if headers.content_type.startswith("application/"):
        head = Document(data=leaf.data[:_SNIFF_BYTES], content_type=headers.content_type)
        return detect(head) in _SNIFFED_KINDS
    return False


def _is_office_container(name: str | None, ctype: str | None) -> bool:
    """OOXML/ODF files are zips and .doc/.xls are OLE2 like .msg; opening them would scatter their
    guts as documents."""
    ctype = (ctype or "").lower()
    if (name or "").lower().endswith(_CONTAINER_SUFFIXES + _OLE_OFFICE_SUFFIXES):
        return True
    return any(
        word in ctype for word in ("officedocument", "opendocument", "msword", "ms-excel", "ms-powerpoint")
    )


def _synthetic_name(path: str, kind: str, ctype: str | None) -> str:
    """``attachment-2.pdf``: downstream code and people need a name, and the path makes it unique."""
    extension = _EXTENSIONS.get(kind)
    if extension is None and ctype:
        extension = ".xml" if ctype.endswith("/xml") else mimetypes.guess_extension(ctype)
    return f"attachment-{re.sub(r'[^0-9A-Za-z]+', '-', path)}{extension or '.bin'}"


def _to_text(data: bytes, charset: str | None) -> str:
    """Decode a body with its declared charset; unknown, non-text ("base64") and slow or unsafe
    codecs (quadratic punycode, escape-executing unicode-escape) fall back to UTF-8."""
    try:
        codec = codecs.lookup(charset or "utf-8").name
        return data.decode("utf-8" if codec in _UNSAFE_CODECS else codec, "replace")
    except STDLIB_ERRORS:
        return data.decode("utf-8", "replace")


_HTML_BLOCK = re.compile(r"<(script|style)\b", re.I)
_HTML_BREAK = re.compile(r"<(?:br|/p|/div|/tr|/li|/h[1-6])\b[^<>]*>", re.I)
_HTML_TAG = re.compile(r"<[^<>]*>")


def _html_to_text(html_text: str) -> str:
    """Crude on purpose: enough to search an HTML-only body for an invoice number.

    Plain scans and regexes that never backtrack across a "<", because html.parser is quadratic
    on unclosed tags (150,000 "<script" took minutes) and raises on "<![" junk.
    """
    kept, pos = [], 0
    while (block := _HTML_BLOCK.search(html_text, pos)) is not None:
        kept.append(html_text[pos : block.start()])
        close = re.compile(f"</{block.group(1)}", re.I).search(html_text, block.end())
        pos = close.start() if close else len(html_text)
    kept.append(html_text[pos:])
    text = html.unescape(_HTML_TAG.sub(" ", _HTML_BREAK.sub("\n", "".join(kept))))
    lines = (" ".join(line.split()) for line in text.splitlines())
    return "\n".join(line for line in lines if line)
