"""Turn one raw message into documents: attachments, forwarded mails' attachments, archive members.

Pure: bytes in, dataclasses out. Real accounts-payable mail is messy (wrong charsets, broken
boundaries, PDFs labelled application/octet-stream, forwards of forwards, zips, winmail.dat), so
the rule throughout is to take out every part that could carry an invoice and to turn a part that
cannot be taken out into a ``problems`` entry rather than an exception: one bad part must never
cost its siblings. Only input with no message structure at all raises ``MimeError``.

The standard library parser is the base, with ``policy.default`` for its RFC 2047/2231 decoding.
That policy's header parser can raise on hostile headers, so a part it chokes on is read again
under ``compat32``; mail-parser decodes what compat32 leaves encoded and recovers base64 that the
standard library gives up on.

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
from email.parser import BytesHeaderParser, BytesParser
from email.policy import Compat32, EmailPolicy
from email.utils import formataddr, getaddresses, parsedate_to_datetime
from typing import Any

from mailparser.utils import decode_base64_payload, decode_header_part

from mailingest.documents import Document
from mailingest.errors import DocumentTooLarge, HostileDocument, InputError, MalformedDocument, MimeError
from mailingest.mime_archive import Refused, read_tnef, read_zip, safe_filename, safe_member_path
from mailingest.pipeline.detect import detect

DEFAULT_MAX_DEPTH = 5
DEFAULT_MAX_PARTS = 200
DEFAULT_MAX_TOTAL_BYTES = 200 * 2**20

ARCHIVE_MAX_DEPTH = 2
"""A zip may hold one more zip (vendors do zip their e-invoice bundles twice), not a third."""

_MAX_NESTING = 64
"""multipart-in-multipart levels walked; real mail uses four, the stdlib parser itself fails near 1000."""

_BODY_TEXT_LIMIT = 1 << 20
_DEFECTS_LIMIT = 100

_STDLIB_ERRORS = (ValueError, TypeError, LookupError, AttributeError, email.errors.MessageError)
"""What the stdlib email package raises on hostile headers instead of recording a defect
(UnicodeError and HeaderParseError included); anything else is a bug of ours and should surface."""

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
_EXTENSIONS = {"pdf": ".pdf", "xml": ".xml", "zip": ".zip", "message": ".eml", "tnef": ".dat", "msg": ".msg"}
_BASE64_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?")
_FIELD = re.compile(rb"([!-9;-~]{1,76})[ \t]*:")
_MAIL_HEADERS = frozenset(
    b"received from return-path mime-version message-id date subject to cc sender reply-to "
    b"delivered-to envelope-to x-original-to content-type dkim-signature authentication-results "
    b"in-reply-to references thread-topic x-mailer user-agent".split()
)
_UNSAFE_CODECS = frozenset({"punycode", "idna", "unicode-escape", "raw-unicode-escape"})
_HEADER_LIMIT = 8192
_SNIFF_BYTES = 65536


@dataclass(frozen=True)
class MessageMeta:
    """What the headers say: provenance for the canonical invoice's ``source`` and for routing."""

    message_id: str | None = None
    from_: str | None = None
    to: list[str] = field(default_factory=list)
    subject: str | None = None
    date: str | None = None
    defects: list[str] = field(default_factory=list)


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


def looks_like_message(data: bytes) -> bool:
    """Tell an .eml from a PDF, XML or binary file: does it open with a mail header block?"""
    return _header_start(data) is not None


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
    start = _header_start(raw)
    if start is None:
        raise MimeError("empty input" if not raw.strip() else "no mail header block found")
    raw = raw[start:]
    unpacker = _Unpacker(max_depth, max_parts, max_total_bytes)
    try:
        msg = _parse(raw)
    except RecursionError:
        # Thousands of nested multiparts: the stdlib parser recurses per level. Keep the headers.
        msg = BytesHeaderParser(policy=_COMPAT32).parsebytes(raw)
        unpacker.problem("0", HostileDocument("MIME structure is nested too deeply to parse"))
        return unpacker.result(_meta(msg, unpacker.defects))
    unpacker.walk_message(msg, "", depth=0)
    return unpacker.result(_meta(msg, unpacker.defects))


