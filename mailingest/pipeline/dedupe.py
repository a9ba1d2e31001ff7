"""Duplicate detection against stored invoices (issue 7 item 4).

Each way an invoice can repeat an earlier one gives a score; the strongest earlier invoice wins
and the invoice records ``duplicate = {of, score, reasons}`` (plus ``duplicate_of``). A
duplicate is never dropped: it is stored and goes to review unless a routing rule says otherwise.

========================================================  =====
evidence                                                  score
========================================================  =====
same file (document sha256) and same number               1.00
same vendor and same number                               0.95
same vendor, number equal without punctuation/zeros       0.90
same vendor, issue date, amount and currency; other no.   0.70
same vendor, amount, currency; number 1 edit away (*)   0.60
========================================================  =====

(*) numbers of at least 6 characters (after ``number_key``); when the one edit is a digit for a
digit (3001 → 3002, how numbering runs) the issue dates must agree as well, so a monthly bill of
the same amount is not taken for a duplicate of last month's.

Several kinds of evidence for the same earlier invoice add 0.02 each (capped at 1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from rapidfuzz.distance import Levenshtein
from sqlalchemy import ColumnElement
from sqlmodel import Session, col, select

from mailingest.models import Invoice
from mailingest.storage import tables

_NUMBER_NOISE = re.compile(r"[\s\-_/.#]")
_LEADING_ZEROS = re.compile(r"(?<![0-9])0+(?=[0-9])")
SAME_FILE = 1.0
SAME_NUMBER = 0.95
SAME_NUMBER_KEY = 0.9
SAME_DATE_AMOUNT = 0.7
NEAR_NUMBER = 0.6
MIN_FUZZY_LENGTH = 6
R_SAME_FILE = "same file"
R_SAME_NUMBER = "same vendor and invoice number"
R_NUMBER_KEY = "same vendor, invoice number equal but for punctuation or leading zeros"
R_DATE_AMOUNT = "same vendor, issue date, amount and currency, other number"
R_NEAR_NUMBER = "same vendor, amount and currency; invoice number one character apart"


def number_key(number: str) -> str:
    """Invoice numbers compared without punctuation, case or leading zeros (of the number and
    of each run of digits: ``KOS-00100234`` and ``kos 100234`` give ``KOS100234``)."""
    return _NUMBER_NOISE.sub("", _LEADING_ZEROS.sub("", number.upper()))


@dataclass
class DuplicateMatch:
    of: str
    score: float
    reasons: list[str] = field(default_factory=list)

    @property
    def reason(self) -> str:
        return self.reasons[0] if self.reasons else ""


def _near(a: str, b: str) -> bool:
    return min(len(a), len(b)) >= MIN_FUZZY_LENGTH and Levenshtein.distance(a, b) == 1


def _sequential(a: str, b: str) -> bool:
    """One digit replaced by another (KOS-3001 / KOS-3002): how numbering runs, not a typo, so
    it only counts as a near match when the issue dates agree too."""
    ops = list(Levenshtein.editops(a, b))
    if len(ops) != 1:
        return False
    tag, src, dest = ops[0].tag, ops[0].src_pos, ops[0].dest_pos
    return tag == "replace" and a[src].isdigit() and b[dest].isdigit()


def _vendor_filter(invoice: Invoice, vendor_id: str | None) -> ColumnElement[bool] | None:
    if vendor_id:
        return col(tables.Invoice.vendor_id) == vendor_id
    seller = invoice.seller
    if seller is not None and seller.vat_id:
        return col(tables.Invoice.seller_vat_id) == seller.vat_id
    if seller is not None and seller.name:
        return col(tables.Invoice.seller_name) == seller.name
    return None


def find_duplicates(
    session: Session, invoice: Invoice, document_sha256: str, vendor_id: str | None = None
) -> DuplicateMatch | None:
    """The most likely earlier invoice this one repeats, with a 0-1 score and the reasons."""
    found: dict[str, DuplicateMatch] = {}

    def hit(ids: list[str], score: float, reason: str) -> None:
        for other in ids:
            match = found.setdefault(other, DuplicateMatch(other, 0.0))
            match.score = max(match.score, score)
            match.reasons.append(reason)

    originals = col(tables.Invoice.duplicate_of).is_(None)
    base = select(tables.Invoice.id).where(originals).limit(20)
    due = invoice.totals.amount_due
    if invoice.number is not None or due is not None:
        same_file = base.join(
            tables.Document, col(tables.Document.id) == col(tables.Invoice.document_id)
        ).where(col(tables.Document.sha256) == document_sha256)
        if invoice.number is not None:
            same_file = same_file.where(col(tables.Invoice.number) == invoice.number)
        else:
            same_file = same_file.where(
                col(tables.Invoice.number).is_(None), col(tables.Invoice.amount_due) == due
            )
        hit(list(session.exec(same_file).all()), SAME_FILE, "same file")
    vendor = _vendor_filter(invoice, vendor_id)
    if vendor is not None:
        by_vendor = base.where(vendor)
        if invoice.number:
            key = number_key(invoice.number)
            hit(
                list(session.exec(by_vendor.where(col(tables.Invoice.number) == invoice.number)).all()),
                SAME_NUMBER,
                R_SAME_NUMBER,
            )
            if key:
                hit(
                    list(session.exec(by_vendor.where(col(tables.Invoice.number_key) == key)).all()),
                    SAME_NUMBER_KEY,
                    R_NUMBER_KEY,
                )
        if due is not None and invoice.currency:
            same_amount = select(tables.Invoice.id, tables.Invoice.number, tables.Invoice.issue_date).where(
                originals,
                vendor,
                col(tables.Invoice.amount_due) == due,
                col(tables.Invoice.currency) == invoice.currency,
            )
            own_key = number_key(invoice.number) if invoice.number else ""
            for other, number, issue_date in session.exec(same_amount.limit(200)).all():
                other_key = number_key(number) if number else ""
                if own_key and other_key == own_key:
                    continue  # already counted above
                if invoice.issue_date and issue_date == invoice.issue_date:
                    hit(
                        [other],
                        SAME_DATE_AMOUNT,
                        "same vendor, issue date, amount and currency, other number",
                    )
                elif _near(own_key, other_key) and (
                    not _sequential(own_key, other_key)
                    or not (invoice.issue_date and issue_date)
                    or issue_date == invoice.issue_date
                ):
                    hit(
                        [other],
                        NEAR_NUMBER,
                        "same vendor, amount and currency; invoice number one character apart",
                    )
    if not found:
        return None
    best = max(found.values(), key=lambda m: (m.score + 0.02 * (len(m.reasons) - 1), m.of))
    best.score = round(min(1.0, best.score + 0.02 * (len(best.reasons) - 1)), 2)
    return best


def find_duplicate(session: Session, invoice: Invoice, document_sha256: str) -> tuple[str, str] | None:
    """(id of the earlier invoice, strongest reason) or None — the first release's interface."""
    match = find_duplicates(session, invoice, document_sha256)
    return (match.of, match.reason) if match else None
