"""Several invoices in one PDF: split by page where the printed invoice number changes.

Billing runs often send one PDF holding a month's invoices. Each page's invoice number is read
with the same labels as the header field; a page without a number (a continuation page, terms
and conditions) belongs to the invoice before it. The split is only taken when at least two of
the page ranges read as invoices with a total, so one invoice that prints its number differently
on a later page stays whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from mailingest.models import Invoice
from mailingest.pipeline.extractors.pdf_fields import extract_invoice, number_candidates
from mailingest.pipeline.extractors.pdf_layout import Layout, TextLine, best

MIN_NUMBER_SCORE = 0.6
"""Only a labelled number ("Invoice No.", "Rechnung 123") starts a new invoice; a bare "Nr." does not."""


def page_ranges(lines: Sequence[TextLine]) -> list[tuple[int, int]]:
    """(first, last) page of each invoice, by where the printed invoice number changes."""
    pages: dict[int, list[TextLine]] = {}
    for line in lines:
        pages.setdefault(line.page, []).append(line)
    ranges: list[tuple[int, int]] = []
    current: str | None = None
    for page in sorted(pages):
        number = best(list(number_candidates(Layout(pages[page]))))
        value = str(number.value) if number is not None and number.score >= MIN_NUMBER_SCORE else None
        if ranges and (value is None or value == current or current is None):
            ranges[-1] = (ranges[-1][0], page)
            current = current or value
        else:
            ranges.append((page, page))
            current = value
    return ranges


def _shifted(lines: Sequence[TextLine], first: int, last: int) -> list[TextLine]:
    return [replace(ln, page=ln.page - first + 1) for ln in lines if first <= ln.page <= last]


def extract_invoices(lines: Sequence[TextLine]) -> list[Invoice]:
    """Every invoice printed in ``lines``: one per page range when the PDF holds several."""
    ranges = page_ranges(lines)
    if len(ranges) > 1:
        found: list[Invoice] = []
        for first, last in ranges:
            invoice = extract_invoice(_shifted(lines, first, last))
            if invoice is None:
                continue
            if invoice.extraction is not None:
                for info in invoice.extraction.fields.values():
                    if info.page is not None:
                        info.page += first - 1
                invoice.extraction.pages = [first, last]
            found.append(invoice)
        with_totals = [
            inv for inv in found if inv.totals.tax_inclusive is not None or inv.totals.amount_due is not None
        ]
        if len(with_totals) > 1:
            return found
    invoice = extract_invoice(lines)
    return [] if invoice is None else [invoice]