def wrap_file(data: bytes, filename: str, content_type: str | None = None) -> Unpacked:
    """Make a lone file (an uploaded or ``ingest``-ed PDF, XML, image, zip) look like a message.

    The file goes through the same rules as an attachment, so a zip or winmail.dat given on the
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

    content_type: str
    filename: str | None
    disposition: str | None
    content_id: str | None
    location: str | None
    charset: str | None
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
        return Unpacked(meta=meta, documents=self.documents, problems=self.problems, body_text=body)

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
        except _STDLIB_ERRORS:
            ctype = "application/octet-stream"
        if ctype in _NESTED_MESSAGE_TYPES:
            self.forwarded(part, path, depth + 1)
            return
        if ctype.startswith("message/"):
            return  # delivery reports, message/partial: header blocks, not documents
        described = self.describe(part, path)
        if described is None:
            return
        if _is_document(described):
            # Content-Location (RFC 2557) names some parts that carry no filename at all.
            name = safe_filename(described.filename or described.location or "")
            self.take(described.data, name, described.content_type, described.charset, path, depth, 0)
        elif depth == 0 and described.content_type in ("text/plain", "text/html"):
            text = _to_text(described.data[:_BODY_TEXT_LIMIT], described.charset)
            if described.content_type == "text/plain" and self.plain is None:
                self.plain = text
            elif described.content_type == "text/html" and self.html is None:
                self.html = text

    def describe(self, part: Message, path: str) -> _Leaf | None:
        """Read a part under policy.default, again under compat32 if that raises, else a problem."""
        try:
            described = _describe(part)
        except _STDLIB_ERRORS:
            try:
                part = _compat_view(part)
                described = _describe(part)
            except _STDLIB_ERRORS as exc:
                detail = f"part {path} is unreadable: {type(exc).__name__}: {exc}"
                self.problem(path, MalformedDocument(detail))
                return None
        self.note_defects(part, path)
        if _transfer_encoding(part) == "base64" and _base64_is_damaged(part, described.data):
            name = described.filename or f"part {path}"
            self.problem(path, MalformedDocument(f"{name}: base64 body is damaged beyond repair"))
            return None
        return described

    def forwarded(self, part: Message, path: str, depth: int) -> None:
        """Descend into an attached message (message/rfc822), however its sender encoded it."""
        payload = part.get_payload()
        inner = payload[0] if isinstance(payload, list) and payload else None
        cte = _transfer_encoding(part)
        if isinstance(inner, Message) and (inner.keys() or cte in _TEXT_CTES):
            self.walk_message(inner, path, depth)
            return
        # RFC 2046 forbids encoding message/rfc822, Exchange does it anyway: the stdlib then parses
        # the base64 text as a headerless message, so decode that text and parse it again.
        try:
            data = _decode_transfer(_encoded_body(inner if isinstance(inner, Message) else part), cte)
        except _STDLIB_ERRORS as exc:
            self.problem(path, MalformedDocument(f"forwarded mail in part {path} is unreadable: {exc}"))
            return
        self.nested_bytes(data, path, depth)

    def nested_bytes(self, data: bytes, path: str, depth: int) -> None:
        """Parse and walk a message that arrived as bytes (an .eml attachment or archive member)."""
        start = _header_start(data)
        if start is None:
            self.problem(path, MalformedDocument(f"part {path} claims to be a mail but has no headers"))
            return
        try:
            msg = _parse(data[start:])
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
        """Keep a document, or open it when it is a wrapper (zip, winmail.dat, attached .eml)."""
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
        if kind == "tnef" or (kind == "zip" and not _is_office_container(name, ctype)):
            self.open_archive(kind, data, name or f"part {path}", path, depth, archive_depth)
            return
        if kind == "message" and looks_like_message(data):
            self.nested_bytes(data, path, depth + 1)
            return
        # .msg (Outlook OLE2) stays whole: the one maintained reader, extract-msg, is GPL-3.0.
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
    ) -> None:
        if archive_depth >= ARCHIVE_MAX_DEPTH:
            self.problem(path, HostileDocument(f"{label}: archives nested deeper than {ARCHIVE_MAX_DEPTH}"))
            return
        try:
            members = (read_zip if kind == "zip" else read_tnef)(data, max_bytes=self.budget)
        except InputError as exc:
            self.problem(path, type(exc)(f"{label}: {exc.detail}"))
            return
        for index, member in enumerate(members, start=1):
            components = safe_member_path(member.name)
            if isinstance(member, Refused):  # a nameless refusal speaks about the whole archive
                self.problem(f"{path}/{'/'.join(components)}" if components else path, member.error)
                continue
            member_path = f"{path}/{'/'.join(components) or index}"
            if not self.count(member_path):
                return
            member_name = components[-1] if components else None
            ctype = mimetypes.guess_type(member_name)[0] if member_name else None
            self.take(member.data, member_name, ctype, None, member_path, depth, archive_depth + 1)


class _DefaultPolicy(EmailPolicy):
    """policy.default, but header values are cut to 8 KiB before they are parsed.

    policy.default parses long structured headers in quadratic time (a 400 kB Content-Type took
    35 s, and the parser reads Content-Type on every part) and real headers stay far below 8 KiB.
    """

    def header_fetch_parse(self, name: str, value: str) -> Any:
        return super().header_fetch_parse(name, _cut(value))


class _Compat32Policy(Compat32):
    """compat32 with the same cut: its RFC 2231 decoding runs the declared codec over the value."""

    def header_fetch_parse(self, name: str, value: str) -> Any:
        return super().header_fetch_parse(name, _cut(value))


def _cut(value: str) -> str:
    return value[:_HEADER_LIMIT] if len(value) > _HEADER_LIMIT else value  # header objects stay intact


_DEFAULT = _DefaultPolicy()
_COMPAT32 = _Compat32Policy()


def _parse(raw: bytes) -> Message:
    """policy.default first; compat32 when the default policy's header parser raises mid-parse."""
    try:
        return BytesParser(policy=_DEFAULT).parsebytes(raw)
    except _STDLIB_ERRORS:
        try:
            return BytesParser(policy=_COMPAT32).parsebytes(raw)
        except _STDLIB_ERRORS as exc:
            raise MimeError(f"message cannot be parsed: {type(exc).__name__}: {exc}") from exc


