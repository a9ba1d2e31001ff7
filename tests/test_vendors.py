"""Vendors: matching, history facts for routing, learning from corrections, enrichment and the
``/v1/vendors`` API — through the pipeline (ledger → runner) and the real daemon with real mails
carrying PDFs rendered here with reportlab."""

from __future__ import annotations

import smtplib
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from email.message import EmailMessage
from email.policy import SMTP
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pytest
from reportlab.lib.pagesizes import A4
from reportlab.lib.units import mm
from reportlab.pdfgen.canvas import Canvas
from sqlmodel import select

from mailingest.ledger import Ledger
from mailingest.models import Invoice
from mailingest.pipeline.runner import Runtime, process_next
from mailingest.storage import db, tables
from mailingest.storage.blobs import BlobStore
from mailingest.storage.tables_vendors import Vendor

KESTREL = {"seller": "Kestrel Office Supply Ltd", "vat": "DE136695976", "iban": "DE89370400440532013000"}
CLI, SCOPES = [sys.executable, "-m", "mailingest"], "invoices:read,invoices:write"
PAPER, TONER = "Printer paper A4 box", "Toner cartridge black"


@dataclass
class Doc:
    """One invoice PDF: what it says, rendered in a plain English layout."""

    number: str
    date: str  # as printed, e.g. 03/04/2026 (ambiguous on purpose)
    seller: str = KESTREL["seller"]
    vat: str | None = KESTREL["vat"]
    iban: str | None = KESTREL["iban"]
    lines: list[tuple[str, int, Decimal]] = field(
        default_factory=lambda: [(PAPER, 3, Decimal("24.50")), (TONER, 2, Decimal("79.00"))]
    )
    currency: str = "EUR"
    note: str = ""

    @property
    def gross(self) -> Decimal:
        net = sum((q * p for _, q, p in self.lines), Decimal("0"))
        return net + (net / 10).quantize(Decimal("0.01"))

    def pdf(self) -> bytes:
        buf = BytesIO()
        c = Canvas(buf, pagesize=A4, invariant=1)
        width, height = A4
        right = width - 20 * mm
        c.setFont("Helvetica-Bold", 16)
        c.drawString(20 * mm, height - 25 * mm, self.seller)
        c.setFont("Helvetica", 9)
        c.drawString(20 * mm, height - 31 * mm, "100 Main Street, Springfield")
        if self.vat:
            c.drawString(20 * mm, height - 36 * mm, f"VAT No: {self.vat}")
        c.setFont("Helvetica-Bold", 20)
        c.drawRightString(right, height - 25 * mm, "INVOICE")
        c.setFont("Helvetica", 10)
        y = height - 50 * mm
        for label, value in (("Invoice No:", self.number), ("Invoice Date:", self.date)):
            c.drawString(125 * mm, y, label)
            c.drawRightString(right, y, value)
            y -= 14
        c.drawString(20 * mm, height - 50 * mm, "Bill To:")
        c.drawString(20 * mm, height - 56 * mm, "Northwind Trading Ltd")
        y = height - 95 * mm
        c.setFont("Helvetica-Bold", 9)
        c.drawString(20 * mm, y, "Description")
        for x, text in ((115 * mm, "Qty"), (150 * mm, "Unit Price"), (right, "Amount")):
            c.drawRightString(x, y, text)
        c.setFont("Helvetica", 9)
        y -= 15
        net = Decimal("0")
        for desc, qty, price in self.lines:
            net += qty * price
            c.drawString(20 * mm, y, desc)
            c.drawRightString(115 * mm, y, str(qty))
            c.drawRightString(150 * mm, y, f"{price:,.2f}")
            c.drawRightString(right, y, f"{qty * price:,.2f}")
            y -= 13
        tax = (net / 10).quantize(Decimal("0.01"))
        y -= 10
        for caption, amount in (
            ("Subtotal", net),
            ("VAT 10%", tax),
            ("Total", net + tax),
            (f"Amount Due ({self.currency})", net + tax),
        ):
            c.drawString(120 * mm, y, caption)
            c.drawRightString(right, y, f"{amount:,.2f}")
            y -= 15
        if self.iban:
            c.drawString(20 * mm, y - 20, f"Bank transfer   IBAN: {self.iban}   BIC: DEUTDEFF")
        if self.note:
            c.drawString(20 * mm, y - 35, self.note)
        c.save()
        return buf.getvalue()


