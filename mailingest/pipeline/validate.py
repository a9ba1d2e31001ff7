"""Business-rule checks on a canonical invoice (pure). Rule ids follow EN 16931.

Validation never blocks storage: messages are attached to the invoice and errors route it to
review. Sums are compared with a tolerance of one cent per term involved, since documents round
each line before summing.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from mailingest.models import Invoice, Validation, ValidationMessage

CENT = Decimal("0.01")


def _close(a: Decimal, b: Decimal, terms: int = 1) -> bool:
    return abs(a - b) <= CENT * max(terms, 1)


def _sum(values: Iterable[Decimal | None]) -> Decimal:
    return sum((v for v in values if v is not None), Decimal(0))


def _mandatory(inv: Invoice) -> list[ValidationMessage]:
    checks = [
        ("BR-02", "/number", inv.number, "An invoice shall have an invoice number."),
        ("BR-03", "/issue_date", inv.issue_date, "An invoice shall have an issue date."),
        ("BR-05", "/currency", inv.currency, "An invoice shall have a currency code."),
        (
            "BR-06",
            "/seller/name",
            inv.seller and inv.seller.name,
            "An invoice shall contain the seller name.",
        ),
        ("BR-07", "/buyer/name", inv.buyer and inv.buyer.name, "An invoice shall contain the buyer name."),
        (
            "BR-14",
            "/totals/tax_inclusive",
            inv.totals.tax_inclusive,
            "An invoice shall have the invoice total amount with VAT.",
        ),
        (
            "BR-15",
            "/totals/amount_due",
            inv.totals.amount_due,
            "An invoice shall have the amount due for payment.",
        ),
    ]
    return [ValidationMessage(rule=r, path=p, text=t) for r, p, v, t in checks if v is None]


def _arithmetic(inv: Invoice) -> list[ValidationMessage]:
    out: list[ValidationMessage] = []
    t = inv.totals
    line_amounts = [line.net_amount for line in inv.lines]
    if t.line_net_total is not None and line_amounts and all(a is not None for a in line_amounts):
        total = _sum(line_amounts)
        if not _close(total, t.line_net_total, len(line_amounts)):
            out.append(
                ValidationMessage(
                    rule="BR-CO-10",
                    path="/totals/line_net_total",
                    text=f"Sum of line net amounts {total} differs from line net total {t.line_net_total}.",
                )
            )
    if t.tax_exclusive is not None and t.line_net_total is not None:
        expected = t.line_net_total - (t.allowances or 0) + (t.charges or 0)
        if not _close(expected, t.tax_exclusive):
            out.append(
                ValidationMessage(
                    rule="BR-CO-13",
                    path="/totals/tax_exclusive",
                    text=f"Net total {t.tax_exclusive} should be line total − allowances + charges"
                    f" = {expected}.",
                )
            )
    if (
        inv.vat_breakdown
        and t.tax_total is not None
        and all(v.tax_amount is not None for v in inv.vat_breakdown)
    ):
        total = _sum(v.tax_amount for v in inv.vat_breakdown)
        if not _close(total, t.tax_total, len(inv.vat_breakdown)):
            out.append(
                ValidationMessage(
                    rule="BR-CO-14",
                    path="/totals/tax_total",
                    text=f"Tax total {t.tax_total} differs from the sum of the VAT breakdown {total}.",
                )
            )
    if t.tax_inclusive is not None and t.tax_exclusive is not None:
        expected = t.tax_exclusive + (t.tax_total or 0)
        if not _close(expected, t.tax_inclusive):
            out.append(
                ValidationMessage(
                    rule="BR-CO-15",
                    path="/totals/tax_inclusive",
                    text=f"Gross total {t.tax_inclusive} should be net {t.tax_exclusive}"
                    f" + tax {t.tax_total or 0}"
                    f" = {expected}.",
                )
            )
    if t.amount_due is not None and t.tax_inclusive is not None:
        expected = t.tax_inclusive - (t.prepaid or 0) + (t.rounding or 0)
        if not _close(expected, t.amount_due):
            out.append(
                ValidationMessage(
                    rule="BR-CO-16",
                    path="/totals/amount_due",
                    text=f"Amount due {t.amount_due} should be gross − prepaid + rounding = {expected}.",
                )
            )
    return out


def _dates(inv: Invoice) -> list[ValidationMessage]:
    if inv.issue_date and inv.due_date and inv.due_date < inv.issue_date:
        return [
            ValidationMessage(
                rule="MI-DATE-01",
                severity="warning",
                path="/due_date",
                text=f"Due date {inv.due_date} is before the issue date {inv.issue_date}.",
            )
        ]
    return []


def validate(invoice: Invoice) -> Validation:
    """All messages for ``invoice``; it is valid when none of them is an error."""
    messages = _mandatory(invoice) + _arithmetic(invoice) + _dates(invoice)
    if invoice.validation:  # keep what extractors already noted (e.g. PDF text vs embedded XML)
        messages = list(invoice.validation.messages) + messages
    return Validation(valid=not any(m.severity == "error" for m in messages), messages=messages)
