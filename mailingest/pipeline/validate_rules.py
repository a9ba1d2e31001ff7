"""EN 16931 VAT category rules (BR-S/Z/E/AE/IC/G/O) and identifier check digits.

Split from ``validate`` only to keep each file readable; ``validate.validate`` is the public
entry point. The category rules are written against the canonical model, which has no seller
tax representative (BG-11): where EN 16931 accepts the representative's VAT id (BT-63) instead
of the seller's, an invoice relying on it is reported — rare enough to leave to review.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from stdnum import iban as stdnum_iban
from stdnum import numdb
from stdnum.eu import vat as stdnum_vat
from stdnum.exceptions import ValidationError

from mailingest.models import AllowanceCharge, Invoice, Party, ValidationMessage

CENT = Decimal("0.01")


def close(a: Decimal, b: Decimal, terms: int = 1) -> bool:
    """Equal within one cent per term: documents round each term before summing."""
    return abs(a - b) <= CENT * max(terms, 1)


def sum_of(values: Iterable[Decimal | None]) -> Decimal:
    return sum((v for v in values if v is not None), Decimal(0))


def error(rule: str, path: str, text: str) -> ValidationMessage:
    return ValidationMessage(rule=rule, path=path, text=text)


def warning(rule: str, path: str, text: str) -> ValidationMessage:
    return ValidationMessage(rule=rule, severity="warning", path=path, text=text)


# --- VAT categories -------------------------------------------------------------------------

SellerNeeds = Literal["vat_or_tax_id", "vat_id", "no_vat_id"]


@dataclass(frozen=True)
class _Category:
    prefix: str  # EN 16931 rule family
    name: str
    rate: Literal["positive", "zero", "none"]  # what BT-152/96/103 (and BT-119) must be
    seller: SellerNeeds  # BR-x-02..04
    buyer_id_required: bool  # AE: buyer VAT or legal id; K: buyer VAT id
    exemption_required: bool  # BR-x-10: True = reason needed, False = reason forbidden


_CATEGORIES: dict[str, _Category] = {
    "S": _Category("BR-S", "Standard rated", "positive", "vat_or_tax_id", False, False),
    "Z": _Category("BR-Z", "Zero rated", "zero", "vat_or_tax_id", False, False),
    "E": _Category("BR-E", "Exempt from VAT", "zero", "vat_or_tax_id", False, True),
    "AE": _Category("BR-AE", "Reverse charge", "zero", "vat_id", True, True),
    "K": _Category("BR-IC", "Intra-community supply", "zero", "vat_id", True, True),
    "G": _Category("BR-G", "Export outside the EU", "zero", "vat_id", False, True),
    "O": _Category("BR-O", "Not subject to VAT", "none", "no_vat_id", False, True),
}
"""The EN 16931 categories with their own rule families (K's family is BR-IC, not BR-K)."""

ZERO_TAX_CATEGORIES = frozenset(code for code, cat in _CATEGORIES.items() if cat.rate != "positive")
"""Categories whose tax amount is checked as 0 by BR-x-09 (so BR-CO-17 need not repeat it)."""

# Where a category is used, with the rule-number offset for that place: a line is BR-x-02 and
# BR-x-05, a document level allowance BR-x-03 and -06, a document level charge BR-x-04 and -07.
_Use = tuple[str, int, Decimal | None, str]  # (path, offset, rate, what)


def _uses(inv: Invoice) -> dict[str, list[_Use]]:
    out: dict[str, list[_Use]] = {}
    for i, line in enumerate(inv.lines):
        if line.vat and line.vat.category_code:
            out.setdefault(line.vat.category_code, []).append(
                (f"/lines/{i}/vat", 0, line.vat.rate, f"line {i + 1}")
            )
    for i, ac in enumerate(inv.allowance_charges):
        if ac.vat and ac.vat.category_code:
            use = (f"/allowance_charges/{i}/vat", 2 if ac.charge else 1, ac.vat.rate, _ac_name(ac, i))
            out.setdefault(ac.vat.category_code, []).append(use)
    return out


def _ac_name(ac: AllowanceCharge, index: int) -> str:
    return f"document level {'charge' if ac.charge else 'allowance'} {index + 1}"


def _rule(cat: _Category, number: int) -> str:
    return f"{cat.prefix}-{number:02d}"


def _rate_ok(cat: _Category, rate: Decimal) -> bool:
    return rate > 0 if cat.rate == "positive" else rate == 0


def _rate_text(cat: _Category) -> str:
    return {"positive": "greater than zero", "zero": "0", "none": "absent"}[cat.rate]


def _party_problem(cat: _Category, seller: Party | None, buyer: Party | None) -> tuple[str, str] | None:
    """(path, what is missing or too much) when the parties do not fit the category."""
    s_vat = seller.vat_id if seller else None
    b_vat = buyer.vat_id if buyer else None
    if cat.seller == "no_vat_id":
        if s_vat or b_vat:
            path = "/seller/vat_id" if s_vat else "/buyer/vat_id"
            return (
                path,
                "shall not contain the seller VAT identifier (BT-31) or the buyer VAT identifier (BT-48)",
            )
        return None
    if cat.seller == "vat_or_tax_id" and not (s_vat or (seller and seller.tax_id)):
        return (
            "/seller/vat_id",
            "shall contain the seller VAT identifier (BT-31) or tax registration id (BT-32)",
        )
    if cat.seller == "vat_id" and not s_vat:
        return "/seller/vat_id", "shall contain the seller VAT identifier (BT-31)"
    if cat.buyer_id_required:
        if cat.prefix == "BR-AE" and not (b_vat or (buyer and buyer.legal_id)):
            return (
                "/buyer/vat_id",
                "shall contain the buyer VAT identifier (BT-48) or legal registration id (BT-47)",
            )
        if cat.prefix == "BR-IC" and not b_vat:
            return "/buyer/vat_id", "shall contain the buyer VAT identifier (BT-48)"
    return None


def vat_categories(inv: Invoice) -> list[ValidationMessage]:
    """BR-x-01..10 for the categories S, Z, E, AE, K (BR-IC), G and O, plus BR-O-11..14.

    Party rules (BR-x-02..04) also fire when only the VAT breakdown names a category, since text
    extraction often finds the breakdown but no per-line categories; they then carry the line
    rule's id. Breakdown rates have no EN rule of their own, so their messages use the family id.
    """
    out: list[ValidationMessage] = []
    uses = _uses(inv)
    in_breakdown: dict[str, int] = {}
    for entry in inv.vat_breakdown:
        if entry.category_code:
            in_breakdown[entry.category_code] = in_breakdown.get(entry.category_code, 0) + 1

    for code in uses.keys() | in_breakdown.keys():
        cat = _CATEGORIES.get(code)
        if cat is None:
            continue
        used = uses.get(code, [])
        count = in_breakdown.get(code, 0)
        if used and (count == 0 or (count > 1 and code != "S")):
            quantity = "at least one" if code == "S" else "exactly one"
            out.append(
                error(
                    _rule(cat, 1),
                    "/vat_breakdown",
                    f'Lines or document level allowances/charges are "{cat.name}" ({code}); the VAT '
                    f"breakdown shall contain {quantity} entry with that category, not {count}.",
                )
            )
        problem = _party_problem(cat, inv.seller, inv.buyer)
        if problem:
            offset = min((u[1] for u in used), default=0)
            out.append(
                error(_rule(cat, 2 + offset), problem[0], f'An invoice using "{cat.name}" {problem[1]}.')
            )
        for path, offset, rate, what in used:
            if rate is not None and (cat.rate == "none" or not _rate_ok(cat, rate)):
                out.append(
                    error(
                        _rule(cat, 5 + offset),
                        f"{path}/rate",
                        f'The VAT rate of {what} ("{cat.name}") is {rate}; it shall be {_rate_text(cat)}.',
                    )
                )
    out += _breakdown_entries(inv)
    out += _taxable_amounts(inv, uses)
    out += _not_subject(inv, uses, in_breakdown)
    return out


def _breakdown_entries(inv: Invoice) -> list[ValidationMessage]:
    """Per breakdown entry: the rate (family id), zero tax (BR-x-09), exemption reason (BR-x-10)."""
    out: list[ValidationMessage] = []
    for i, entry in enumerate(inv.vat_breakdown):
        cat = _CATEGORIES.get(entry.category_code or "")
        if cat is None:
            continue
        path = f"/vat_breakdown/{i}"
        if cat.rate != "none" and entry.rate is not None and not _rate_ok(cat, entry.rate):
            out.append(
                error(
                    cat.prefix,
                    f"{path}/rate",
                    f'A "{cat.name}" VAT breakdown has rate {entry.rate}; it shall be {_rate_text(cat)}.',
                )
            )
        if cat.rate != "positive" and entry.tax_amount is not None and entry.tax_amount != 0:
            out.append(
                error(
                    _rule(cat, 9),
                    f"{path}/tax_amount",
                    f'The tax amount of a "{cat.name}" VAT breakdown shall be 0, not {entry.tax_amount}.',
                )
            )
        has_reason = bool(entry.exemption_reason or entry.exemption_reason_code)
        if has_reason != cat.exemption_required:
            shall = "shall have" if cat.exemption_required else "shall not have"
            out.append(
                error(
                    _rule(cat, 10),
                    f"{path}/exemption_reason",
                    f'A "{cat.name}" VAT breakdown {shall} a VAT exemption reason text or code.',
                )
            )
    return out


def _taxable_amounts(inv: Invoice, uses: dict[str, list[_Use]]) -> list[ValidationMessage]:
    """BR-x-08: each breakdown's taxable amount is its lines − allowances + charges.

    Only checked when every line and document level allowance/charge states its category and
    amount; otherwise the sums are incomplete and a mismatch would say nothing. Standard and
    zero rated amounts group by rate as well (BR-S-08, BR-Z-08).
    """
    if not inv.lines or not uses:
        return []
    terms: list[tuple[str, Decimal | None, Decimal]] = []  # (category, rate, signed amount)
    for line in inv.lines:
        if not (line.vat and line.vat.category_code and line.net_amount is not None):
            return []
        terms.append((line.vat.category_code, line.vat.rate, line.net_amount))
    for ac in inv.allowance_charges:
        if not (ac.vat and ac.vat.category_code and ac.amount is not None):
            return []
        terms.append((ac.vat.category_code, ac.vat.rate, ac.amount if ac.charge else -ac.amount))
    expected: dict[tuple[str, Decimal | None], tuple[Decimal, int]] = {}
    for code, rate, amount in terms:
        key = (code, rate if code in ("S", "Z") else None)
        value, count = expected.get(key, (Decimal(0), 0))
        expected[key] = (value + amount, count + 1)

    stated: dict[tuple[str, Decimal | None], tuple[Decimal, str]] = {}
    for i, entry in enumerate(inv.vat_breakdown):
        code = entry.category_code or ""
        if code in _CATEGORIES and entry.taxable_amount is not None:
            key = (code, entry.rate if code in ("S", "Z") else None)
            value, path = stated.get(key, (Decimal(0), f"/vat_breakdown/{i}/taxable_amount"))
            stated[key] = (value + entry.taxable_amount, path)

    out: list[ValidationMessage] = []
    for (code, rate), (value, path) in stated.items():
        want, count = expected.get((code, rate), (Decimal(0), 0))
        if not close(value, want, count):
            cat = _CATEGORIES[code]
            at = f" at {rate} %" if rate is not None else ""
            out.append(
                error(
                    _rule(cat, 8),
                    path,
                    f'Taxable amount {value} of "{cat.name}"{at} should be its lines − allowances'
                    f" + charges = {want}.",
                )
            )
    return out


def _not_subject(
    inv: Invoice, uses: dict[str, list[_Use]], in_breakdown: dict[str, int]
) -> list[ValidationMessage]:
    """BR-O-11..14: "Not subject to VAT" cannot be mixed with any other category."""
    if "O" not in in_breakdown:
        return []
    out: list[ValidationMessage] = []
    if len(in_breakdown) > 1:
        others = ", ".join(sorted(c for c in in_breakdown if c != "O"))
        out.append(
            error(
                "BR-O-11",
                "/vat_breakdown",
                f'An invoice with a "Not subject to VAT" breakdown shall have no other VAT breakdown'
                f" ({others}).",
            )
        )
    for code, used in uses.items():
        if code == "O":
            continue
        for path, offset, _rate, what in used:
            out.append(
                error(
                    f"BR-O-{12 + offset}",
                    path,
                    f'An invoice with a "Not subject to VAT" breakdown shall not have {what} in'
                    f" category {code}.",
                )
            )
    return out


# --- Identifier check digits ----------------------------------------------------------------

_EU_PREFIXES = {code.upper() for code in stdnum_vat.MEMBER_STATES} | {"EL"}
_IBAN_SHAPE = re.compile(r"^[A-Z]{2}\d{2}[A-Z0-9]{10,30}$")
_IBAN_COUNTRIES = numdb.get("iban")


def identifiers(inv: Invoice) -> list[ValidationMessage]:
    """Warnings for EU VAT ids and IBANs whose check digits (or national format) are wrong.

    Warnings, not errors: the invoice is still storable, but a typo in a VAT id costs the input
    tax deduction and one in an IBAN misdirects a payment, so a person should look. Ids that
    are not EU VAT ids, and account ids (BT-84) that are not IBANs, are not judged at all.
    """
    out: list[ValidationMessage] = []
    for role, party in (("seller", inv.seller), ("buyer", inv.buyer)):
        vat_id = party.vat_id if party else None
        if vat_id and vat_id[:2].upper() in _EU_PREFIXES and not stdnum_vat.is_valid(vat_id):
            out.append(
                warning(
                    "MI-VAT-01",
                    f"/{role}/vat_id",
                    f"The {role} VAT id {vat_id} fails its country's format or check digits.",
                )
            )
    transfers = inv.payment.credit_transfers if inv.payment else []
    for i, transfer in enumerate(transfers):
        account = (transfer.iban or "").replace(" ", "").upper()
        # Only IBAN-shaped ids of a country that issues IBANs are judged: anything else may be a
        # national account number, which BT-84 allows.
        if not _IBAN_SHAPE.match(account) or not _IBAN_COUNTRIES.info(account)[0][1]:
            continue
        try:
            stdnum_iban.validate(account)
        except ValidationError as exc:
            out.append(
                warning(
                    "MI-IBAN-01",
                    f"/payment/credit_transfers/{i}/iban",
                    f"IBAN {account} is not valid ({str(exc).rstrip('.').lower()}).",
                )
            )
    return out
