"""A vendor's history from its stored invoices, and the facts routing rules see about it.

Amounts: the median and a robust spread (1.4826 × MAD, floored at 1 % of the median and 0.01 so a
vendor that always bills the same amount still has a usable scale). ``amount_deviation`` is this
invoice's distance from the median in spreads, ``amount_deviation_pct`` in percent of the median
(both absolute). Cadence: the median gap in days between consecutive issue dates.

Enrichment: performance (invoices, disputes = rejected invoices, average hours from receipt to
approval) and price anomalies — a line whose unit price is more than ``PRICE_SPREADS`` spreads
from the vendor's history for the same item (seller item id, else normalised name) with at least
``PRICE_MIN_HISTORY`` earlier prices.
"""

from __future__ import annotations

import itertools
import statistics
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, func, select

from mailingest.models import Invoice, ValidationMessage
from mailingest.storage import tables
from mailingest.storage.tables_vendors import Vendor

HISTORY_LIMIT = 200  # newest invoices considered per vendor
PRICE_HISTORY_LIMIT = 30  # newest invoices whose lines give the item prices
PRICE_SPREADS = 3
PRICE_MIN_HISTORY = 3
MAD_SCALE = Decimal("1.4826")
PRICE_ANOMALY_RULE = "price_anomaly"


@dataclass
class History:
    invoice_count: int = 0
    currency: str | None = None
    amount_median: Decimal | None = None
    amount_spread: Decimal | None = None
    cadence_days: float | None = None
    last_invoice_date: str | None = None
    disputes: int = 0
    approved: int = 0
    avg_processing_hours: float | None = None
    prices: dict[str, list[Decimal]] = field(default_factory=dict)

    def view(self) -> dict[str, Any]:
        """JSON for the API (money as decimal strings)."""
        return {
            "invoice_count": self.invoice_count,
            "currency": self.currency,
            "amount_median": _s(self.amount_median),
            "amount_spread": _s(self.amount_spread),
            "cadence_days": self.cadence_days,
            "last_invoice_date": self.last_invoice_date,
            "disputes": self.disputes,
            "approved": self.approved,
            "avg_processing_hours": self.avg_processing_hours,
        }


def _s(value: Decimal | None) -> str | None:
    return None if value is None else format(value.quantize(Decimal("0.01")), "f")


def _dec(value: Any) -> Decimal | None:
    try:
        return None if value is None else Decimal(str(value))
    except InvalidOperation:
        return None


def _date(value: str | None) -> date | None:
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        return None


def median_spread(values: list[Decimal]) -> tuple[Decimal, Decimal]:
    med = Decimal(statistics.median(values))
    mad = Decimal(statistics.median([abs(v - med) for v in values]))
    return med, max(mad * MAD_SCALE, abs(med) / 100, Decimal("0.01"))


def item_key(line: dict[str, Any]) -> str | None:
    item = line.get("item") or {}
    if item.get("seller_id"):
        return "id:" + str(item["seller_id"]).strip().upper()
    name = item.get("name") or item.get("description") or line.get("note")
    return "name:" + " ".join(str(name).lower().split()) if name else None


def unit_price(line: dict[str, Any]) -> Decimal | None:
    price = _dec((line.get("price") or {}).get("net"))
    if price is not None:
        return price
    amount, qty = _dec(line.get("net_amount")), _dec(line.get("quantity"))
    return amount / qty if amount is not None and qty else None


@dataclass(frozen=True)
class Past:
    """What the history needs of one stored invoice (the columns, not the JSON)."""

    amount_due: Decimal | None
    currency: str | None
    issue_date: str | None
    status: str
    received_at: datetime | None
    updated_at: datetime


def compute_history(
    rows: list[Past], lines: list[tuple[str | None, list[dict[str, Any]]]], currency: str | None = None
) -> History:
    """History from stored invoices (duplicates already left out), newest first; ``lines`` are
    (currency, lines) of the newest few for the item prices. Pure."""
    hist = History(invoice_count=len(rows))
    currencies = Counter(r.currency for r in rows if r.currency)
    dominant = currencies.most_common(1)[0][0] if currencies else None
    hist.currency = currency if currency in currencies else dominant
    amounts = [r.amount_due for r in rows if r.amount_due is not None and r.currency == hist.currency]
    if amounts:
        hist.amount_median, hist.amount_spread = median_spread(amounts)
    dates = sorted({d for r in rows if (d := _date(r.issue_date))})
    if dates:
        hist.last_invoice_date = dates[-1].isoformat()
    if len(dates) >= 2:
        hist.cadence_days = float(statistics.median([(b - a).days for a, b in itertools.pairwise(dates)]))
    hist.disputes = sum(1 for r in rows if r.status == "rejected")
    waits = [
        max(0.0, (r.updated_at - r.received_at).total_seconds() / 3600)
        for r in rows
        if r.status in ("approved", "exported") and r.received_at is not None
    ]
    hist.approved = sum(1 for r in rows if r.status in ("approved", "exported"))
    if waits:
        hist.avg_processing_hours = round(statistics.mean(waits), 2)
    for cur, items in lines:
        if cur != hist.currency:
            continue
        for line in items:
            key, price = item_key(line), unit_price(line)
            if key and price is not None:
                hist.prices.setdefault(key, []).append(price)
    return hist