def mail(*pdfs: tuple[str, bytes], sender: str = "billing@kestrel-supply.example") -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Billing <{sender}>"
    msg["To"] = "ap@buyer.example"
    msg["Subject"] = "Your invoice"
    msg["Message-ID"] = f"<{time.time_ns()}@test.example>"
    msg.set_content("Please find our invoice attached.")
    for name, data in pdfs:
        msg.add_attachment(data, maintype="application", subtype="pdf", filename=name)
    return msg.as_bytes(policy=SMTP)


class Pipeline:
    """The ledger and the runner on a real database, as the daemon's worker drives them."""

    def __init__(self, url: str, tmp_path: Path, router: Any = None) -> None:
        self.engine = db.make_engine(url)
        db.upgrade(self.engine)
        self.blobs = BlobStore(tmp_path / "blobs")
        self.ledger = Ledger(self.engine, self.blobs)
        self.runtime = Runtime(engine=self.engine, blobs=self.blobs, connectors=[], router=router)

    def run(self, raw: bytes) -> list[Invoice]:
        msg_id = self.ledger.accept(raw, source="smtp")
        while process_next(self.runtime):
            pass
        with db.session_scope(self.engine) as s:
            rows = s.exec(select(tables.Invoice).where(tables.Invoice.message_id == msg_id)).all()
            return [Invoice.model_validate(r.data) for r in rows]

    def one(self, doc: Doc, sender: str = "billing@kestrel-supply.example") -> Invoice:
        (invoice,) = self.run(mail((f"{doc.number}.pdf", doc.pdf()), sender=sender))
        return invoice

    def vendors(self) -> list[Vendor]:
        with db.session_scope(self.engine) as s:
            return list(s.exec(select(Vendor).order_by(Vendor.id)).all())


@dataclass
class Recorder:
    """A router that records the facts the runner hands to the routing rules."""

    seen: list[dict[str, Any]] = field(default_factory=list)

    def __call__(
        self, invoice: Invoice, context: dict[str, Any], facts: dict[str, Any] | None = None
    ) -> Invoice:
        self.seen.append(facts or {})
        return invoice


def test_sellers_are_matched_by_vat_iban_domain_and_fuzzy_name(db_url: str, tmp_path: Path) -> None:
    p = Pipeline(db_url, tmp_path)
    first = p.one(Doc("KOS-1001", "03/04/2026"))
    assert first.vendor_id and first.vendor_id.startswith("ven_")
    (vendor,) = p.vendors()
    assert vendor.vat_ids == ["DE136695976"] and vendor.ibans == ["DE89370400440532013000"]
    assert vendor.email_domains == ["kestrel-supply.example"]

    # same VAT id, another name and sender: still Kestrel
    assert p.one(
        Doc("KOS-1002", "10/04/2026", seller="KOS Billing Dept"), sender="x@other.example"
    ).vendor_id == (vendor.id)
    # no VAT id: the IBAN decides
    assert p.one(Doc("KOS-1003", "11/04/2026", vat=None, seller="Kestrel Supplies")).vendor_id == vendor.id
    # neither VAT id nor IBAN: the sender's domain (with a similar name)
    assert p.one(Doc("KOS-1004", "12/04/2026", vat=None, iban=None)).vendor_id == vendor.id
    # only the name, in another legal form, from a free-mail address
    fuzzy = p.one(
        Doc("KOS-1005", "13/04/2026", vat=None, iban=None, seller="Kestrel Office Supply GmbH"), "k@gmail.com"
    )
    assert fuzzy.vendor_id == vendor.id
    # someone else entirely: a new vendor; free-mail domains are never learnt
    other = p.one(
        Doc("ACM-1", "14/04/2026", seller="Acme Widgets SAS", vat=None, iban=None), "acme@gmail.com"
    )
    assert other.vendor_id not in (None, vendor.id)
    vendors = {v.id: v for v in p.vendors()}
    assert len(vendors) == 2
    assert other.vendor_id is not None and vendors[other.vendor_id].email_domains == []
    assert "other.example" in vendors[vendor.id].email_domains
    with db.session_scope(p.engine) as s:
        stored = s.exec(select(tables.Invoice.vendor_id).where(tables.Invoice.number == "KOS-1005")).one()
    assert stored == vendor.id


