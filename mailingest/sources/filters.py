"""Per-account filters (``[sources.imap.filters]``): which new messages an IMAP account takes.

The watcher fetches only ENVELOPE, BODYSTRUCTURE, RFC822.SIZE and FLAGS for new mail, turns them
into a ``Summary`` here and asks ``decide``; only messages it takes are downloaded. So a mailbox
full of newsletters costs a few hundred bytes per message, never their bodies. Everything here is
pure (no server, no I/O) so the policy is testable on its own.

Filters are a convenience, not a security boundary: the sender is the From address, which anyone
can write. Parsing never raises on odd input — a part it cannot read is simply not counted —
because one strange message must not stop an account's intake.
"""

from __future__ import annotations

import email.utils
import itertools
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from fnmatch import fnmatchcase
from typing import Any, NamedTuple

from imapclient.response_types import Envelope

from mailingest.config import ImapFilters, ImapSourceConfig
from mailingest.sources.imap_session import SEEN

_FORWARDED = frozenset({b"message/rfc822", b"message/global"})
_MAX_DEPTH = 30  # multipart/forward nesting followed; deeper parts are hostile, not invoices
_SHOWN = 5  # attachments named in a reason; the rest are counted


class Attachment(NamedTuple):
    name: str  # decoded file name, "" when the part has none
    content_type: str  # lower-case "type/subtype"


@dataclass(frozen=True)
class Summary:
    """What the server tells about a message before its body is downloaded."""

    sender: str
    subject: str
    attachments: list[Attachment]
    size: int
    flags: tuple[bytes, ...]


@dataclass(frozen=True)
class Decision:
    """``take`` or not, and why — the reason goes into the log line for every message.

    ``failed`` marks the one refusal that is not a filter: a message too large to download. It may
    well be an invoice, so it gets the ``on_failure`` action (for a person to look at) rather than
    ``skipped_action``."""

    take: bool
    reason: str
    failed: bool = False

    @property
    def verdict(self) -> str:
        return "take" if self.take else "fail" if self.failed else "skip"


def decide(
    envelope_from: str,
    subject: str,
    attachments: Sequence[Attachment],
    size: int,
    flags: Collection[bytes],
    config: ImapSourceConfig,
) -> Decision:
    """Apply the account's filters; the first filter that refuses gives the reason.

    Filters come before the size limit: a huge mail from a denied sender is skipped, not failed.
    ``since`` is not checked here — it is part of the server-side SEARCH, as is ``only_unseen``;
    the latter is checked again because a person may read a message between SEARCH and FETCH."""
    rules = config.filters
    sender = envelope_from.lower()
    shown = sender or "(no address)"
    passed: list[str] = []
    denied = _first_match(sender, rules.deny_senders)
    if denied is not None:
        return Decision(False, f"sender {shown} matches deny_senders {denied!r}")
    if rules.allow_senders:
        allowed = _first_match(sender, rules.allow_senders)
        if allowed is None:
            return Decision(False, f"sender {shown} matches no allow_senders pattern")
        passed.append(f"sender {shown} matches allow_senders {allowed!r}")
    if config.only_unseen and SEEN in flags:
        return Decision(False, "already seen (only_unseen)")
    if rules.subject_patterns:
        pattern = next((p for p in rules.subject_patterns if re.search(p, subject)), None)
        if pattern is None:
            return Decision(False, f"subject {_clip(subject)!r} matches no subject_patterns")
        passed.append(f"subject matches {pattern!r}")
    if rules.require_attachment or rules.attachment_names or rules.attachment_types:
        if not attachments:
            return Decision(False, "no attachment")
        wanted = next((a for a in attachments if _wanted(a, rules)), None)
        if wanted is None:
            return Decision(False, f"no attachment matches attachment_names/types: {_listed(attachments)}")
        passed.append(f"attachment {_listed([wanted])}")
    if size > config.max_message_bytes:
        limit = config.max_message_bytes
        return Decision(False, f"too large: {size} bytes > max_message_bytes {limit}", failed=True)
    return Decision(True, "; ".join(passed) or "no filter refuses it")


def _first_match(sender: str, patterns: Sequence[str]) -> str | None:
    """The first glob matching the (lower-case) address; patterns are lower-cased at config load."""
    return next((p for p in patterns if fnmatchcase(sender, p)), None)


def _wanted(attachment: Attachment, rules: ImapFilters) -> bool:
    """One attachment must satisfy both lists (each when set): ``*.pdf`` + ``application/pdf`` means
    a PDF named so, not any PDF next to any file called .pdf."""
    name_ok = not rules.attachment_names or any(
        fnmatchcase(attachment.name.lower(), p) for p in rules.attachment_names
    )
    type_ok = not rules.attachment_types or any(
        fnmatchcase(attachment.content_type, p) for p in rules.attachment_types
    )
    return name_ok and type_ok


