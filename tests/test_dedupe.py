"""Duplicates beyond file hashes, through the ledger and the pipeline runner on SQLite and
PostgreSQL: same file, same (vendor, number), numbers equal but for punctuation or leading zeros,
same (vendor, date, amount, currency) under another number, near numbers — each with a score and
reasons, never dropped, sent to review unless a rule decides otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlmodel import select

from mailingest.models import Invoice
from mailingest.routing.rules import apply, load_rules
from mailingest.storage import db, tables
from tests.test_vendors import Doc, Pipeline, mail


def test_duplicates_are_scored_explained_and_kept(db_url: str, tmp_path: Path) -> None:
    p = Pipeline(db_url, tmp_path)
    doc = Doc("KOS-5001", "12/03/2026")
    pdf = doc.pdf()
    original = p.one(doc)
    assert original.duplicate is None and original.duplicate_of is None

    def dup(invoice: Invoice) -> tuple[str, float | None, list[str]]:
        assert invoice.duplicate is not None, invoice.number
        assert invoice.duplicate_of == invoice.duplicate.of
        assert invoice.status == "needs_review"
        return invoice.duplicate.of, invoice.duplicate.score, invoice.duplicate.reasons

    # the very same file in another mail
    (again,) = p.run(mail(("copy.pdf", pdf)))
    of, score, reasons = dup(again)
    assert (of, score) == (original.id, 1.0) and reasons[0] == "same file"
    assert again.duplicate and again.duplicate.reason == "same file"
    # re-issued: another file, same vendor and number
    of, score, reasons = dup(p.one(Doc("KOS-5001", "12/03/2026", note="Copy of invoice")))
    assert (of, score) == (original.id, 0.97) and reasons[0] == "same vendor and invoice number"
    # the number written with other punctuation and leading zeros
    of, score, reasons = dup(p.one(Doc("KOS/005001", "12/03/2026")))
    assert (of, score) == (original.id, 0.9) and "punctuation or leading zeros" in reasons[0]
    # same vendor, date, amount and currency, under another number
    of, score, reasons = dup(p.one(Doc("KOS-7777", "12/03/2026")))
    assert (of, score) == (original.id, 0.7) and "issue date, amount and currency" in reasons[0]
    # one character more in the number, same amount, another date
    of, score, reasons = dup(p.one(Doc("KOS-50001", "19/03/2026")))
    assert (of, score) == (original.id, 0.6) and "one character apart" in reasons[0]

    # not duplicates: next month's bill of the same amount, and another vendor's KOS-5001
    assert p.one(Doc("KOS-5002", "12/04/2026")).duplicate is None
    other = p.one(
        Doc("KOS-5001", "12/03/2026", seller="Acme Widgets SAS", vat=None, iban=None), "acme@gmail.com"
    )
    assert other.duplicate is None and other.vendor_id != original.vendor_id

    with db.session_scope(p.engine) as s:
        rows = s.exec(select(tables.Invoice)).all()
        assert len(rows) == 8  # nothing dropped
        flagged = {r.number: r.duplicate_of for r in rows if r.duplicate_of}
        assert set(flagged) == {"KOS-5001", "KOS/005001", "KOS-7777", "KOS-50001"}
        assert set(flagged.values()) == {original.id}
        events = s.exec(
            select(tables.Event.subject_id).where(tables.Event.type == "invoice.duplicate_detected")
        ).all()
        assert len(events) == 5
        stored = next(r.data for r in rows if r.number == "KOS-7777")
        assert stored["duplicate"]["of"] == original.id and stored["duplicate"]["score"] == 0.7


def test_a_rule_decides_what_happens_to_duplicates(tmp_path: Path) -> None:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "dupes.toml").write_text(
        """
[[rule]]
name = "reject-certain-duplicates"
when = { "duplicate.score" = { gte = 0.95 } }
then = { status = "rejected", tags = ["duplicate"] }
"""
    )
    rules = load_rules(rules_dir)

    def route(invoice: Invoice, context: dict[str, Any], facts: dict[str, Any] | None = None) -> Invoice:
        return apply(rules, invoice, context=context, facts=facts)

    p = Pipeline(f"sqlite:///{tmp_path / 'r.db'}", tmp_path, router=route)
    doc = Doc("KOS-6001", "12/03/2026")
    first = p.one(doc)
    assert first.status != "rejected"
    (second,) = p.run(mail(("again.pdf", doc.pdf())))
    assert second.status == "rejected" and "duplicate" in second.tags
    near = p.one(Doc("KOS-7001", "12/03/2026"))  # same date and amount: 0.7, stays in review
    assert near.duplicate is not None and near.status == "needs_review"
