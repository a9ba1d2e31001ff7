"""Invoice links in mail bodies are found, capped, and recorded on the stored message."""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path

from mailingest.ledger import Ledger
from mailingest.links import MAX_LINKS, invoice_links
from mailingest.mime import unpack_message
from mailingest.pipeline.runner import Runtime, process_next
from mailingest.storage import db, tables
from mailingest.storage.blobs import BlobStore


def test_plain_and_html_links_that_lead_to_invoices() -> None:
    plain = (
        "Your invoice is ready: https://billing.example.com/dl/INV-42.pdf.\n"
        "Manage your account at https://example.com/account\n"
        "Rechnung herunterladen: https://portal.example.de/r?id=7\n"
    )
    html_body = (
        '<p><a href="https://cdn.example.com/x/abc">Download invoice</a> or '
        '<a href="https://example.com/unsubscribe">unsubscribe</a> '
        "<a href='https://files.example.com/e-invoice.xml?sig=1&amp;t=2'>here</a></p>"
    )
    links = invoice_links(plain, html_body)
    urls = [link["url"] for link in links]
    assert urls == [
        "https://cdn.example.com/x/abc",
        "https://files.example.com/e-invoice.xml?sig=1&t=2",
        "https://billing.example.com/dl/INV-42.pdf",
        "https://portal.example.de/r?id=7",
    ]
    assert links[0]["text"] == "Download invoice"


def test_hostile_bodies_are_capped_and_fast() -> None:
    many = "\n".join(f"invoice https://x.example/{n}.pdf" for n in range(500))
    assert len(invoice_links(many, None)) == MAX_LINKS
    assert invoice_links(None, "<a href=" * 200_000) == []


def test_links_are_recorded_on_the_processed_message(tmp_path: Path) -> None:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "billing@vendor.example", "ap@buyer.example", "Your invoice"
    msg["Message-ID"] = "<links-1@vendor.example>"
    msg.set_content("Download your invoice: https://vendor.example/invoices/2026-001.pdf\n")
    raw = msg.as_bytes()
    assert unpack_message(raw).links[0]["url"] == "https://vendor.example/invoices/2026-001.pdf"

    engine = db.make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    db.upgrade(engine)
    blobs = BlobStore(tmp_path / "blobs")
    msg_id = Ledger(engine, blobs).accept(raw, source="smtp")
    assert process_next(Runtime(engine=engine, blobs=blobs, connectors=[]))
    with db.session_scope(engine) as session:
        row = session.get(tables.Message, msg_id)
        assert row is not None and row.status == "processed"
        assert row.links == [
            {"url": "https://vendor.example/invoices/2026-001.pdf", "text": "Download your invoice:"}
        ]
