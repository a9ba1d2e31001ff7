"""The one way mailingest parses XML: bytes from strangers in, a plain element tree out.

Invoices arrive from anyone who can send mail, so every XML parse in the project goes through
``parse_xml``. E-invoice syntaxes (UBL, CII, ZUGFeRD) are defined by XML Schema and never need a
DTD, so any document type declaration is refused *before* libxml2 sees it. That one rule closes
external entities (XXE, file or network), parameter-entity tricks, external DTD fetches and entity
expansion bombs (billion laughs, quadratic blow-up) together, without having to trust that each
libxml2 option covers each case. The parser is additionally configured to resolve nothing and load
nothing, as a second wall. XInclude is never processed (``xinclude()`` is simply never called).

Charsets lie: mail headers name the wrong one and generators declare ISO-8859-1 over UTF-8 bytes.
The XML's own bytes and declaration are what count (a MIME ``charset`` is ignored); when they
disagree we retry as UTF-8 and then windows-1252 rather than reject an otherwise good invoice.
"""

from __future__ import annotations

import codecs
import re
from typing import Final

from lxml import etree

from mailingest.errors import DocumentTooLarge, HostileDocument, MalformedDocument

MAX_BYTES: Final = 20 * 1024 * 1024
"""Largest XML accepted; real e-invoices with many lines stay well below a few MB."""

MAX_DEPTH: Final = 100
"""Deepest element nesting accepted; UBL and CII stay under ~15 levels."""

_BOMS: Final = (
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)
# How "<" or "<?" look in BOM-less UTF-32/UTF-16, the way libxml2 sniffs them.
_WIDE_PREFIXES: Final = (
    (b"<\x00\x00\x00", "utf-32-le"),
    (b"\x00\x00\x00<", "utf-32-be"),
    (b"<\x00?\x00", "utf-16-le"),
    (b"\x00<\x00?", "utf-16-be"),
)
_DECLARED_ENCODING: Final = re.compile(rb"^<\?xml[^>]*?\bencoding\s*=\s*[\"']([A-Za-z][\w.:-]*)[\"']")
_WHITESPACE: Final = " \t\r\n\ufeff"
_UTF8_BOM: Final = b"\xef\xbb\xbf"

# libxml2 error codes meaning "the bytes do not fit the charset", worth a retry in another one.
_ENCODING_ERRORS: Final = frozenset(
    {
        etree.ErrorTypes.ERR_INVALID_CHAR,
        etree.ErrorTypes.ERR_UNKNOWN_ENCODING,
        etree.ErrorTypes.ERR_UNSUPPORTED_ENCODING,
        etree.ErrorTypes.ERR_INVALID_ENCODING,
    }
)
# libxml2's own bomb guards (depth, text node size, entity loops) firing means hostile, not broken.
_LIMIT_ERRORS: Final = frozenset({etree.ErrorTypes.ERR_RESOURCE_LIMIT, etree.ErrorTypes.ERR_ENTITY_LOOP})