def _clip(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _listed(attachments: Sequence[Attachment]) -> str:
    shown = ", ".join(f"{_clip(a.name, 80) or '(unnamed)'} ({a.content_type})" for a in attachments[:_SHOWN])
    more = len(attachments) - _SHOWN
    return f"{shown} and {more} more" if more > 0 else shown


# -- turning the server's answers into a Summary -------------------------------------------------


def summarise(data: Mapping[bytes, Any]) -> Summary:
    """One imapclient FETCH result (ENVELOPE, BODYSTRUCTURE, RFC822.SIZE, FLAGS) → Summary."""
    envelope = data[b"ENVELOPE"]
    return Summary(
        sender=sender_address(envelope),
        subject=_words(_text(envelope.subject)) if isinstance(envelope, Envelope) else "",
        attachments=attachments(data[b"BODYSTRUCTURE"]),
        size=int(data[b"RFC822.SIZE"]),
        flags=tuple(data[b"FLAGS"]),
    )


def sender_address(envelope: Any) -> str:
    """The first From address, lower-cased ("" when there is none — an empty From, only a group).

    Group syntax shows up as addresses without a host (the group's name, its end): skipped."""
    if not isinstance(envelope, Envelope):
        return ""
    for address in envelope.from_ or ():
        if address.mailbox and address.host:
            return f"{_text(address.mailbox)}@{_text(address.host)}".lower()
    return ""


def attachments(bodystructure: Any) -> list[Attachment]:
    """The attachments in a BODYSTRUCTURE, in part order, including those of forwarded mails.

    imapclient nests a multipart's children in a list, but only at the top level: inside a
    message/rfc822 part the structure is left as the server's raw tuples (children first, then
    the subtype), so both shapes are read."""
    found: list[Attachment] = []
    _walk(bodystructure, found, 0)
    return found


def _walk(part: Any, found: list[Attachment], depth: int) -> None:
    if not isinstance(part, tuple | list) or not part or depth > _MAX_DEPTH:
        return
    if isinstance(part[0], list):  # imapclient's multipart: ([children], subtype, ...)
        children: Sequence[Any] = part[0]
    elif isinstance(part[0], tuple):  # raw multipart: (child, child, ..., subtype, ...)
        children = list(itertools.takewhile(lambda p: isinstance(p, tuple), part))
    else:
        _leaf(part, found, depth)
        return
    for child in children:
        _walk(child, found, depth + 1)


def _leaf(part: Sequence[Any], found: list[Attachment], depth: int) -> None:
    """One non-multipart part (RFC 3501 body-type-1part). The disposition's position depends on the
    type: text/* has a line count after the size, message/rfc822 an envelope, a body and a line
    count; MD5 comes next, then the disposition."""
    if len(part) < 7 or not isinstance(part[0], bytes) or not isinstance(part[1], bytes):
        return
    ctype = (part[0] + b"/" + part[1]).lower()
    if ctype in _FORWARDED:
        if len(part) > 8 and isinstance(part[7], tuple) and isinstance(part[8], tuple):
            _walk(part[8], found, depth + 1)  # a forwarded invoice's attachments count
        return
    if ctype.startswith(b"message/"):
        return  # delivery reports, message/partial: header blocks, not documents
    disposition = _at(part, 9 if ctype.startswith(b"text/") else 8)
    kind, disposition_params = b"", {}
    if isinstance(disposition, tuple) and disposition and isinstance(disposition[0], bytes):
        kind = disposition[0].lower()
        disposition_params = _params(_at(disposition, 1))
    name = disposition_params.get("filename") or _params(part[2]).get("name") or ""
    content_type = _text(ctype)
    if _is_attachment(content_type, name, kind, has_content_id=part[3] is not None):
        found.append(Attachment(name, content_type))


def _is_attachment(content_type: str, name: str, kind: bytes, *, has_content_id: bool) -> bool:
    """The pipeline's attachment rule (``mailingest.mime``) as far as headers tell it: named or
    attached parts, images not referenced by Content-ID (those are logos in an HTML body), and
    unnamed parts of a type invoices come as. The pipeline sniffs unnamed application/* content;
    without the body every application/* counts — wrongly taking a mail costs a download, wrongly
    skipping one costs an invoice."""
    if name or kind == b"attachment":
        return True
    if content_type.startswith("image/"):
        return not has_content_id
    return content_type.startswith("application/") or content_type == "text/xml"


def _at(seq: Sequence[Any], index: int) -> Any:
    return seq[index] if len(seq) > index else None


def _params(raw: Any) -> dict[str, str]:
    """A BODYSTRUCTURE parameter list ``(name, value, name, value ...)`` → decoded values.

    RFC 2231 (``filename*=utf-8''%C3%A4.pdf``, continuations ``filename*0*``) is undone by the
    stdlib's ``decode_params``, which leaves values quoted; RFC 2047 words in a file name
    (``=?utf-8?b?...?=``, not allowed there but what Outlook sends) are decoded after that."""
    if not isinstance(raw, tuple):
        return {}
    pairs = [
        (_text(name).lower(), _text(value))
        for name, value in zip(raw[0::2], raw[1::2], strict=False)
        if isinstance(name, bytes) and isinstance(value, bytes)
    ]
    decoded: dict[str, str] = {}
    for name, value in email.utils.decode_params([("", ""), *pairs])[1:]:
        if isinstance(value, tuple):  # (charset, language, quoted text)
            value = (value[0], value[1], email.utils.unquote(value[2]))
        decoded[name] = _words(email.utils.collapse_rfc2231_value(value))
    return decoded


def _text(value: Any) -> str:
    """IMAP strings arrive as bytes; 8-bit ones are most often UTF-8, and never fatal."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return "" if value is None else str(value)


def _words(text: str) -> str:
    """Decode RFC 2047 encoded words; text that is not validly encoded stays as it is."""
    if "=?" not in text:
        return text
    try:
        return str(make_header(decode_header(text)))
    except (HeaderParseError, LookupError, UnicodeDecodeError):
        return text
