"""Render the canonical invoice back out as e-invoice XML: UBL 2.1 (Peppol BIS 3) or CII D16B.

``render(invoice, "ubl")`` gives a UBL 2.1 ``Invoice`` (or ``CreditNote``) following Peppol BIS
Billing 3.0; ``render(invoice, "cii")`` gives a UN/CEFACT CII D16B ``CrossIndustryInvoice`` in the
Factur-X EN 16931 profile. Absent values are omitted, decimals are written as strings exactly as
held. ``validate_schema(xml, fmt)`` checks a document against the shipped official XSDs.
"""

from __future__ import annotations

from typing import Literal

from mailingest.errors import MailingestError
from mailingest.models.invoice import Invoice

Format = Literal["ubl", "cii"]
FORMATS: tuple[Format, ...] = ("ubl", "cii")


class RenderError(MailingestError):
    type = "render_error"
    title = "Invoice cannot be rendered"


def render(invoice: Invoice, fmt: Format) -> bytes:
    """Serialise ``invoice`` as UBL 2.1 or CII XML (UTF-8 bytes with XML declaration)."""
    if fmt == "ubl":
        from mailingest.render.ubl import render_ubl

        return render_ubl(invoice)
    if fmt == "cii":
        from mailingest.render.cii import render_cii

        return render_cii(invoice)
    raise RenderError(f"unknown export format {fmt!r}; expected 'ubl' or 'cii'")


def validate_schema(xml: bytes, fmt: Format) -> list[str]:
    """Validate ``xml`` against the official XSD for ``fmt``; return the errors (empty = valid)."""
    from mailingest.render.schema import validate_schema as _validate

    return _validate(xml, fmt)


__all__ = ["FORMATS", "Format", "RenderError", "render", "validate_schema"]