def _compat_view(part: Message) -> Message:
    """The same part re-read under compat32, whose header handling is plain string slicing."""
    return BytesParser(policy=_COMPAT32).parsebytes(part.as_bytes(policy=_COMPAT32))


def _describe(part: Message) -> _Leaf:
    filename = part.get_filename()
    if filename and _ENCODED_WORD.search(filename):
        # compat32 leaves RFC 2047 words in parameters encoded, and so do both policies when a
        # client splits one word across RFC 2231 continuations.
        filename = _decode_words(filename)
    content_id = part.get("content-id")
    location = part.get("content-location")
    return _Leaf(
        content_type=part.get_content_type(),
        filename=filename,
        disposition=part.get_content_disposition(),
        content_id=(str(content_id).strip() or None) if content_id is not None else None,
        location=re.split(r"[?#]", str(location))[0] if location is not None else None,
        charset=part.get_content_charset(),
        data=_decoded_payload(part),
    )


def _decoded_payload(part: Message) -> bytes:
    cte = _transfer_encoding(part)
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


def _transfer_encoding(part: Message) -> str:
    value = part.get("content-transfer-encoding")
    if value is None:
        return "7bit"
    match = re.match(r"[a-z0-9-]+", str(value).strip(" \t\"'").lower())
    return match.group(0) if match else "7bit"


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
    except _STDLIB_ERRORS:
        return False


def _join(base: str, index: int) -> str:
    return f"{base}.{index}" if base else str(index)


