"""Analytics endpoints (scope ``analytics:read``), computed from stored rows at request time.

* ``/v1/analytics/spend?by=vendor|gl_account|month``: sums per key and currency (credit notes
  subtract; rejected and duplicate invoices are left out). Vendor and month are SQL GROUP BYs;
  GL account sums line net amounts by ``lines[].coding.gl_account`` in Python.
* ``/v1/analytics/processing-times``: p50/p90 seconds received→extracted (message received,
  invoice stored), extracted→approved (the ``invoice.approved`` audit entry) and
  received→approved.
* ``/v1/analytics/straight-through``: the share of invoices no person had to touch — valid, not
  a duplicate, not needs_review or rejected, and no field corrected.
* ``/v1/analytics/exceptions``: validation errors by rule, duplicates, failed documents by error
  type, invoices waiting in needs_review.
* ``/v1/analytics/confidence``: extraction confidence per field (count, mean, min, p10).
* ``/v1/analytics/corrections``: corrections per field and per vendor with rates (the share of
  invoices corrected) — present when the ``corrections`` table exists.
* ``/v1/analytics/deliveries``: webhook/connector deliveries per connector: delivered, dead,
  pending and success rates of deliveries and of attempts.

Everything is plain SQLAlchemy Core (SQLite and PostgreSQL); the Python-side parts read the JSON
of every invoice once per call, fine into the hundreds of thousands of rows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from sqlalchemy import case
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from mailingest.api.actions import Context
from mailingest.storage import tables

try:  # another module owns the vendor tables; analytics of corrections only when they exist
    from mailingest.storage.tables_vendors import Correction
except ImportError:  # pragma: no cover - depends on the schema of this checkout
    Correction = None  # type: ignore[assignment,misc]

EXCLUDED = ("rejected", "duplicate")
DATE = r"^\d{4}-\d{2}-\d{2}$"


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..1); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary(values: list[float]) -> dict[str, Any]:
    p50, p90 = percentile(values, 0.5), percentile(values, 0.9)
    return {
        "count": len(values),
        "p50_seconds": round(p50, 3) if p50 is not None else None,
        "p90_seconds": round(p90, 3) if p90 is not None else None,
    }


def _money(value: Any) -> Decimal | None:
    try:
        return Decimal(str(value)) if value is not None else None
    except InvalidOperation:
        return None


def _rows(rows: Iterable[tuple[str | None, str | None, Any, int]]) -> list[dict[str, Any]]:
    return [
        {"key": key, "currency": currency, "amount": str(_money(amount) or Decimal(0)), "invoices": int(n)}
        for key, currency, amount, n in rows
    ]


def _invoice_data(engine: Engine, *conditions: Any) -> Iterator[tuple[tables.Invoice, dict[str, Any]]]:
    with Session(engine) as session:
        for row in session.exec(select(tables.Invoice).where(*conditions)).all():
            yield row, row.data or {}


def spend(engine: Engine, by: str, date_from: str | None, date_to: str | None) -> list[dict[str, Any]]:
    inv = tables.Invoice
    conditions: list[Any] = [col(inv.status).not_in(EXCLUDED), col(inv.duplicate_of).is_(None)]
    if date_from:
        conditions.append(col(inv.issue_date) >= date_from)
    if date_to:
        conditions.append(col(inv.issue_date) <= date_to)
    if by == "gl_account":
        totals: dict[tuple[str | None, str | None], list[Any]] = defaultdict(lambda: [Decimal(0), set()])
        for row, data in _invoice_data(engine, *conditions):
            sign = -1 if row.type == "credit_note" else 1
            for line in data.get("lines") or []:
                amount = _money(line.get("net_amount"))
                if amount is None:
                    continue
                account = (line.get("coding") or {}).get("gl_account")
                entry = totals[(account, row.currency)]
                entry[0] += sign * amount
                entry[1].add(row.id)
        return _rows(
            (k, c, v[0], len(v[1]))
            for (k, c), v in sorted(totals.items(), key=lambda i: (str(i[0][0]), str(i[0][1])))
        )
    signed = case((col(inv.type) == "credit_note", -col(inv.amount_due)), else_=col(inv.amount_due))
    key: Any = (
        func.coalesce(col(inv.seller_vat_id), col(inv.seller_name))
        if by == "vendor"
        else func.substr(col(inv.issue_date), 1, 7)
    )
    query = (
        select(key, col(inv.currency), func.sum(signed), func.count())
        .where(*conditions)
        .group_by(key, col(inv.currency))
        .order_by(key, col(inv.currency))
    )
    with Session(engine) as session:
        return _rows(session.exec(query).all())


def processing_times(engine: Engine) -> dict[str, Any]:
    inv, msg, audit = tables.Invoice, tables.Message, tables.AuditLog
    with Session(engine) as session:
        stored = session.exec(
            select(inv.id, inv.created_at, msg.received_at).join(msg, col(msg.id) == col(inv.message_id))
        ).all()
        approved = dict(
            session.exec(
                select(audit.subject_id, func.min(audit.at))
                .where(audit.action == "invoice.approved")
                .group_by(col(audit.subject_id))
            ).all()
        )
    extracted, to_approval, end_to_end = [], [], []
    for invoice_id, created, received in stored:
        extracted.append(max(0.0, (created - received).total_seconds()))
        at = approved.get(invoice_id)
        if at is not None:
            if at.tzinfo is None:  # aggregates skip the column type on some backends
                at = at.replace(tzinfo=created.tzinfo)
            to_approval.append(max(0.0, (at - created).total_seconds()))
            end_to_end.append(max(0.0, (at - received).total_seconds()))
    return {
        "received_to_extracted": summary(extracted),
        "extracted_to_approved": summary(to_approval),
        "received_to_approved": summary(end_to_end),
    }


def _corrected_invoices(engine: Engine) -> set[str]:
    if Correction is None:
        return set()
    with Session(engine) as session:
        return set(session.exec(select(Correction.invoice_id).distinct()).all())


def straight_through(engine: Engine) -> dict[str, Any]:
    corrected = _corrected_invoices(engine)
    total = straight = 0
    for row, _data in _invoice_data(engine):
        total += 1
        if (
            row.valid is not False
            and row.duplicate_of is None
            and row.status not in ("needs_review", "rejected", "duplicate")
            and row.id not in corrected
        ):
            straight += 1
    return {
        "invoices": total,
        "straight_through": straight,
        "rate": round(straight / total, 4) if total else None,
    }


def exceptions(engine: Engine) -> dict[str, Any]:
    rules: dict[str, int] = defaultdict(int)
    needs_review = duplicate_invoices = 0
    for row, data in _invoice_data(engine):
        for message in (data.get("validation") or {}).get("messages") or []:
            if message.get("severity", "error") == "error":
                rules[str(message.get("rule"))] += 1
        needs_review += row.status == "needs_review"
        duplicate_invoices += row.duplicate_of is not None or row.status == "duplicate"
    doc, msg = tables.Document, tables.Message
    with Session(engine) as session:
        failed: dict[str, int] = defaultdict(int)
        for error_type, n in session.exec(
            select(doc.error_type, func.count()).where(doc.status == "failed").group_by(col(doc.error_type))
        ).all():
            failed[error_type or "unknown"] += int(n)
        duplicate_messages = session.exec(
            select(func.count()).select_from(msg).where(msg.status == "duplicate")
        ).one()
        failed_messages = session.exec(
            select(func.count()).select_from(msg).where(msg.status == "failed")
        ).one()
    return {
        "validation_errors": dict(sorted(rules.items())),
        "duplicates": {"messages": int(duplicate_messages), "invoices": duplicate_invoices},
        "failed_documents": dict(sorted(failed.items())),
        "failed_messages": int(failed_messages),
        "needs_review": needs_review,
    }


def confidence(engine: Engine) -> dict[str, Any]:
    fields: dict[str, list[float]] = defaultdict(list)
    overall: list[float] = []
    for _row, data in _invoice_data(engine):
        extraction = data.get("extraction") or {}
        if isinstance(extraction.get("confidence"), int | float):
            overall.append(float(extraction["confidence"]))
        for name, info in (extraction.get("fields") or {}).items():
            if isinstance(info, dict) and isinstance(info.get("confidence"), int | float):
                fields[name].append(float(info["confidence"]))

    def stats(values: list[float]) -> dict[str, Any]:
        if not values:
            return {"count": 0, "mean": None, "min": None, "p10": None}
        return {
            "count": len(values),
            "mean": round(sum(values) / len(values), 4),
            "min": round(min(values), 4),
            "p10": round(percentile(values, 0.1) or 0.0, 4),
        }

    return {"overall": stats(overall), "fields": {name: stats(v) for name, v in sorted(fields.items())}}


def corrections(engine: Engine) -> dict[str, Any]:
    assert Correction is not None
    inv = tables.Invoice
    with Session(engine) as session:
        total = session.exec(select(func.count()).select_from(inv)).one()
        by_field = session.exec(
            select(Correction.field, func.count(), func.count(func.distinct(Correction.invoice_id)))
            .group_by(col(Correction.field))
            .order_by(col(Correction.field))
        ).all()
        by_vendor = session.exec(
            select(Correction.vendor_id, func.count(), func.count(func.distinct(Correction.invoice_id)))
            .group_by(col(Correction.vendor_id))
            .order_by(col(Correction.vendor_id))
        ).all()
    return {
        "invoices": int(total),
        "by_field": [
            {
                "field": f,
                "corrections": int(n),
                "invoices": int(i),
                "rate": round(i / total, 4) if total else None,
            }
            for f, n, i in by_field
        ],
        "by_vendor": [{"vendor_id": v, "corrections": int(n), "invoices": int(i)} for v, n, i in by_vendor],
    }


def deliveries(engine: Engine) -> dict[str, Any]:
    dlv, attempt = tables.Delivery, tables.DeliveryAttempt
    with Session(engine) as session:
        by_status = session.exec(
            select(dlv.connector, dlv.status, func.count()).group_by(col(dlv.connector), col(dlv.status))
        ).all()
        attempts = session.exec(
            select(
                dlv.connector,
                func.count(),
                func.sum(case((col(attempt.outcome) == "delivered", 1), else_=0)),
            )
            .join(dlv, col(dlv.id) == col(attempt.delivery_id))
            .group_by(col(dlv.connector))
        ).all()
    result: dict[str, dict[str, Any]] = defaultdict(lambda: {"delivered": 0, "dead": 0, "pending": 0})
    for connector, status, n in by_status:
        result[connector][status] = int(n)
    for connector, n, ok in attempts:
        result[connector]["attempts"] = int(n)
        result[connector]["attempt_success_rate"] = round(int(ok or 0) / n, 4) if n else None
    for entry in result.values():
        done = entry["delivered"] + entry["dead"]
        entry["success_rate"] = round(entry["delivered"] / done, 4) if done else None
    return {"connectors": dict(sorted(result.items()))}


def router(ctx: Context) -> APIRouter:
    api = APIRouter(prefix="/v1/analytics", tags=["analytics"], dependencies=[ctx.scope("analytics:read")])
    engine = ctx.engine

    @api.get("/spend")
    def get_spend(
        by: Literal["vendor", "gl_account", "month"] = "vendor",
        date_from: Annotated[str | None, Query(pattern=DATE, description="issue date from")] = None,
        date_to: Annotated[str | None, Query(pattern=DATE, description="issue date to")] = None,
    ) -> dict[str, Any]:
        """Spend per vendor (VAT id, else name), GL account or issue month, per currency."""
        return {"by": by, "data": spend(engine, by, date_from, date_to)}

    @api.get("/processing-times")
    def get_processing_times() -> dict[str, Any]:
        """p50/p90 seconds from received to extracted to approved."""
        return processing_times(engine)

    @api.get("/straight-through")
    def get_straight_through() -> dict[str, Any]:
        """Share of invoices that needed no person (valid, no duplicate, no review, no correction)."""
        return straight_through(engine)

    @api.get("/exceptions")
    def get_exceptions() -> dict[str, Any]:
        """Exception counts by reason: validation rules, duplicates, failed documents, review."""
        return exceptions(engine)

    @api.get("/confidence")
    def get_confidence() -> dict[str, Any]:
        """Extraction confidence per field."""
        return confidence(engine)

    if Correction is not None:

        @api.get("/corrections")
        def get_corrections() -> dict[str, Any]:
            """Corrections per field and per vendor, with the share of invoices corrected."""
            return corrections(engine)

    @api.get("/deliveries")
    def get_deliveries() -> dict[str, Any]:
        """Webhook/connector delivery success per connector."""
        return deliveries(engine)

    return api
