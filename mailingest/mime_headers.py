"""Read mail headers for :mod:`mailingest.mime`: the parse, each part's structural headers, the meta.

Kept apart because headers are where hostile mail hurts the standard library: ``policy.default``
parses long structured headers in quadratic time and, on some malformed ones, raises instead of
recording a defect. The hardening lives here in one place: values are cut to 8 KiB before they
are parsed, a part the default policy chokes on is read again under ``compat32``, and mail-parser
decodes the RFC 2047 words that both policies leave encoded. The memo that keeps the default
policy from parsing the same header over and over, once most of the cost of a mail, lives here too.
"""

from __future__ import annotations

import email.errors
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesHeaderParser, BytesParser
from email.policy import Compat32, EmailPolicy
from email.utils import formataddr, getaddresses, parsedate_to_datetime
from typing import Any

from mailparser.utils import decode_header_part

from mailingest.errors import MimeError

STDLIB_ERRORS = (ValueError, TypeError, LookupError, AttributeError, email.errors.MessageError)
"""What the stdlib email package raises on hostile headers instead of recording a defect
(UnicodeError and HeaderParseError included); anything else is a bug of ours and should surface."""

_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?")
_FIELD = re.compile(rb"([!-9;-~]{1,76})[ \t]*:")
_MAIL_HEADERS = frozenset(
    b"received from return-path mime-version message-id date subject to cc sender reply-to "
    b"delivered-to envelope-to x-original-to content-type dkim-signature authentication-results "
    b"in-reply-to references thread-topic x-mailer user-agent".split()
)
_HEADER_LIMIT = 8192
_HEAD_BYTES = 65536
"""How far :func:`header_start` reads: the header block and a well-known header must show within it."""

_MEMO_CHARS = 2 * _HEADER_LIMIT
"""Header text one message's memo holds. A parsed header takes up to ~1 kB per character of value
(parameter- or address-dense ones), so this bounds the memo near 16 MB even for hostile mail; two
headers cut at the limit (a part's Content-Type and Content-Disposition, read by turns) still fit,
and real mail, whose structural headers are a few dozen short lines, never fills it."""


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
class PartHeaders:
    """One leaf part's structural headers, read once: the document rules consult them repeatedly."""

    content_type: str
    filename: str | None
    disposition: str | None
    content_id: str | None
    location: str | None
    charset: str | None
    transfer_encoding: str


class _DefaultPolicy(EmailPolicy):
    """policy.default, but header values are cut to 8 KiB before they are parsed, and remembered.

    policy.default parses long structured headers in quadratic time (a 400 kB Content-Type took
    35 s, and the parser reads Content-Type on every part) and real headers stay far below 8 KiB.
    It also parses a header afresh on every read, and the stdlib parser alone reads each part's
    Content-Type several times (maintype, type, boundary, charset...), so that re-parsing was most
    of the time spent on a mail: the memo turns re-reads into lookups. Each parse gets its own
    policy (see :func:`parse_message`), so the memo lives and dies with one message and nothing is
    shared between messages or threads. It is keyed on the raw value, so a header that is
    replaced simply becomes a new key.
    """

    _memo: _HeaderMemo

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        object.__setattr__(self, "_memo", _HeaderMemo())  # policies refuse plain attribute assignment

    def header_fetch_parse(self, name: str, value: str) -> Any:
        value = _cut(value)
        # Header objects (stored by our own header edits) are str subclasses equal to their
        # decoded text, so they must not meet raw values in the memo; the stdlib returns them as is.
        if type(value) is not str:
            return super().header_fetch_parse(name, value)
        return self._memo.fetch(name, value, super().header_fetch_parse)


class _HeaderMemo:
    """One message's parsed headers by (name, raw value), at most ``_MEMO_CHARS`` of values.

    When the next value would not fit, the memo starts over: the re-reads it saves come in runs
    on one part, so forgetting earlier parts costs little.
    """

    def __init__(self) -> None:
        self._parsed: dict[tuple[str, str], Any] = {}
        self._chars = 0

    def fetch(self, name: str, value: str, parse: Callable[[str, str], Any]) -> Any:
        key = (name, value)
        parsed = self._parsed.get(key)
        if parsed is None:
            parsed = parse(name, value)
            if self._chars + len(value) > _MEMO_CHARS:
                self._parsed.clear()
                self._chars = 0
            self._parsed[key] = parsed
            self._chars += len(value)
        return parsed


