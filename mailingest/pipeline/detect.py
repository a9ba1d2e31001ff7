"""Decide what a document is from its bytes first, its declared type and name second.

Mail clients lie about content types (``application/octet-stream`` for PDFs, ``text/plain`` for
XML), so magic bytes win; the declared type and the extension only break ties.
"""

from __future__ import annotations

from typing import Literal

from mailingest.documents import Document

Kind = Literal["pdf", "xml", "image", "zip", "message", "tnef", "msg", "text", "html", "empty", "other"]

_HEIF_BRANDS = tuple(
    b"ftyp" + b for b in (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1")
)
"""ISO-BMFF brands of HEIC/HEIF photos (iPhones since 2017), opened through pillow-heif."""
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"GIF8", b"BM")


def detect(doc: Document) -> Kind:
    data = doc.data
    if not data.strip():
        return "empty"
    head = data[:1024]
    name = (doc.filename or "").lower()
    ctype = (doc.content_type or "").lower()
    # Container magic first: a zip holding an uncompressed PDF has "%PDF-" in its first kilobyte.
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if b"%PDF-" in head:
        return "pdf"
    if head.startswith(_IMAGE_MAGIC) or head[4:12] in _HEIF_BRANDS:
        return "image"
    if head.startswith(b"\x78\x9f\x3e\x22"):
        return "tnef"
    if head.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):
        return "msg"
    stripped = head.lstrip(b"\xef\xbb\xbf\xff\xfe\x00 \t\r\n")
    if stripped.startswith(b"<") and not stripped[:15].lower().startswith((b"<!doctype html", b"<html")):
        return "xml"
    if stripped[:1] == b"<" or ctype == "text/html" or name.endswith((".htm", ".html")):
        return "html"
    if ctype == "message/rfc822" or name.endswith(".eml"):
        return "message"
    if ctype.startswith("text/") or name.endswith(".txt"):
        return "text"
    return "other"
