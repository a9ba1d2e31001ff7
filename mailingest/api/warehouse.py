"""``/v1/analytics/export``: invoices and their lines for a data warehouse, as a ZIP of flat CSV
files partitioned by month, Hive style::

    invoices/month=2026-11/invoices.csv
    lines/month=2026-11/lines.csv
    manifest.json

A month is the UTC month an invoice was *stored* (``created_at``): partitions never move when an
invoice is corrected, and each month is read with keyset paging on the (created_at, id) index.
The archive is written while it is sent: rows are read ``CHUNK`` at a time, the ZIP goes to an
unseekable sink that is drained after every chunk (entries use data descriptors), and only the
current month's lines wait in a ``SpooledTemporaryFile`` (on disk past ``SPOOL_BYTES``) until its
invoices are written. Memory stays bounded however many months are asked for.

Cells are defused against spreadsheet formulas like every CSV mailingest writes (a text cell
starting with ``= + - @`` gets a leading ``'``; numbers stay numbers).
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO, Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import StreamingResponse
from sqlalchemy import and_, or_
from sqlmodel import Session, col, select

from mailingest import __version__
from mailingest.api.actions import Context
from mailingest.connectors.files import csv_cell
from mailingest.storage import tables

CHUNK = 500
SPOOL_BYTES = 8 * 2**20
MAX_MONTHS = 120
MONTH = r"^[0-9]{4}-(0[1-9]|1[0-2])$"
INVOICE_COLUMNS = (
    "invoice_id",
    "month",
    "number",
    "type",
    "status",
    "vendor_id",
    "seller_name",
    "seller_vat_id",
    "buyer_name",
    "buyer_vat_id",
    "issue_date",
    "due_date",
    "currency",
    "tax_exclusive",
    "tax_total",
    "tax_inclusive",
    "amount_due",
    "purchase_order",
    "valid",
    "duplicate_of",
    "line_count",
    "gl_accounts",
    "approvers",
    "tags",
    "message_id",
    "document_id",
    "created_at",
    "updated_at",
)
LINE_COLUMNS = (
    "invoice_id",
    "month",
    "line_no",
    "line_id",
    "item_name",
    "quantity",
    "unit_code",
    "unit_price",
    "net_amount",
    "vat_category",
    "vat_rate",
    "gl_account",
    "cost_center",
    "currency",
    "issue_date",
    "vendor_id",
    "status",
    "created_at",
)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def invoice_row(row: tables.Invoice, month: str) -> list[str]:
    d = row.data
    seller, buyer, totals = d.get("seller") or {}, d.get("buyer") or {}, d.get("totals") or {}
    lines = d.get("lines") or []
    accounts = dict.fromkeys(
        (line.get("coding") or {}).get("gl_account") for line in lines if isinstance(line, dict)
    )
    values = {
        "invoice_id": row.id,
        "month": month,
        "number": d.get("number"),
        "type": d.get("type"),
        "status": row.status,
        "vendor_id": row.vendor_id,
        "seller_name": seller.get("name"),
        "seller_vat_id": seller.get("vat_id"),
        "buyer_name": buyer.get("name"),
        "buyer_vat_id": buyer.get("vat_id"),
        "issue_date": d.get("issue_date"),
        "due_date": d.get("due_date"),
        "currency": d.get("currency"),
        "tax_exclusive": totals.get("tax_exclusive"),
        "tax_total": totals.get("tax_total"),
        "tax_inclusive": totals.get("tax_inclusive"),
        "amount_due": totals.get("amount_due"),
        "purchase_order": d.get("purchase_order"),
        "valid": row.valid,
        "duplicate_of": row.duplicate_of,
        "line_count": len(lines),
        "gl_accounts": ";".join(a for a in accounts if a),
        "approvers": ";".join(d.get("approvers") or []),
        "tags": ";".join(d.get("tags") or []),
        "message_id": row.message_id,
        "document_id": row.document_id,
        "created_at": _iso(row.created_at),
        "updated_at": _iso(row.updated_at),
    }
    return [_text(values[c]) for c in INVOICE_COLUMNS]


def line_rows(row: tables.Invoice, month: str) -> Iterator[list[str]]:
    d = row.data
    for number, line in enumerate(d.get("lines") or [], start=1):
        if not isinstance(line, dict):
            continue
        item, price, vat, coding = (line.get(k) or {} for k in ("item", "price", "vat", "coding"))
        values = {
            "invoice_id": row.id,
            "month": month,
            "line_no": number,
            "line_id": line.get("id"),
            "item_name": item.get("name"),
            "quantity": line.get("quantity"),
            "unit_code": line.get("unit_code"),
            "unit_price": price.get("net"),
            "net_amount": line.get("net_amount"),
            "vat_category": vat.get("category_code"),
            "vat_rate": vat.get("rate"),
            "gl_account": coding.get("gl_account"),
            "cost_center": coding.get("cost_center"),
            "currency": d.get("currency"),
            "issue_date": d.get("issue_date"),
            "vendor_id": row.vendor_id,
            "status": row.status,
            "created_at": _iso(row.created_at),
        }
        yield [_text(values[c]) for c in LINE_COLUMNS]


def months(start: str, end: str) -> list[tuple[str, datetime, datetime]]:
    """(label, first instant, first instant of the next month) for each month in [start, end]."""
    year, month = int(start[:4]), int(start[5:])
    out = []
    while f"{year:04d}-{month:02d}" <= end:
        nxt = (year + 1, 1) if month == 12 else (year, month + 1)
        out.append(
            (
                f"{year:04d}-{month:02d}",
                datetime(year, month, 1, tzinfo=UTC),
                datetime(nxt[0], nxt[1], 1, tzinfo=UTC),
            )
        )
        year, month = nxt
    return out


def month_rows(ctx: Context, lo: datetime, hi: datetime) -> Iterator[tables.Invoice]:
    """Invoices stored in [lo, hi), oldest first, CHUNK at a time (keyset on created_at, id)."""
    inv = tables.Invoice
    after: tuple[datetime, str] | None = None
    while True:
        query = select(inv).where(col(inv.created_at) >= lo, col(inv.created_at) < hi)
        if after is not None:
            at, key = after
            query = query.where(  # the first bound lets PostgreSQL seek the index, not filter
                col(inv.created_at) >= at,
                or_(col(inv.created_at) > at, and_(col(inv.created_at) == at, col(inv.id) > key)),
            )
        with Session(ctx.engine) as s:
            rows = list(s.exec(query.order_by(col(inv.created_at), col(inv.id)).limit(CHUNK)).all())
        yield from rows
        if len(rows) < CHUNK:
            return
        after = (rows[-1].created_at, rows[-1].id)


class _Sink(io.RawIOBase):
    """An unseekable, write-only buffer that the response drains (zipfile then streams)."""

    def __init__(self) -> None:
        super().__init__()
        self._parts = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._parts += data
        return len(data)

    @property
    def size(self) -> int:
        return len(self._parts)

    def take(self) -> bytes:
        out = bytes(self._parts)
        self._parts.clear()
        return out


def _csv_writer(handle: IO[bytes]) -> tuple[io.TextIOWrapper, Any]:
    text = io.TextIOWrapper(handle, encoding="utf-8", newline="", write_through=True)
    return text, csv.writer(text, lineterminator="\r\n")


def _writerow(writer: Any, cells: list[str]) -> None:
    writer.writerow([csv_cell(c) for c in cells])


def stream_zip(ctx: Context, start: str, end: str) -> Iterator[bytes]:
    """The archive, yielded as it is written (see the module docstring)."""
    sink = _Sink()
    manifest: dict[str, Any] = {
        "generator": f"mailingest {__version__}",
        "generated_at": _iso(datetime.now(UTC)),
        "partitioned_by": "month of created_at (UTC)",
        "from": start,
        "to": end,
        "columns": {"invoices": list(INVOICE_COLUMNS), "lines": list(LINE_COLUMNS)},
        "months": [],
    }
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for label, lo, hi in months(start, end):
            invoices = lines = 0
            with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
                lines_text, lines_out = _csv_writer(spool)
                _writerow(lines_out, list(LINE_COLUMNS))
                entry = f"invoices/month={label}/invoices.csv"
                with archive.open(entry, "w", force_zip64=True) as handle:
                    text, out = _csv_writer(handle)
                    _writerow(out, list(INVOICE_COLUMNS))
                    for row in month_rows(ctx, lo, hi):
                        _writerow(out, invoice_row(row, label))
                        invoices += 1
                        for cells in line_rows(row, label):
                            _writerow(lines_out, cells)
                            lines += 1
                        if invoices % CHUNK == 0 and (chunk := sink.take()):
                            yield chunk
                    text.detach()
                lines_text.flush()
                lines_text.detach()
                spool.seek(0)
                with archive.open(f"lines/month={label}/lines.csv", "w", force_zip64=True) as handle:
                    while block := spool.read(2**16):
                        handle.write(block)
                        if sink.size >= 2**16:
                            yield sink.take()
            manifest["months"].append({"month": label, "invoices": invoices, "lines": lines})
            if chunk := sink.take():
                yield chunk
        archive.writestr("manifest.json", json.dumps(manifest, indent=2) + "\n")
    yield sink.take()


def router(ctx: Context) -> APIRouter:
    api = APIRouter(prefix="/v1/analytics", tags=["analytics"])

    @api.get("/export", dependencies=[ctx.scope("analytics:read")])
    def warehouse_export(
        from_: Annotated[str, Query(alias="from", pattern=MONTH, description="first month, YYYY-MM")],
        to: Annotated[
            str | None, Query(pattern=MONTH, description="last month, YYYY-MM (default: from)")
        ] = None,
        format: Annotated[Literal["csv"], Query(description="csv (Parquet is not offered)")] = "csv",
    ) -> StreamingResponse:
        """Invoices and lines stored in the months ``from``..``to`` (UTC, by ``created_at``) as a
        streamed ZIP of Hive-partitioned CSV files (``invoices/month=YYYY-MM/invoices.csv``,
        ``lines/month=YYYY-MM/lines.csv``, one per month even when empty) and ``manifest.json``
        (columns, row counts per month). Loading it: docs/api.md, "Warehouse export"."""
        end = to or from_
        first_year, last_year = int(from_[:4]), int(end[:4])
        if first_year < 1 or last_year > 9998:
            raise HTTPException(422, "months must lie between 0001-01 and 9998-12")
        span = (last_year - first_year) * 12 + int(end[5:]) - int(from_[5:]) + 1
        if span < 1:
            raise HTTPException(422, f"from ({from_}) must not be after to ({end})")
        if span > MAX_MONTHS:
            raise HTTPException(
                422, f"at most {MAX_MONTHS} months per export ({span} asked); split the range"
            )
        name = f"mailingest-{from_}_{end}.zip"
        return StreamingResponse(
            stream_zip(ctx, from_, end),
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    return api