def load_history(session: Session, vendor_id: str, currency: str | None = None) -> History:
    """The vendor's history from its newest ``HISTORY_LIMIT`` invoices (item prices from the newest
    ``PRICE_HISTORY_LIMIT``); reads columns, not the stored JSON, except for those lines."""
    inv, msg = tables.Invoice, tables.Message
    own = (col(inv.vendor_id) == vendor_id, col(inv.duplicate_of).is_(None))
    newest = col(inv.created_at).desc()
    rows = session.execute(
        sa.select(
            col(inv.amount_due),
            col(inv.currency),
            col(inv.issue_date),
            col(inv.status),
            col(msg.received_at),
            col(inv.updated_at),
        )
        .join(msg, col(msg.id) == col(inv.message_id))
        .where(*own)
        .order_by(newest)
        .limit(HISTORY_LIMIT)
    ).all()
    data = session.exec(
        select(inv.currency, inv.data).where(*own).order_by(newest).limit(PRICE_HISTORY_LIMIT)
    ).all()
    hist = compute_history([Past(*r) for r in rows], [(c, d.get("lines") or []) for c, d in data], currency)
    if len(rows) == HISTORY_LIMIT:
        hist.invoice_count = session.exec(select(func.count()).select_from(inv).where(*own)).one()
    return hist


def vendor_facts(vendor: Vendor, hist: History, invoice: Invoice, today: date) -> dict[str, Any]:
    """The ``vendor`` namespace routing rules see."""
    facts: dict[str, Any] = {
        "id": vendor.id,
        "name": vendor.name,
        "trusted": vendor.trusted,
        "lists": list(vendor.lists),
        "default_gl_account": vendor.default_gl_account,
        "invoice_count": hist.invoice_count,
        "currency": hist.currency,
        "amount_median": _s(hist.amount_median),
        "amount_spread": _s(hist.amount_spread),
        "amount_deviation": None,
        "amount_deviation_pct": None,
        "cadence_days": hist.cadence_days,
        "last_invoice_date": hist.last_invoice_date,
        "days_since_last": None,
    }
    amount = invoice.totals.amount_due
    if (
        amount is not None
        and hist.amount_median is not None
        and hist.amount_spread
        and invoice.currency == hist.currency
    ):
        diff = abs(amount - hist.amount_median)
        facts["amount_deviation"] = float(round(diff / hist.amount_spread, 2))
        if hist.amount_median:
            facts["amount_deviation_pct"] = float(round(diff / abs(hist.amount_median) * 100, 2))
    last = _date(hist.last_invoice_date)
    if last is not None:
        facts["days_since_last"] = ((_date(invoice.issue_date) or today) - last).days
    return facts


def enrichment(hist: History, invoice: Invoice) -> tuple[dict[str, Any], list[ValidationMessage]]:
    """(``enrichment`` facts, validation warnings for price anomalies)."""
    anomalies: list[dict[str, Any]] = []
    warnings: list[ValidationMessage] = []
    if invoice.currency == hist.currency:
        for i, line in enumerate(invoice.to_json_dict().get("lines") or []):
            key, price = item_key(line), unit_price(line)
            past = hist.prices.get(key or "", [])
            if price is None or len(past) < PRICE_MIN_HISTORY:
                continue
            med, spread = median_spread(past)
            deviation = abs(price - med) / spread
            if deviation > PRICE_SPREADS:
                anomalies.append(
                    {
                        "line": i,
                        "item": key,
                        "unit_price": _s(price),
                        "median": _s(med),
                        "spread": _s(spread),
                        "deviation": float(round(deviation, 2)),
                    }
                )
                warnings.append(
                    ValidationMessage(
                        rule=PRICE_ANOMALY_RULE,
                        severity="warning",
                        text=(
                            f"line {i + 1}: unit price {_s(price)} is {deviation:.1f} spreads from this"
                            f" vendor's usual {_s(med)} for this item"
                        ),
                        path=f"/lines/{i}/price/net",
                    )
                )
    facts = {
        "vendor_invoices": hist.invoice_count,
        "vendor_disputes": hist.disputes,
        "vendor_approved": hist.approved,
        "vendor_avg_processing_hours": hist.avg_processing_hours,
        "price_anomalies": anomalies,
        "price_anomaly_count": len(anomalies),
    }
    return facts, warnings
