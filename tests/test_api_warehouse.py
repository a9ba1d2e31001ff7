"""``/v1/analytics/export``: a streamed ZIP of month-partitioned (Hive style) CSV files of invoices
and lines — the real app over SQLite and PostgreSQL, read back as a warehouse loader would."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from datetime import UTC, datetime
from typing import Any

import pytest

from mailingest.api import warehouse
from mailingest.api.app import create_app
from mailingest.storage import db
from tests.test_api import CONFIG, make_key, request
from tests.test_api_invoices import seed


@pytest.fixture
def engine(db_url: str) -> Any:
    engine = db.make_engine(db_url)
    db.upgrade(engine)
    yield engine
    engine.dispose()


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def table(archive: zipfile.ZipFile, name: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(archive.read(name).decode("utf-8"))))


def test_export_partitions_by_month(engine: Any) -> None:
    app = create_app(engine, config=CONFIG, auth_mode="required")
    _, analyst = make_key(engine, "analytics:read")
    _, reader = make_key(engine, "invoices:read")
    seed(engine, number="SEP", created_at=at("2026-09-30T23:59:59"))  # before the range
    october = seed(
        engine,
        number="OCT-1",
        issue_date="2026-10-14",
        currency="EUR",
        seller={"name": "=cmd()", "vat_id": "DE123456789"},
        totals={
            "tax_exclusive": "100.00",
            "tax_total": "19.00",
            "tax_inclusive": "119.00",
            "amount_due": "119.00",
        },
        lines=[
            {
                "id": "1",
                "quantity": "2",
                "unit_code": "H87",
                "net_amount": "60.00",
                "price": {"net": "30.00"},
                "vat": {"category_code": "S", "rate": "19"},
                "item": {"name": "Toner"},
                "coding": {"gl_account": "4930", "cost_center": "IT"},
            },
            {"id": "2", "net_amount": "-40.00", "item": {"name": "Credit"}, "coding": {"gl_account": "6815"}},
        ],
        tags=["a", "b"],
        created_at=at("2026-10-15T10:00:00"),
    )
    first_nov = seed(engine, number="NOV-1", currency="USD", created_at=at("2026-11-01T00:00:00"))
    last_nov = seed(engine, number="NOV-2", status="approved", created_at=at("2026-11-30T23:59:59"))
    seed(engine, number="JAN", created_at=at("2027-01-01T00:00:00"))  # after the range

    response = request(app, "GET", "/v1/analytics/export?from=2026-10&to=2026-12&format=csv", key=analyst)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert 'filename="mailingest-2026-10_2026-12.zip"' in response.headers["content-disposition"]
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert archive.testzip() is None
    assert sorted(archive.namelist()) == [
        "invoices/month=2026-10/invoices.csv",
        "invoices/month=2026-11/invoices.csv",
        "invoices/month=2026-12/invoices.csv",
        "lines/month=2026-10/lines.csv",
        "lines/month=2026-11/lines.csv",
        "lines/month=2026-12/lines.csv",
        "manifest.json",
    ]
    oct_rows = table(archive, "invoices/month=2026-10/invoices.csv")
    assert len(oct_rows) == 1
    row = oct_rows[0]
    assert row["invoice_id"] == october and row["month"] == "2026-10" and row["number"] == "OCT-1"
    assert row["seller_name"] == "'=cmd()" and row["seller_vat_id"] == "DE123456789"  # defused
    assert (row["tax_exclusive"], row["tax_total"], row["amount_due"]) == ("100.00", "19.00", "119.00")
    assert row["gl_accounts"] == "4930;6815" and row["line_count"] == "2" and row["tags"] == "a;b"
    assert row["created_at"] == "2026-10-15T10:00:00Z" and row["issue_date"] == "2026-10-14"
    assert row["status"] == "validated" and row["currency"] == "EUR"
    lines = table(archive, "lines/month=2026-10/lines.csv")
    assert [(x["line_no"], x["item_name"], x["net_amount"], x["gl_account"]) for x in lines] == [
        ("1", "Toner", "60.00", "4930"),
        ("2", "Credit", "-40.00", "6815"),  # numbers are never defused
    ]
    assert (
        lines[0]["unit_price"] == "30.00" and lines[0]["vat_rate"] == "19" and lines[0]["cost_center"] == "IT"
    )
    assert all(x["invoice_id"] == october and x["currency"] == "EUR" for x in lines)
    november = table(archive, "invoices/month=2026-11/invoices.csv")
    assert [r["invoice_id"] for r in november] == [
        first_nov,
        last_nov,
    ]  # month bounds are [start, next start)
    assert november[1]["status"] == "approved"
    empty = archive.read("invoices/month=2026-12/invoices.csv").decode()
    assert empty.splitlines() == [",".join(warehouse.INVOICE_COLUMNS)]  # header only
    assert archive.read("lines/month=2026-11/lines.csv").decode().splitlines() == [
        ",".join(warehouse.LINE_COLUMNS)
    ]
    manifest = json.loads(archive.read("manifest.json"))
    assert manifest["months"] == [
        {"month": "2026-10", "invoices": 1, "lines": 2},
        {"month": "2026-11", "invoices": 2, "lines": 0},
        {"month": "2026-12", "invoices": 0, "lines": 0},
    ]
    assert manifest["columns"]["invoices"] == list(warehouse.INVOICE_COLUMNS)

    one = request(app, "GET", "/v1/analytics/export?from=2026-11", key=analyst)  # to defaults to from
    names = zipfile.ZipFile(io.BytesIO(one.content)).namelist()
    assert sorted(names) == [
        "invoices/month=2026-11/invoices.csv",
        "lines/month=2026-11/lines.csv",
        "manifest.json",
    ]

    denied = request(app, "GET", "/v1/analytics/export?from=2026-10", key=reader)
    assert denied.status_code == 403 and denied.headers["content-type"] == "application/problem+json"
    for query, word in [
        ("from=2026-12&to=2026-10", "after"),
        ("from=2000-01&to=2026-10", "at most"),
        ("from=0000-01", "between"),
        ("from=2026-13", "from"),
        ("from=2026-10&format=parquet", "format"),
        ("", "from"),
    ]:
        bad = request(app, "GET", f"/v1/analytics/export?{query}", key=analyst)
        assert bad.status_code == 422, query
        assert bad.headers["content-type"] == "application/problem+json" and word in bad.json()["detail"], (
            query
        )


def test_export_pages_and_streams_in_chunks(engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """More rows than a chunk, several with the same created_at: keyset paging on (created_at, id)
    loses and repeats nothing, and the archive leaves in several pieces while it is written."""
    monkeypatch.setattr(warehouse, "CHUNK", 3)
    same = at("2026-05-10T12:00:00")
    ids = [
        seed(
            engine,
            number=f"N{i}",
            created_at=same if i % 2 else at(f"2026-05-{i + 1:02d}T08:00:00"),
            lines=[{"id": "1", "net_amount": str(i)}],
        )
        for i in range(11)
    ]
    app = create_app(engine, config=CONFIG, auth_mode="required")
    _, analyst = make_key(engine, "analytics:read")
    response = request(app, "GET", "/v1/analytics/export?from=2026-05", key=analyst)
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    rows = table(archive, "invoices/month=2026-05/invoices.csv")
    assert sorted(r["invoice_id"] for r in rows) == sorted(ids) and len(rows) == 11
    ordered = [(r["created_at"], r["invoice_id"]) for r in rows]
    assert ordered == sorted(ordered)
    assert sorted(r["net_amount"] for r in table(archive, "lines/month=2026-05/lines.csv")) == sorted(
        str(i) for i in range(11)
    )

    class Ctx:  # the generator only needs the engine
        pass

    ctx = Ctx()
    ctx.engine = engine  # type: ignore[attr-defined]
    pieces = list(warehouse.stream_zip(ctx, "2026-05", "2026-05"))  # type: ignore[arg-type]
    assert len([p for p in pieces if p]) >= 3  # bytes leave before the archive is complete
    assert zipfile.ZipFile(io.BytesIO(b"".join(pieces))).testzip() is None