def test_history_facts_enrichment_and_price_anomalies(tmp_path: Path) -> None:
    recorder = Recorder()
    p = Pipeline(f"sqlite:///{tmp_path / 'h.db'}", tmp_path, router=recorder)
    for i, day in enumerate(("05/01/2026", "05/02/2026", "05/03/2026", "05/04/2026")):
        # monthly, nearly the same amount
        p.one(Doc(f"KOS-20{i}", day, lines=[(PAPER, 3, Decimal("24.50")), (TONER, 2, Decimal(79 + i))]))
    first = recorder.seen[0]["vendor"]
    assert first["invoice_count"] == 0 and first["amount_deviation"] is None
    usual = p.one(
        Doc("KOS-210", "05/05/2026", lines=[(PAPER, 3, Decimal("24.50")), (TONER, 2, Decimal("80.00"))])
    )
    facts = recorder.seen[-1]
    vendor = facts["vendor"]
    assert vendor["invoice_count"] == 4 and vendor["trusted"] is False and vendor["lists"] == []
    assert vendor["currency"] == "EUR" and vendor["cadence_days"] in (28.0, 29.5, 30.0, 31.0)
    assert vendor["amount_deviation"] is not None and vendor["amount_deviation"] < 1
    assert vendor["amount_deviation_pct"] < 1
    assert vendor["days_since_last"] == 30  # 2026-04-05 → 2026-05-05
    assert facts["duplicate"] == {"of": None, "score": 0.0, "reasons": []}
    assert usual.enrichment and usual.enrichment["price_anomaly_count"] == 0
    assert usual.enrichment["vendor_invoices"] == 4 and usual.enrichment["vendor_disputes"] == 0

    # toner suddenly at 3x its price: far from the usual amount and a price anomaly on line 2
    dear = p.one(
        Doc("KOS-211", "05/06/2026", lines=[(PAPER, 3, Decimal("24.50")), (TONER, 2, Decimal("240.00"))])
    )
    vendor = recorder.seen[-1]["vendor"]
    assert vendor["amount_deviation"] > 10 and vendor["amount_deviation_pct"] > 100
    assert dear.enrichment is not None
    (anomaly,) = dear.enrichment["price_anomalies"]
    assert anomaly["line"] == 1 and anomaly["item"] == "name:toner cartridge black"
    assert anomaly["unit_price"] == "240.00" and anomaly["deviation"] > 3
    assert dear.validation is not None
    warning = next(m for m in dear.validation.messages if m.rule == "price_anomaly")
    assert warning.severity == "warning" and warning.path == "/lines/1/price/net"


# ---------------------------------------------------------------------------------- the daemon


def send(daemon: Any, raw: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=30) as smtp:
        smtp.sendmail("billing@kestrel-supply.example", ["ap@buyer.example"], raw)


