"""Read e-invoice trees by local element names and remember where key values came from.

Shared by the UBL and CII mappers (``ubl.py``, ``cii.py``).

UBL, UN/CEFACT CII D16B and ZUGFeRD 1.0 ship in several namespace versions, and generators pick
prefixes freely, so paths here name elements by local name only (lxml's ``{*}`` wildcard). A path
is ``"A/B/C"``; several paths given to one call are alternatives, first match wins, which is how
ZUGFeRD 1.0 and CII D16B names for the same thing are read by one mapping.

Values are kept as written: text stripped at the ends, amounts as ``Decimal(text)``, dates
reformatted to ISO only when they are real calendar dates (anything else is unknown, not guessed).
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any, Literal

from lxml import etree

from mailingest.models import FieldInfo

Element = Any
"""An ``lxml.etree._Element`` (lxml ships no type stubs)."""

Bound = Literal["start", "end"]

CREDIT_NOTE_CODES = frozenset({"381", "396", "261", "262", "296", "308", "532"})
"""UNTDID 1001 document types that reduce what is owed (credit notes and their variants)."""

_ISO_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")


@lru_cache(maxsize=512)
def _wildcard(path: str) -> str:
    return "/".join(f"{{*}}{step}" for step in path.split("/"))


def find(node: Element | None, *paths: str) -> Element | None:
    """First element matching the first path that matches anything."""
    if node is None:
        return None
    for path in paths:
        found = node.find(_wildcard(path))
        if found is not None:
            return found
    return None


def find_all(node: Element | None, *paths: str) -> list[Element]:
    """Every element matching the first path that matches anything, in document order."""
    if node is None:
        return []
    for path in paths:
        found = node.findall(_wildcard(path))
        if found:
            return list(found)
    return []


def text_of(element: Element | None) -> str | None:
    """The element's text stripped at the ends; empty counts as absent."""
    if element is None:
        return None
    value = "".join(element.itertext()).strip()
    return value or None


def text(node: Element | None, *paths: str) -> str | None:
    return text_of(find(node, *paths))


def texts(node: Element | None, *paths: str) -> list[str]:
    return [value for value in map(text_of, find_all(node, *paths)) if value]


def decimal_of(element: Element | None) -> Decimal | None:
    """The number as written (``"10.50"`` stays ``10.50``); unparseable means unknown."""
    value = text_of(element)
    if value is None:
        return None
    try:
        number = Decimal(value)
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def decimal(node: Element | None, *paths: str) -> Decimal | None:
    return decimal_of(find(node, *paths))


def date_of(element: Element | None, bound: Bound | None = None) -> str | None:
    """ISO ``YYYY-MM-DD`` from a UBL date or a CII date element (``DateTimeString`` inside).

    CII ``format`` 102 is ``YYYYMMDD``. Format 610 (``YYYYMM``) and 616 (``YYYYWW``) name a month
    or an ISO week: for a period ``bound`` they give its first or last day, as a point in time
    they give no day and so stay unknown.
    """
    holder = _date_holder(element)
    value = text_of(holder)
    if holder is None or value is None:
        return None
    fmt = holder.get("format")
    try:
        if fmt == "610" and bound and re.fullmatch(r"\d{6}", value):
            return _month_bound(int(value[:4]), int(value[4:]), bound)
        if fmt == "616" and bound and re.fullmatch(r"\d{6}", value):
            weekday = 1 if bound == "start" else 7
            return dt.date.fromisocalendar(int(value[:4]), int(value[4:]), weekday).isoformat()
        if fmt in (None, "102") and re.fullmatch(r"\d{8}", value):
            return dt.date(int(value[:4]), int(value[4:6]), int(value[6:])).isoformat()
        iso = _ISO_DATE.match(value)
        if fmt in (None, "102") and iso:
            return dt.date(*map(int, iso.groups())).isoformat()
    except ValueError:
        return None
    return None


def _date_holder(element: Element | None) -> Element | None:
    """The element whose text is the date: CII wraps it in ``DateTimeString`` / ``DateString``."""
    if element is None:
        return None
    return next((child for child in element if isinstance(child.tag, str)), element)


def _month_bound(year: int, month: int, bound: Bound) -> str:
    first = dt.date(year, month, 1)
    if bound == "start":
        return first.isoformat()
    following = dt.date(year + month // 12, month % 12 + 1, 1)
    return (following - dt.timedelta(days=1)).isoformat()


def date(node: Element | None, *paths: str, bound: Bound | None = None) -> str | None:
    return date_of(find(node, *paths), bound)


def element_path(element: Element) -> str:
    """An XPath to ``element`` spelled with the document's own prefixes, for provenance.

    Positions are added only where same-named siblings make them necessary, so the common case
    reads like the specifications: ``/Invoice/cac:LegalMonetaryTotal/cbc:PayableAmount``.
    """
    steps = []
    node = element
    while node is not None:
        qname = etree.QName(node)
        step = f"{node.prefix}:{qname.localname}" if node.prefix else qname.localname
        parent = node.getparent()
        if parent is not None:
            same = [sibling for sibling in parent if sibling.tag == node.tag]
            if len(same) > 1:
                step += f"[{same.index(node) + 1}]"
        steps.append(step)
        node = parent
    return "/" + "/".join(reversed(steps))


class Reader:
    """Reads values like the module functions and records provenance for the keys it is given.

    One reader serves one document; ``fields`` maps canonical JSON pointers (``/number``,
    ``/totals/amount_due``) to where the value was found, for ``Extraction.fields``.
    """

    def __init__(self) -> None:
        self.fields: dict[str, FieldInfo] = {}

    def _note(self, key: str | None, element: Element | None, found: bool) -> None:
        if key and found and element is not None:
            self.fields[key] = FieldInfo(confidence=1.0, xpath=element_path(element), raw=text_of(element))

    def text(self, key: str | None, node: Element | None, *paths: str) -> str | None:
        return self.text_of(key, find(node, *paths))

    def text_of(self, key: str | None, element: Element | None) -> str | None:
        value = text_of(element)
        self._note(key, element, value is not None)
        return value

    def amount(self, key: str | None, node: Element | None, *paths: str) -> Decimal | None:
        return self.amount_of(key, find(node, *paths))

    def amount_of(self, key: str | None, element: Element | None) -> Decimal | None:
        value = decimal_of(element)
        self._note(key, element, value is not None)
        return value

    def currency_attribute(self, key: str, *elements: Element | None) -> str | None:
        """The ``currencyID`` of the first amount element that has one, for documents that state
        their currency only on the amounts (some ZUGFeRD 1.0 generators omit the currency code)."""
        for element in elements:
            value = element.get("currencyID") if element is not None else None
            if value and value.strip():
                self.fields[key] = FieldInfo(
                    confidence=1.0, xpath=f"{element_path(element)}/@currencyID", raw=value.strip()
                )
                return str(value.strip())
        return None

    def date(self, key: str | None, node: Element | None, *paths: str) -> str | None:
        element = find(node, *paths)
        value = date_of(element)
        self._note(key, _date_holder(element), value is not None)
        return value
