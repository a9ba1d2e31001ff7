"""Exports: the invoice list as a stream (NDJSON, a JSON array or CSV), one invoice as
JSON, UBL or CII XML, and the change feed (``/v1/events``) for incremental loads.

The bulk export takes the list's filters and reads the rows in chunks while it streams, so a
year of invoices never sits in memory. CSV cells are defused against spreadsheet formulas the
way the files connector does it.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import Response, StreamingResponse
from sqlmodel import Session, col, select

from mailingest.api import actions
from mailingest.api.actions import Context
from mailingest.api.documents import disposition
from mailingest.api.invoices import InvoiceFilters, canonical, filters, page
from mailingest.connectors.files import csv_cell
from mailingest.errors import MailingestError
from mailingest.models import Invoice
from mailingest.storage import tables

CHUNK = 500
HEADER_COLUMNS = (
    "id",
    "number",
    "type",
    "status",
    "issue_date",
    "due_date",
    "currency",
    "seller_name",
    "seller_vat_id",
    "buyer_name",
    "buyer_vat_id",
    "purchase_order",
    "tax_exclusive",
    "tax_total",
    "tax_inclusive",
    "amount_due",
    "tags",
    "approvers",
    "created_at",
)
LINE_COLUMNS = (
    "line_id",
    "line_name",
    "line_quantity",
    "line_unit_code",
    "line_price",
    "line_net_amount",
    "line_vat_rate",
    "line_gl_account",
    "line_cost_center",
)
XML_FORMATS = ("ubl", "cii")


def event_view(event: tables.Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "type": event.type,
        "subject_id": event.subject_id,
        "created_at": event.payload.get("timestamp"),
        "data": event.payload.get("data"),
    }


def header_values(row: tables.Invoice) -> dict[str, str]:
    d = row.data
    seller, buyer, totals = d.get("seller") or {}, d.get("buyer") or {}, d.get("totals") or {}
    values = {
        "id": row.id,
        "number": d.get("number"),
        "type": d.get("type"),
        "status": row.status,
        "issue_date": d.get("issue_date"),
        "due_date": d.get("due_date"),
        "currency": d.get("currency"),
        "seller_name": seller.get("name"),
        "seller_vat_id": seller.get("vat_id"),
        "buyer_name": buyer.get("name"),
        "buyer_vat_id": buyer.get("vat_id"),
        "purchase_order": d.get("purchase_order"),
        "tax_exclusive": totals.get("tax_exclusive"),
        "tax_total": totals.get("tax_total"),
        "tax_inclusive": totals.get("tax_inclusive"),
        "amount_due": totals.get("amount_due"),
        "tags": ";".join(d.get("tags") or []),
        "approvers": ";".join(d.get("approvers") or []),
        "created_at": row.created_at.isoformat(),
    }
    return {k: "" if v is None else str(v) for k, v in values.items()}


def line_values(line: dict[str, Any]) -> dict[str, str]:
    item, price, vat, coding = (line.get(k) or {} for k in ("item", "price", "vat", "coding"))
    values = {
        "line_id": line.get("id"),
        "line_name": item.get("name"),
        "line_quantity": line.get("quantity"),
        "line_unit_code": line.get("unit_code"),
        "line_price": price.get("net"),
        "line_net_amount": line.get("net_amount"),
        "line_vat_rate": vat.get("rate"),
        "line_gl_account": coding.get("gl_account"),
        "line_cost_center": coding.get("cost_center"),
    }
    return {k: "" if v is None else str(v) for k, v in values.items()}


def _csv_line(cells: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow([csv_cell(c) for c in cells])
    return out.getvalue()


def _rows(ctx: Context, found: InvoiceFilters) -> Iterator[tables.Invoice]:
    """Matching invoices oldest first, read CHUNK at a time with keyset paging."""
    after: str | None = None
    while True:
        with Session(ctx.engine) as s:
            rows = page(s, ctx, found, limit=CHUNK, descending=False, after=after)
        yield from rows
        if len(rows) < CHUNK:
            return
        after = rows[-1].id


def _stream_csv(ctx: Context, found: InvoiceFilters, columns: list[str], lines: bool) -> Iterator[str]:
    yield _csv_line(columns)
    for row in _rows(ctx, found):
        head = header_values(row)
        invoice_lines = (row.data.get("lines") or []) if lines else []
        if not invoice_lines:
            yield _csv_line([head.get(c, "") for c in columns])
        for line in invoice_lines:
            values = {**head, **line_values(line)}
            yield _csv_line([values.get(c, "") for c in columns])


def _stream_json(ctx: Context, found: InvoiceFilters, array: bool) -> Iterator[str]:
    if not array:
        for row in _rows(ctx, found):
            yield json.dumps(row.data, separators=(",", ":")) + "\n"
        return
    yield "["
    first = True
    for row in _rows(ctx, found):
        yield ("" if first else ",") + json.dumps(row.data, separators=(",", ":"))
        first = False
    yield "]\n"


def _render(invoice: Invoice, fmt: str) -> bytes:
    # imported here: the renderer is optional at import time of the API
    from mailingest.render import render

    return render(invoice, fmt)  # type: ignore[arg-type]


def router(ctx: Context) -> APIRouter:
    api = APIRouter(prefix="/v1")
    reader = ctx.scope("invoices:read")

    @api.get("/invoices/export", tags=["exports"], dependencies=[reader])
    def export_invoices(
        found: Annotated[InvoiceFilters, Depends(filters)],
        format: Literal["json", "ndjson", "csv"] = "ndjson",
        columns: Annotated[
            str | None, Query(max_length=2000, description="CSV columns, comma separated")
        ] = None,
        lines: Annotated[bool, Query(description="CSV: one row per invoice line")] = False,
    ) -> StreamingResponse:
        """Every invoice matching the list filters, oldest first, streamed: ``ndjson`` (one
        invoice per line), ``json`` (one array) or ``csv`` (a header row, then one row per
        invoice, or per line with ``lines=true``; choose and order columns with ``columns``)."""
        if format == "csv":
            known = HEADER_COLUMNS + LINE_COLUMNS
            chosen = (
                [c.strip() for c in columns.split(",") if c.strip()]
                if columns
                else list(HEADER_COLUMNS + (LINE_COLUMNS if lines else ()))
            )
            unknown = [c for c in chosen if c not in known]
            if unknown:
                raise HTTPException(422, f"columns: unknown {', '.join(unknown)} (known: {', '.join(known)})")
            return StreamingResponse(
                _stream_csv(ctx, found, chosen, lines),
                media_type="text/csv; charset=utf-8",
                headers={"Content-Disposition": 'attachment; filename="invoices.csv"'},
            )
        media = "application/json" if format == "json" else "application/x-ndjson"
        return StreamingResponse(_stream_json(ctx, found, format == "json"), media_type=media)

    @api.get("/invoices/{invoice_id}/export", tags=["exports"], dependencies=[reader])
    def export_invoice(
        invoice_id: str,
        format: Literal["json", "ubl", "cii"] = "json",
    ) -> Response:
        """One invoice as canonical JSON, UBL 2.1 or CII D16B XML."""
        with Session(ctx.engine) as s:
            row = actions.get_invoice(s, invoice_id)
            data = row.data
        if format == "json":
            return Response(json.dumps(data), media_type="application/json")
        try:
            xml = _render(Invoice.model_validate(canonical(data)[0]), format)
        except (ValueError, MailingestError) as exc:  # pydantic's ValidationError is a ValueError
            raise HTTPException(422, f"invoice {invoice_id} cannot be rendered as {format}: {exc}") from exc
        name = f"{(data.get('number') or invoice_id)}.{format}.xml".replace("/", "_")
        return Response(
            xml,
            media_type="application/xml",
            headers={"Content-Disposition": disposition(name)},
        )

    @api.get("/events", tags=["events"], dependencies=[reader])
    def list_events(
        limit: Annotated[int, Query(ge=1, le=200)] = 20,
        starting_after: Annotated[str | None, Query(max_length=40)] = None,
    ) -> dict[str, Any]:
        """The change feed: outbox events oldest first; pass the last id seen as ``starting_after``."""
        with Session(ctx.engine) as s:
            query = select(tables.Event).order_by(col(tables.Event.seq))
            if starting_after:
                after = s.exec(select(tables.Event.seq).where(tables.Event.id == starting_after)).first()
                if after is None:
                    raise HTTPException(404, f"no event {starting_after}")
                query = query.where(col(tables.Event.seq) > after)
            rows = s.exec(query.limit(limit + 1)).all()
        return {"data": [event_view(r) for r in rows[:limit]], "has_more": len(rows) > limit}

    return api