def wait_invoices(daemon: Any, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = daemon.get("/v1/invoices?limit=200&sort=created_at")["data"]
        if len(data) >= count:
            return list(data)
        time.sleep(0.1)
    raise AssertionError(f"only {len(data)} invoices after {timeout}s\n{daemon.log()}")


RULES = """
[[rule]]
name = "auto-approve-trusted-recurring"
priority = 10
then = { status = "approved", tags = ["auto-approved"] }

[rule.when]
"vendor.trusted" = true
"vendor.invoice_count" = { gte = 2 }
"vendor.amount_deviation" = { lte = 3 }
"duplicate.score" = { lt = 0.5 }
"""


def test_corrections_teach_the_vendor_and_trusted_vendors_are_auto_approved(
    make_daemon: Callable[..., Any], tmp_path: Path
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "approve.toml").write_text(RULES)
    daemon = make_daemon(extra=f'\n[rules]\npath = "{rules}"\n')
    daemon.start()
    api = daemon.api
    key = subprocess.run(
        [
            *CLI,
            "api-key",
            "create",
            "--config",
            str(daemon.config_path),
            "--name",
            "clerk",
            "--scopes",
            SCOPES,
        ],
        env=daemon.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    auth = {"Authorization": f"Bearer {key}"}
    send(daemon, mail(("KOS-3001.pdf", Doc("KOS-3001", "03/04/2026").pdf())))
    (first,) = wait_invoices(daemon, 1)
    vendor_id = first["vendor_id"]
    # 03/04/2026 is ambiguous: whichever way the extractor read it, the vendor meant the other
    day_first = first["issue_date"] == "2026-04-03"
    assert first["issue_date"] in ("2026-04-03", "2026-03-04")
    corrected, learnt_order = ("2026-03-04", "MDY") if day_first else ("2026-04-03", "DMY")

    # a person corrects it: day first, the legal name, and GL accounts on the lines
    got = httpx.get(f"{api}/v1/invoices/{first['id']}")
    lines = got.json()["lines"]
    for line in lines:
        line["coding"] = {"gl_account": "6815"}
    patch = {"issue_date": corrected, "seller": {"name": "Kestrel Office Supply Limited"}, "lines": lines}
    r = httpx.patch(
        f"{api}/v1/invoices/{first['id']}",
        json=patch,
        headers={**auth, "If-Match": got.headers["etag"], "Content-Type": "application/merge-patch+json"},
    )
    assert r.status_code == 200, r.text

    detail = httpx.get(f"{api}/v1/vendors/{vendor_id}")
    assert detail.status_code == 200
    body = detail.json()
    fields = {c["field"]: (c["old"], c["new"]) for c in body["corrections"]}
    assert fields["/issue_date"] == (first["issue_date"], corrected)
    assert fields["/seller/name"] == ("Kestrel Office Supply Ltd", "Kestrel Office Supply Limited")
    assert fields["/lines/0/coding/gl_account"] == (None, "6815")
    assert body["profile"]["date_order"] == learnt_order and body["learned_gl_account"] == "6815"
    assert body["history"]["invoice_count"] == 1

    # the next invoice from Kestrel comes out corrected
    send(daemon, mail(("KOS-3002.pdf", Doc("KOS-3002", "05/06/2026").pdf())))
    second = wait_invoices(daemon, 2)[1]
    assert second["vendor_id"] == vendor_id
    assert second["issue_date"] == ("2026-05-06" if day_first else "2026-06-05")
    assert second["seller"]["name"] == "Kestrel Office Supply Limited"
    assert {ln["coding"]["gl_account"] for ln in second["lines"]} == {"6815"}
    learned = second["extraction"]["fields"]
    assert learned["/issue_date"]["learned"] == "fixed" and learned["/issue_date"]["raw"] == "05/06/2026"
    assert learned["/seller/name"]["learned"] == "fixed"
    assert learned["/lines/0/coding/gl_account"]["learned"] == "supplied"
    assert "auto-approve-trusted-recurring" not in str(second.get("routing"))  # not trusted yet

    # trust the vendor (If-Match on its ETag; stale or missing ones are refused)
    listed = httpx.get(f"{api}/v1/vendors", params={"q": "kestrel"}).json()["data"]
    assert [v["id"] for v in listed] == [vendor_id]
    current = httpx.get(f"{api}/v1/vendors/{vendor_id}")
    change = {"trusted": True, "lists": ["approved-suppliers"], "default_gl_account": "6800"}
    assert httpx.patch(f"{api}/v1/vendors/{vendor_id}", json=change).status_code == 401
    assert httpx.patch(f"{api}/v1/vendors/{vendor_id}", json=change, headers=auth).status_code == 428
    assert (
        httpx.patch(
            f"{api}/v1/vendors/{vendor_id}", json=change, headers={**auth, "If-Match": '"x"'}
        ).status_code
        == 412
    )
    r = httpx.patch(
        f"{api}/v1/vendors/{vendor_id}", json=change, headers={**auth, "If-Match": current.headers["etag"]}
    )
    assert r.status_code == 200 and r.json()["trusted"] is True
    assert r.headers["etag"] != current.headers["etag"]
    assert (
        httpx.patch(
            f"{api}/v1/vendors/{vendor_id}", json={"bogus": 1}, headers={**auth, "If-Match": "*"}
        ).status_code
        == 422
    )
    assert [
        v["id"] for v in httpx.get(f"{api}/v1/vendors", params={"list": "approved-suppliers"}).json()["data"]
    ] == [vendor_id]

    # a usual invoice from the trusted vendor is approved by the rule; an unusual one is not
    send(daemon, mail(("KOS-3003.pdf", Doc("KOS-3003", "07/07/2026").pdf())))
    third = wait_invoices(daemon, 3)[2]
    assert third["status"] == "approved", third.get("routing")
    assert {ln["coding"]["gl_account"] for ln in third["lines"]} == {"6800"}  # set by a person: wins
    send(
        daemon,
        mail(("KOS-3004.pdf", Doc("KOS-3004", "08/08/2026", lines=[(TONER, 40, Decimal("79.00"))]).pdf())),
    )
    fourth = wait_invoices(daemon, 4)[3]
    assert fourth["status"] == "needs_review"
    assert daemon.stop() == 0


@pytest.mark.parametrize("url_fixture", ["pg_url"])
def test_vendor_api_on_postgresql(url_fixture: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Corrections recorded by the API's PATCH path on PostgreSQL, and the vendor listing."""
    from fastapi.testclient import TestClient

    from mailingest.api import auth
    from mailingest.api.app import create_app
    from mailingest.config import Config

    url = request.getfixturevalue(url_fixture)
    p = Pipeline(url, tmp_path)
    invoice = p.one(Doc("KOS-4001", "03/04/2026"))
    app = create_app(
        p.engine, config=Config.model_validate({"data_dir": str(tmp_path)}), auth_mode="loopback-open"
    )
    with db.session_scope(p.engine) as s:
        _, secret = auth.create_key(s, name="clerk", scopes=["invoices:read", "invoices:write"])
    client = TestClient(app, headers={"Authorization": f"Bearer {secret}"})
    got = client.get(f"/v1/invoices/{invoice.id}")
    r = client.patch(
        f"/v1/invoices/{invoice.id}",
        json={"currency": "CHF"},
        headers={"If-Match": got.headers["etag"], "Content-Type": "application/merge-patch+json"},
    )
    assert r.status_code == 200, r.text
    body = client.get(f"/v1/vendors/{invoice.vendor_id}").json()
    assert [(c["field"], c["old"], c["new"]) for c in body["corrections"]] == [("/currency", "EUR", "CHF")]
    assert body["profile"]["fields"]["/currency"]["wrong"] == ["EUR"]
    assert client.get("/v1/vendors/ven_nope").status_code == 404


def test_profile_learns_decimal_style_and_date_swaps_without_raw_text() -> None:
    """The learning rules on their own (pure functions): a French vendor's 1,250 meant 1.25, and a
    vendor whose dates came from a source without raw text had day and month swapped."""
    from mailingest.models import Extraction, FieldInfo, Totals
    from mailingest.vendors.profile import apply_profile, learn_correction

    def extracted(raw: str, value: str, issue_date: str) -> Invoice:
        fields = {"/totals/amount_due": FieldInfo(confidence=0.7, raw=raw)}
        return Invoice(
            issue_date=issue_date,
            totals=Totals(amount_due=Decimal(value)),
            extraction=Extraction(extractor="pdf_text", fields=fields),
            source={"format": "pdf_text"},  # type: ignore[arg-type]
        )

    before = extracted("1,250 €", "1250", "2026-02-01").to_json_dict()
    profile = learn_correction({}, "/totals/amount_due", "1250", "1.25", before)
    profile = learn_correction(profile, "/issue_date", "2026-02-01", "2026-01-02", before)
    assert profile["decimal_style"] == "comma" and profile["date_swap"] is True

    fixed = apply_profile(extracted("2,500 €", "2500", "2026-03-04"), profile)
    assert fixed.totals.amount_due == Decimal("2.5") and fixed.issue_date == "2026-04-03"
    assert fixed.extraction is not None
    assert fixed.extraction.fields["/totals/amount_due"].learned == "fixed"
    assert fixed.extraction.fields["/totals/amount_due"].raw == "2,500 €"
    # unambiguous dates (day > 12) and amounts that already agree are left alone
    same = extracted("3,750 €", "3.75", "2026-03-25")
    assert apply_profile(same, profile) is same
