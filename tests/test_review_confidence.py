"""Key fields read with low confidence send the invoice to review, with a warning naming them."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import select

from mailingest.ledger import Ledger
from mailingest.models import Invoice
from mailingest.pipeline.runner import LOW_CONFIDENCE, Runtime, low_confidence_fields, process_next
from mailingest.storage import db, tables
from mailingest.storage.blobs import BlobStore
from tests.conftest import FIXTURES

PDF = FIXTURES / "pdf" / "en-harbour-supplies.pdf"


def _process(tmp_path: Path, threshold: float) -> Invoice:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    db.upgrade(engine)
    blobs = BlobStore(tmp_path / "blobs")
    Ledger(engine, blobs).accept(PDF.read_bytes(), source="drop", filename=PDF.name)
    assert process_next(Runtime(engine=engine, blobs=blobs, connectors=[], review_below_confidence=threshold))
    with db.session_scope(engine) as session:
        row = session.exec(select(tables.Invoice)).one()
        return Invoice.model_validate(row.data)


def _low(invoice: Invoice) -> list[str]:
    assert invoice.validation is not None
    return [m.text for m in invoice.validation.messages if m.rule == LOW_CONFIDENCE]


def test_a_demanding_threshold_sends_a_pdf_invoice_to_review_naming_the_fields(tmp_path: Path) -> None:
    invoice = _process(tmp_path, 0.99)
    assert invoice.status == "needs_review"
    [text] = _low(invoice)
    assert "/number" in text and "0.99" in text


def test_threshold_zero_turns_the_check_off(tmp_path: Path) -> None:
    invoice = _process(tmp_path, 0.0)
    assert _low(invoice) == []


@pytest.mark.parametrize(
    ("confidences", "low"),
    [
        ({"/number": 0.9, "/seller/name": 0.3, "/seller/vat_id": 0.95}, []),  # the VAT id names the seller
        ({"/number": 0.4, "/seller/name": 0.3}, ["/number", "/seller/name"]),
        ({"/due_date": 0.1}, []),  # not a key field
    ],
)
def test_which_fields_count(confidences: dict[str, float], low: list[str]) -> None:
    invoice = Invoice.model_validate(
        {
            "extraction": {
                "extractor": "pdf_text",
                "fields": {k: {"confidence": v} for k, v in confidences.items()},
            }
        }
    )
    assert low_confidence_fields(invoice, 0.5) == low
