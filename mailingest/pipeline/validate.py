"""Business-rule checks on a canonical invoice (pure). Rule ids follow EN 16931.

Validation never blocks storage: messages are attached to the invoice and errors route it to
review. Severity follows the source of the rule: EN 16931 "fatal" rules are errors, mailingest's
own heuristics (ids ``MI-*``) are warnings. Sums are compared with a tolerance of one cent per
term involved, since documents round each line before summing. VAT category rules and identifier
check digits live in ``validate_rules``.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP

from mailingest.models import Invoice, Line, Validation, ValidationMessage
from mailingest.pipeline.validate_rules import (
    CENT,
    ZERO_TAX_CATEGORIES,
    close,
    error,
    identifiers,
    sum_of,
    vat_categories,
    warning,
)


def _mandatory(inv: Invoice) -> list[ValidationMessage]:
    """BR-02..BR-16 as far as the model carries them.

    BR-01 (specification identifier, BT-24) is not checked: the canonical model does not keep it,
    and text-extracted invoices have none. BR-09/BR-11 only apply once an address exists; a
    missing address is BR-08/BR-10 alone.
    """
    seller, buyer, t = inv.seller, inv.buyer, inv.totals
    checks = [
        ("BR-02", "/number", inv.number, "An invoice shall have an invoice number."),
        ("BR-03", "/issue_date", inv.issue_date, "An invoice shall have an issue date."),
        ("BR-04", "/type_code", inv.type_code, "An invoice shall have an invoice type code."),
        ("BR-05", "/currency", inv.currency, "An invoice shall have a currency code."),
        ("BR-06", "/seller/name", seller and seller.name, "An invoice shall contain the seller name."),
        ("BR-07", "/buyer/name", buyer and buyer.name, "An invoice shall contain the buyer name."),
        (
            "BR-08",
            "/seller/address",
            seller and seller.address,
            "An invoice shall contain the seller postal address.",
        ),
        (
            "BR-10",
            "/buyer/address",
            buyer and buyer.address,
            "An invoice shall contain the buyer postal address.",
        ),
        (
            "BR-12",
            "/totals/line_net_total",
            t.line_net_total,
            "An invoice shall have the sum of invoice line net amounts.",
        ),
        (
            "BR-13",
            "/totals/tax_exclusive",
            t.tax_exclusive,
            "An invoice shall have the invoice total amount without VAT.",
        ),
        (
            "BR-14",
            "/totals/tax_inclusive",
            t.tax_inclusive,
            "An invoice shall have the invoice total amount with VAT.",
        ),
        (
            "BR-15",
            "/totals/amount_due",
            t.amount_due,
            "An invoice shall have the amount due for payment.",
        ),
    ]
    out = [error(r, p, text) for r, p, v, text in checks if v is None]
    for rule, role, party in (("BR-09", "seller", seller), ("BR-11", "buyer", buyer)):
        if party and party.address and not party.address.country:
            out.append(
                error(
                    rule,
                    f"/{role}/address/country",
                    f"The {role} postal address shall contain a country code.",
                )
            )
    if not inv.lines:
        out.append(error("BR-16", "/lines", "An invoice shall have at least one invoice line."))
    return out


def _line_fields(lines: list[Line]) -> list[ValidationMessage]:
    """BR-22, BR-24..BR-28 per line, one message per rule naming every offending line.

    One message per rule rather than per line keeps a 40-line text-extracted invoice without
    quantities readable in review.
    """
    checks: list[tuple[str, str, str, list[int]]] = [
        ("BR-22", "quantity", "shall have an invoiced quantity (BT-129)", []),
        ("BR-24", "net_amount", "shall have a line net amount (BT-131)", []),
        ("BR-25", "item/name", "shall have an item name (BT-153)", []),
        ("BR-26", "price/net", "shall have an item net price (BT-146)", []),
        ("BR-27", "price/net", "shall have an item net price (BT-146) that is not negative", []),
        ("BR-28", "price/gross", "shall have an item gross price (BT-148) that is not negative", []),
    ]
    for i, line in enumerate(lines):
        price = line.price
        failed = (
            line.quantity is None,
            line.net_amount is None,
            not (line.item and line.item.name),
            price is None or price.net is None,
            price is not None and price.net is not None and price.net < 0,
            price is not None and price.gross is not None and price.gross < 0,
        )
        for (_rule_id, _field, _text, bad), is_bad in zip(checks, failed, strict=True):
            if is_bad:
                bad.append(i)
    return [
        error(
            rule,
            f"/lines/{bad[0]}/{field}",
            f"Each invoice line {text}; not so in line {', '.join(str(i + 1) for i in bad)}.",
        )
        for rule, field, text, bad in checks
        if bad
    ]


def _arithmetic(inv: Invoice) -> list[ValidationMessage]:
    out: list[ValidationMessage] = []
    t = inv.totals
    line_amounts = [line.net_amount for line in inv.lines]
    if t.line_net_total is not None and line_amounts and all(a is not None for a in line_amounts):
        total = sum_of(line_amounts)
        if not close(total, t.line_net_total, len(line_amounts)):
            out.append(
                error(
                    "BR-CO-10",
                    "/totals/line_net_total",
                    f"Sum of line net amounts {total} differs from line net total {t.line_net_total}.",
                )
            )
    for rule, charge, stated, name in (
        ("BR-CO-11", False, t.allowances, "allowances"),
        ("BR-CO-12", True, t.charges, "charges"),
    ):
        amounts = [ac.amount for ac in inv.allowance_charges if ac.charge is charge]
        if stated is not None and all(a is not None for a in amounts):
            found = sum_of(amounts)
            if not close(found, stated, len(amounts)):
                out.append(
                    error(
                        rule,
                        f"/totals/{name}",
                        f"Sum of document level {name} {stated} differs from the {len(amounts)}"
                        f" {name} listed, which add up to {found}.",
                    )
                )
    if t.tax_exclusive is not None and t.line_net_total is not None:
        expected = t.line_net_total - (t.allowances or 0) + (t.charges or 0)
        if not close(expected, t.tax_exclusive):
            out.append(
                error(
                    "BR-CO-13",
                    "/totals/tax_exclusive",
                    f"Net total {t.tax_exclusive} should be line total − allowances + charges = {expected}.",
                )
            )
    if (
        inv.vat_breakdown
        and t.tax_total is not None
        and all(v.tax_amount is not None for v in inv.vat_breakdown)
    ):
        total = sum_of(v.tax_amount for v in inv.vat_breakdown)
        if not close(total, t.tax_total, len(inv.vat_breakdown)):
            out.append(
                error(
                    "BR-CO-14",
                    "/totals/tax_total",
                    f"Tax total {t.tax_total} differs from the sum of the VAT breakdown {total}.",
                )
            )
    for i, v in enumerate(inv.vat_breakdown):
        if v.category_code in ZERO_TAX_CATEGORIES or None in (v.rate, v.taxable_amount, v.tax_amount):
            continue
        assert v.rate is not None and v.taxable_amount is not None and v.tax_amount is not None
        expected = (v.taxable_amount * v.rate / 100).quantize(CENT, ROUND_HALF_UP)
        if not close(expected, v.tax_amount):
            out.append(
                error(
                    "BR-CO-17",
                    f"/vat_breakdown/{i}/tax_amount",
                    f"VAT of {v.taxable_amount} at {v.rate} % should be {expected}, not {v.tax_amount}.",
                )
            )
    if t.tax_inclusive is not None and t.tax_exclusive is not None:
        expected = t.tax_exclusive + (t.tax_total or 0)
        if not close(expected, t.tax_inclusive):
            out.append(
                error(
                    "BR-CO-15",
                    "/totals/tax_inclusive",
                    f"Gross total {t.tax_inclusive} should be net {t.tax_exclusive}"
                    f" + tax {t.tax_total or 0}"
                    f" = {expected}.",
                )
            )
    if t.amount_due is not None and t.tax_inclusive is not None:
        expected = t.tax_inclusive - (t.prepaid or 0) + (t.rounding or 0)
        if not close(expected, t.amount_due):
            out.append(
                error(
                    "BR-CO-16",
                    "/totals/amount_due",
                    f"Amount due {t.amount_due} should be gross − prepaid + rounding = {expected}.",
                )
            )
    return out


def _dates(inv: Invoice) -> list[ValidationMessage]:
    if inv.issue_date and inv.due_date and inv.due_date < inv.issue_date:
        return [
            warning(
                "MI-DATE-01",
                "/due_date",
                f"Due date {inv.due_date} is before the issue date {inv.issue_date}.",
            )
        ]
    return []


STRUCTURED_FORMATS = {"ubl", "cii", "facturx", "zugferd1", "xrechnung"}
"""Sources whose every field was written by the sender: a missing element is the invoice's defect."""

_READ_FROM_LAYOUT = {"BR-04", "BR-08", "BR-09", "BR-10", "BR-11", "BR-16", "BR-22", "BR-24", "BR-25", "BR-26"}
"""Rules about elements a page often does not print (type code, addresses, line details). For
invoices read from PDF text or OCR their absence means "not read", not "not there", so they are
warnings there; the amounts, dates and identity of the invoice stay errors."""


def validate(invoice: Invoice) -> Validation:
    """All messages for ``invoice``; it is valid when none of them is an error."""
    messages = (
        _mandatory(invoice)
        + _line_fields(invoice.lines)
        + _arithmetic(invoice)
        + vat_categories(invoice)
        + identifiers(invoice)
        + _dates(invoice)
    )
    fmt = invoice.source.format if invoice.source else None
    if fmt is not None and fmt not in STRUCTURED_FORMATS:
        messages = [
            m.model_copy(update={"severity": "warning"}) if m.rule in _READ_FROM_LAYOUT else m
            for m in messages
        ]
    if invoice.validation:  # keep what extractors already noted (e.g. PDF text vs embedded XML)
        messages = list(invoice.validation.messages) + messages
    return Validation(valid=not any(m.severity == "error" for m in messages), messages=messages)
