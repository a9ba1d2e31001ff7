"""Small helpers shared by the UBL and CII renderers: element building that omits absent values."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from lxml import etree

from mailingest.models.invoice import Invoice

Element = Any
"""An ``lxml.etree._Element`` (lxml ships no type stubs)."""

_IBAN = re.compile(r"^[A-Z]{2}\d{2}[A-Z0-9]{8,30}$")
_GTIN = re.compile(r"^\d{8}$|^\d{12,14}$")


def number(value: Decimal) -> str:
    """A decimal as written, never in exponent notation."""
    return format(value, "f")


def sub(parent: Element, tag: str, text: str | Decimal | None = None, **attrs: str | None) -> Element:
    """Append ``tag`` under ``parent`` with optional text and the attributes that are not None."""
    element = etree.SubElement(parent, tag, {k: v for k, v in attrs.items() if v is not None})
    if text is not None:
        element.text = number(text) if isinstance(text, Decimal) else text
    return element


def opt(parent: Element, tag: str, text: str | Decimal | None, **attrs: str | None) -> Element | None:
    """Like ``sub`` but only when ``text`` is known: absent values are omitted, never invented."""
    if text is None:
        return None
    return sub(parent, tag, text, **attrs)


def is_iban(account: str) -> bool:
    return bool(_IBAN.match(account.replace(" ", "")))


def is_gtin(identifier: str) -> bool:
    return bool(_GTIN.match(identifier))


def endpoint_scheme(endpoint: str) -> str | None:
    """Peppol EAS code for an electronic address when it can be told from the value itself."""
    return "EM" if "@" in endpoint else None


def payable_amount(invoice: Invoice) -> Decimal | None:
    """BT-115 as stated; else derived by BR-CO-16 (BT-112 - BT-113 + BT-114), which both syntaxes
    require and which ZUGFeRD 1.0 BASIC documents leave out. Unknown when BT-112 is unknown too."""
    totals = invoice.totals
    if totals.amount_due is not None or totals.tax_inclusive is None:
        return totals.amount_due
    return totals.tax_inclusive - (totals.prepaid or Decimal(0)) + (totals.rounding or Decimal(0))


def serialise(root: Element) -> bytes:
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True))