def _is_document(leaf: _Leaf) -> bool:
    """The attachment rule: named or attached parts, plus unnamed parts whose content is a candidate.

    Images referenced only by Content-ID are logos and signatures in an HTML body, not invoices.
    """
    if leaf.filename or leaf.disposition == "attachment":
        return True
    if leaf.content_type.startswith("image/"):
        return not leaf.content_id
    if leaf.content_type in _INVOICE_TYPES:
        return True
    if leaf.content_type.startswith("application/"):
        head = Document(data=leaf.data[:_SNIFF_BYTES], content_type=leaf.content_type)
        return detect(head) in _SNIFFED_KINDS
    return False


def _is_office_container(name: str | None, ctype: str | None) -> bool:
    """OOXML/ODF files are zips too, but opening them would scatter their XML guts as documents."""
    ctype = (ctype or "").lower()
    if (name or "").lower().endswith(_CONTAINER_SUFFIXES):
        return True
    return "officedocument" in ctype or "opendocument" in ctype


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
    except _STDLIB_ERRORS:
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


def _header_start(data: bytes) -> int | None:
    """Offset of the header block (after a BOM or blank lines), or None when there is none.

    The first line must be a header field (or an mbox "From " line) and a well-known mail header
    must follow before the blank line: PDFs, XML and binary junk fail on the first line.
    """
    head = data[:_SNIFF_BYTES]
    start = 3 if head.startswith(b"\xef\xbb\xbf") else 0
    start += len(head[start:]) - len(head[start:].lstrip(b" \t\r\n"))
    lines = head[start:].splitlines()
    if lines and lines[0].startswith(b"From "):
        lines = lines[1:]
    if not lines or not _FIELD.match(lines[0]):
        return None
    for line in lines:
        if not line.strip():
            break
        match = _FIELD.match(line)
        if match and match.group(1).lower() in _MAIL_HEADERS:
            return start
    return None


def _meta(msg: Message, defects: list[str]) -> MessageMeta:
    date = _date(msg)
    if date is None and _raw_header(msg, "date") is not None:
        defects.append("message: unparseable Date header")
    return MessageMeta(
        message_id=_header(msg, "message-id"),
        from_=_header(msg, "from"),
        to=_addresses(msg, "to"),
        subject=_header(msg, "subject"),
        date=date,
        defects=defects,
    )


def _header(msg: Message, name: str) -> str | None:
    try:
        value = msg.get(name)
        text = None if value is None else str(value)
    except _STDLIB_ERRORS:
        text = _raw_header(msg, name)
    if text is not None and _ENCODED_WORD.search(text):
        text = _decode_words(text)  # left encoded by compat32, or malformed for policy.default
    return text


def _decode_words(text: str) -> str:
    """RFC 2047 words decoded leniently by mail-parser; the text as it is when even that fails."""
    text = text[:_HEADER_LIMIT]
    try:
        return str(decode_header_part(text))
    except _STDLIB_ERRORS:  # e.g. a charset name holding a NUL
        return text


def _raw_header(msg: Message, name: str) -> str | None:
    for key, value in msg.raw_items():
        if key.lower() == name:
            return _decode_words("".join(str(value).splitlines()))
    return None


def _addresses(msg: Message, name: str) -> list[str]:
    try:
        header = msg.get(name)
        if header is None:
            return []
        found = getattr(header, "addresses", None)
        if found is not None:
            return [str(address) for address in found]
        text = str(header)
    except _STDLIB_ERRORS:
        text = _raw_header(msg, name) or ""
    return [formataddr(pair) for pair in getaddresses([_decode_words(text)]) if pair[1]]


def _date(msg: Message) -> str | None:
    try:
        found = getattr(msg.get("date"), "datetime", None)
    except _STDLIB_ERRORS:
        found = None
    raw = _raw_header(msg, "date") if found is None else None
    if raw:
        try:
            found = parsedate_to_datetime(raw)  # compat32 has no parsed date
        except _STDLIB_ERRORS:
            found = None
    return found.isoformat() if found is not None else None