class _Compat32Policy(Compat32):
    """compat32 with the same cut: its RFC 2231 decoding runs the declared codec over the value."""

    def header_fetch_parse(self, name: str, value: str) -> Any:
        return super().header_fetch_parse(name, _cut(value))


def _cut(value: str) -> str:
    return value[:_HEADER_LIMIT] if len(value) > _HEADER_LIMIT else value  # header objects stay intact


_COMPAT32 = _Compat32Policy()


def header_start(data: bytes) -> int | None:
    """Offset of the header block (after a BOM or blank lines), or None when there is none.

    The first line must be a header field (or an mbox "From " line) and a well-known mail header
    must follow before the blank line: PDFs, XML and binary junk fail on the first line.
    """
    head = data[:_HEAD_BYTES]
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


def parse_message(raw: bytes) -> Message:
    """policy.default first; compat32 when the default policy's header parser raises mid-parse.

    Raises ``MimeError`` when neither can, and lets ``RecursionError`` through for the caller.
    """
    try:
        return BytesParser(policy=_DefaultPolicy()).parsebytes(raw)
    except STDLIB_ERRORS:
        try:
            return BytesParser(policy=_COMPAT32).parsebytes(raw)
        except STDLIB_ERRORS as exc:
            raise MimeError(f"message cannot be parsed: {type(exc).__name__}: {exc}") from exc


def parse_header_block(raw: bytes) -> Message:
    """Only the headers, under compat32: what is left of a mail whose body cannot be parsed."""
    return BytesHeaderParser(policy=_COMPAT32).parsebytes(raw)


def compat_view(part: Message) -> Message:
    """The same part re-read under compat32, whose header handling is plain string slicing."""
    return BytesParser(policy=_COMPAT32).parsebytes(part.as_bytes(policy=_COMPAT32))


def read_part_headers(part: Message) -> PartHeaders:
    """Read a leaf part's structural headers; raises ``STDLIB_ERRORS`` on ones the policy chokes on."""
    filename = part.get_filename()
    if filename and _ENCODED_WORD.search(filename):
        # compat32 leaves RFC 2047 words in parameters encoded, and so do both policies when a
        # client splits one word across RFC 2231 continuations.
        filename = _decode_words(filename)
    content_id = part.get("content-id")
    location = part.get("content-location")
    return PartHeaders(
        content_type=part.get_content_type(),
        filename=filename,
        disposition=part.get_content_disposition(),
        content_id=(str(content_id).strip() or None) if content_id is not None else None,
        location=re.split(r"[?#]", str(location))[0] if location is not None else None,
        charset=part.get_content_charset(),
        transfer_encoding=transfer_encoding(part),
    )


def transfer_encoding(part: Message) -> str:
    """The Content-Transfer-Encoding token, lower case; junk around it ("Base64;") is dropped."""
    value = part.get("content-transfer-encoding")
    if value is None:
        return "7bit"
    match = re.match(r"[a-z0-9-]+", str(value).strip(" \t\"'").lower())
    return match.group(0) if match else "7bit"


def message_meta(msg: Message, defects: list[str]) -> MessageMeta:
    """The outer message's provenance headers; ``defects`` gains a note on an unparseable Date."""
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
    except STDLIB_ERRORS:
        text = _raw_header(msg, name)
    if text is not None and _ENCODED_WORD.search(text):
        text = _decode_words(text)  # left encoded by compat32, or malformed for policy.default
    return text


def _decode_words(text: str) -> str:
    """RFC 2047 words decoded leniently by mail-parser; the text as it is when even that fails."""
    text = text[:_HEADER_LIMIT]
    try:
        return str(decode_header_part(text))
    except STDLIB_ERRORS:  # e.g. a charset name holding a NUL
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
    except STDLIB_ERRORS:
        text = _raw_header(msg, name) or ""
    return [_format_address(name, addr) for name, addr in getaddresses([_decode_words(text)]) if addr]


def _format_address(name: str, addr: str) -> str:
    """formataddr raises on non-ASCII local parts (SMTPUTF8 mail); those are shown as written."""
    try:
        return formataddr((name, addr))
    except UnicodeError:
        return f"{name} <{addr}>" if name else addr


def _date(msg: Message) -> str | None:
    try:
        found = getattr(msg.get("date"), "datetime", None)
    except STDLIB_ERRORS:
        found = None
    raw = _raw_header(msg, "date") if found is None else None
    if raw:
        try:
            found = parsedate_to_datetime(raw)  # compat32 has no parsed date
        except STDLIB_ERRORS:
            found = None
    return found.isoformat() if found is not None else None
