"""Invoice links in mail bodies: "download your invoice here" mails carry no attachment.

They are recorded on the message (not fetched: following links from mail is an SSRF and
phishing risk that a person should opt into). Pure and linear-time on hostile input: bodies
are capped and the patterns never backtrack across a tag.
"""

from __future__ import annotations

import html
import re

MAX_BODY = 1 << 20
MAX_LINKS = 50
_KEYWORDS = re.compile(
    r"invoice|rechnung|facture|factura|fattura|factuur|faktura|bill|receipt|beleg|quittung|gutschrift|avoir",
    re.I,
)
_FILE_ENDINGS = (".pdf", ".xml", ".zip")
_ANCHOR = re.compile(
    r"""<a\s[^<>]*?href\s*=\s*["']?(https?://[^"'\s<>]{1,2000})["']?[^<>]*>([^<]{0,200})""", re.I
)
_BARE_URL = re.compile(r"https?://[^\s<>\"')\]]{1,2000}", re.I)


def _is_invoice_link(url: str, text: str) -> bool:
    path = url.split("?", 1)[0].split("#", 1)[0].lower()
    return path.endswith(_FILE_ENDINGS) or bool(_KEYWORDS.search(url) or _KEYWORDS.search(text))


def invoice_links(plain: str | None, html_body: str | None) -> list[dict[str, str]]:
    """Links that look like they lead to an invoice: ``[{"url", "text"}]``, first seen first."""
    found: dict[str, str] = {}
    for match in _ANCHOR.finditer((html_body or "")[:MAX_BODY]):
        url, text = html.unescape(match.group(1)), " ".join(html.unescape(match.group(2)).split())
        if _is_invoice_link(url, text):
            found.setdefault(url, text)
    text_body = (plain or "")[:MAX_BODY]
    for match in _BARE_URL.finditer(text_body):
        url = match.group(0).rstrip(".,;:")
        line_start = text_body.rfind("\n", 0, match.start()) + 1
        context = text_body[line_start : match.start()][-200:]
        if _is_invoice_link(url, context):
            found.setdefault(url, " ".join(context.split()))
    return [{"url": url, "text": text} for url, text in list(found.items())[:MAX_LINKS]]