def parse_xml(data: bytes, *, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> etree._Element:
    """Parse untrusted XML into its root element, or raise an ``InputError`` saying why not.

    Raises ``DocumentTooLarge`` over ``max_bytes``; ``HostileDocument`` for any DTD (hence any
    entity declaration), for nesting deeper than ``max_depth`` and when libxml2's own limits fire;
    ``MalformedDocument`` (with libxml2's message) for anything that is not well-formed XML.
    """
    if len(data) > max_bytes:
        raise DocumentTooLarge(f"XML is {len(data)} bytes, the limit is {max_bytes}")
    data, wide = _strip_leading_space(data)
    declared = None if wide else _declared_codec(data)
    if declared and declared != "utf-8":
        # UTF-7 and friends can spell "<!DOCTYPE" without those bytes; look through their eyes too.
        _refuse_dtd(data.decode(declared, errors="replace"), strict=False)
    _refuse_dtd(_text_view(data, wide), strict=True)
    errors: list[etree.XMLSyntaxError] = []
    for encoding in _encodings_to_try(data, wide, declared):
        try:
            root = etree.fromstring(data, _parser(encoding))
        except etree.XMLSyntaxError as exc:
            if exc.code in _LIMIT_ERRORS:
                raise HostileDocument(f"XML exceeds a parser safety limit: {exc.msg}") from exc
            errors.append(exc)
            if exc.code in _ENCODING_ERRORS:
                continue
            break
        _check_tree(root, max_depth)
        return root
    # The first error is the one the document earns as written; retries only explain less.
    raise MalformedDocument(f"XML is not well-formed: {errors[0].msg}") from errors[0]


def _parser(encoding: str | None) -> etree.XMLParser:
    """A parser that resolves, loads and fetches nothing; ``encoding`` overrides the declaration."""
    return etree.XMLParser(
        encoding=encoding,
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
        collect_ids=False,
    )


def _strip_leading_space(data: bytes) -> tuple[bytes, str | None]:
    """Drop whitespace before the first ``<`` (libxml2 rejects it) and name a UTF-16/32 encoding.

    Returns the bytes to parse and, for UTF-16/32 input, the codec that reads its markup.
    """
    for bom, codec in _BOMS:
        if data.startswith(bom):
            if codec == "utf-8":
                return bom + data[len(bom) :].lstrip(b" \t\r\n"), None
            return data, codec
    for prefix, codec in _WIDE_PREFIXES:
        if data.startswith(prefix):
            return data, codec
    return data.lstrip(b" \t\r\n"), None


def _declared_codec(data: bytes) -> str | None:
    """Python's name for the charset the XML declaration names; "" if Python does not know it."""
    match = _DECLARED_ENCODING.match(data.removeprefix(_UTF8_BOM))
    if match is None:
        return None
    try:
        return codecs.lookup(match.group(1).decode("ascii")).name
    except LookupError:
        return ""


def _text_view(data: bytes, wide: str | None) -> str:
    """The text as libxml2 will see its markup: UTF-16/32 decoded, anything else byte for byte.

    Latin-1 maps bytes one-to-one, so it shows the markup of every ASCII-compatible charset
    (UTF-8, ISO-8859-*, windows-125x) exactly, whatever the declaration says.
    """
    if wide:
        return data.decode(wide, errors="replace")
    return data.removeprefix(_UTF8_BOM).decode("latin-1")


def _encodings_to_try(data: bytes, wide: str | None, declared: str | None) -> list[str | None]:
    """Charset overrides to try in order; ``None`` means "as the document itself says"."""
    if wide:
        return [None]
    if declared is None:
        return [None, "windows-1252"]  # undeclared means UTF-8, which is what None tries
    if declared == "":
        return ["utf-8", "windows-1252"]  # libxml2 would refuse the name; the bytes may still be fine
    if declared != "utf-8" and _is_non_ascii_utf8(data):
        # Valid multi-byte UTF-8 is next to impossible by chance in a legacy 8-bit charset.
        return ["utf-8"]
    return [None, "utf-8", "windows-1252"]


def _is_non_ascii_utf8(data: bytes) -> bool:
    if data.isascii():
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _refuse_dtd(text: str, *, strict: bool) -> None:
    """Walk the prolog (whitespace, processing instructions, comments) up to the root element.

    Any markup declaration there (``<!DOCTYPE``, ``<!ENTITY`` ...) is refused as hostile. In a
    ``strict`` walk anything else that is not the root's start tag is refused as malformed: it
    cannot be well-formed, and libxml2 should never get a prolog that this walk misread.
    """
    pos, end = 0, len(text)
    while True:
        while pos < end and text[pos] in _WHITESPACE:
            pos += 1
        if text.startswith("<?", pos):
            close = text.find("?>", pos + 2)
            if close < 0:
                break
            pos = close + 2
        elif text.startswith("<!--", pos):
            close = text.find("-->", pos + 4)
            if close < 0:
                break
            pos = close + 3
        elif text.startswith("<!", pos):
            raise HostileDocument(
                "XML with a document type declaration is refused "
                "(DTDs can declare entities, read files or expand into bombs; e-invoices never need one)"
            )
        elif pos >= end or (text[pos] == "<" and pos + 1 < end and _is_name_start(text[pos + 1])):
            return
        else:
            break
    if strict:
        raise MalformedDocument("XML is not well-formed: unexpected content before the root element")


def _is_name_start(char: str) -> bool:
    return char.isalpha() or char in "_:" or ord(char) > 0x7F


def _check_tree(root: etree._Element, max_depth: int) -> None:
    """Second wall behind ``_refuse_dtd`` plus the depth limit, checked on the parsed tree."""
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.system_url:
        raise HostileDocument("XML with a document type declaration is refused")
    depth = 0
    for event, _ in etree.iterwalk(root, events=("start", "end")):
        depth += 1 if event == "start" else -1
        if depth > max_depth:
            raise HostileDocument(f"XML nests elements deeper than {max_depth} levels")
