"""What the files and mail connectors share: the fields of an invoice event that templates and
CSV columns draw on, safe file names, and the original document read back from the blob store.

Both connectors receive the outbox payload (``{"type", "timestamp", "data"}``) whose ``data`` is
the canonical invoice (DESIGN 3.1); a missing value renders as ``unknown`` in templates and as an
empty cell in CSV, never as a guess.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError
from sqlmodel import Session

from mailingest.errors import DeliveryError, MailingestError, PermanentDeliveryError, StorageError
from mailingest.storage.blobs import BlobStore

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MONEY = {"net": "tax_exclusive", "tax": "tax_total", "gross": "tax_inclusive", "amount_due": "amount_due"}


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def invoice_of(payload: dict[str, Any]) -> dict[str, Any]:
    data = payload.get("data")
    return data if isinstance(data, dict) else {}


def _party(invoice: dict[str, Any], role: str) -> dict[str, Any]:
    party = invoice.get(role)
    return party if isinstance(party, dict) else {}


def field_values(event_id: str, payload: dict[str, Any]) -> dict[str, str]:
    """Every named value of one event (the superset of template placeholders and CSV columns)."""
    invoice = invoice_of(payload)
    seller, buyer = _party(invoice, "seller"), _party(invoice, "buyer")
    totals = invoice.get("totals")
    totals = totals if isinstance(totals, dict) else {}
    values = {
        key: _text(invoice.get(key))
        for key in ("id", "number", "type", "issue_date", "due_date", "currency", "purchase_order", "status")
    }
    values |= {
        "seller": _text(seller.get("name")),
        "seller_name": _text(seller.get("name")),
        "seller_vat_id": _text(seller.get("vat_id")),
        "buyer_name": _text(buyer.get("name")),
        "buyer_vat_id": _text(buyer.get("vat_id")),
        "event": _text(payload.get("type")),
        "event_id": event_id,
    }
    values |= {column: _text(totals.get(key)) for column, key in _MONEY.items()}
    return values


def einvoice_xml(payload: dict[str, Any], fmt: Literal["ubl", "cii"]) -> bytes:
    """The event's canonical invoice as UBL 2.1 or CII XML (``mailingest.render``).

    An invoice that does not even fit the canonical model cannot become better by retrying, so
    that is a permanent failure; rendering itself never needs a retry either.
    """
    from mailingest.models.invoice import Invoice
    from mailingest.render import render as render_xml

    try:
        invoice = Invoice.model_validate(invoice_of(payload))
        return render_xml(invoice, fmt)
    except (ValidationError, ArithmeticError, MailingestError) as exc:  # Decimal() raises InvalidOperation
        raise PermanentDeliveryError(f"invoice cannot be written as {fmt.upper()} XML: {exc}") from exc


def render(template: str, values: dict[str, str], *, clean: Callable[[str], str] | None = None) -> str:
    """Fill a template validated at config load; ``clean`` (if given) is applied to each value."""
    filled = {k: (clean(v) if clean else v) or "unknown" for k, v in values.items()}
    return template.format_map(filled)


def safe_name(value: str) -> str:
    """Reduce to ``[A-Za-z0-9._-]``: no path separators, no leading dot (hidden files, ``..``)."""
    return _UNSAFE.sub("_", value).lstrip(".")[:120] or "unknown"


@dataclass(frozen=True)
class Original:
    name: str
    content_type: str
    data: bytes


def read_original(blobs_path: Path, invoice: dict[str, Any]) -> Original | None:
    """The document the invoice came from (``source.file``), or None when it names none.

    Blobs on disk need no database session; a missing blob is a DeliveryError (retried) because
    the usual cause is a wrong ``blobs_path`` that an operator can fix before the retries run out.
    """
    source = invoice.get("source")
    file = source.get("file") if isinstance(source, dict) else None
    if not isinstance(file, dict):
        return None
    sha256 = file.get("sha256")
    if not isinstance(sha256, str) or not re.fullmatch(r"[0-9a-f]{64}", sha256):
        return None
    try:
        with Session() as session:
            data = BlobStore(blobs_path).get(session, sha256)
    except StorageError as exc:
        raise DeliveryError(f"original document: {exc.detail} under {blobs_path}") from exc
    return Original(
        name=_text(file.get("name")) or f"{sha256[:12]}.bin",
        content_type=_text(file.get("content_type")) or "application/octet-stream",
        data=data,
    )
