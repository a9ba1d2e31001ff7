"""Exports: streamed CSV (columns, lines, formula defusing), NDJSON and JSON arrays with the list
filters, and one invoice as JSON, UBL or CII — the real app over SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from mailingest.api.app import create_app
from mailingest.storage import db
from tests.test_api import CONFIG, make_key, request
from tests.test_api_invoices import seed
from tests.test_api_uploads import UBL, config_for, truth, upload


@pytest.fixture
def engine(db_url: str) -> Any:
    engine = db.make_engine(db_url)
    db.upgrade(engine)
    yield engine
    engine.dispose()


def test_bulk_exports_stream_with_filters(engine: Any) -> None:
    app = create_app(engine, config=CONFIG, auth_mode="required")
    _, key = make_key(engine, "invoices:read")
    first = seed(
        engine,
        number="E-1",
        currency="EUR",
        seller={"name": '=HYPERLINK("http://evil.example","click")', "vat_id": "DE1"},
        totals={"amount_due": "-5.00", "tax_total": "1.00"},
        lines=[
            {"id": "1", "net_amount": "3.00", "item": {"name": "Paper"}, "coding": {"gl_account": "4930"}},
            {"id": "2", "net_amount": "-8.00", "item": {"name": "@refund"}},
        ],
        tags=["export"],
    )
    second = seed(engine, number="E-2", currency="USD", totals={"amount_due": "10"}, tags=["export"])
    seed(engine, number="other")

    ndjson = request(app, "GET", "/v1/invoices/export?tag=export", key=key)
    assert ndjson.status_code == 200 and ndjson.headers["content-type"].startswith("application/x-ndjson")
    assert [json.loads(line)["id"] for line in ndjson.text.splitlines()] == [first, second]  # oldest first
    array = request(app, "GET", "/v1/invoices/export?format=json&tag=export&currency=USD", key=key)
    assert [d["number"] for d in array.json()] == ["E-2"]
    empty = request(app, "GET", "/v1/invoices/export?format=json&tag=none", key=key)
    assert empty.json() == []

    flat = request(app, "GET", "/v1/invoices/export?format=csv&tag=export", key=key)
    assert flat.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(flat.text)))
    assert [r["number"] for r in rows] == ["E-1", "E-2"]
    assert rows[0]["seller_name"] == '\'=HYPERLINK("http://evil.example","click")'  # defused
    assert rows[0]["amount_due"] == "-5.00"  # numbers stay numbers
    assert rows[1]["seller_name"] == "" and rows[0]["tags"] == "export"

    chosen = "number,line_id,line_name,line_net_amount,line_gl_account"
    lines = request(
        app, "GET", f"/v1/invoices/export?format=csv&lines=true&tag=export&columns={chosen}", key=key
    )
    table = list(csv.reader(io.StringIO(lines.text)))
    assert table == [
        chosen.split(","),
        ["E-1", "1", "Paper", "3.00", "4930"],
        ["E-1", "2", "'@refund", "-8.00", ""],
        ["E-2", "", "", "", ""],  # an invoice without lines still gets its row
    ]
    bad = request(app, "GET", "/v1/invoices/export?format=csv&columns=number,password", key=key)
    assert bad.status_code == 422 and "password" in bad.json()["detail"]


def test_bulk_export_pages_through_many_rows(engine: Any) -> None:
    app = create_app(engine, config=CONFIG, auth_mode="required")
    _, key = make_key(engine, "invoices:read")
    from mailingest.api import exports

    made = {seed(engine, number=f"N{i}") for i in range(exports.CHUNK + 7)}
    got = request(app, "GET", "/v1/invoices/export", key=key).text.splitlines()
    assert len(got) == len(made) and {json.loads(x)["id"] for x in got} == made


def test_one_invoice_as_json_ubl_and_cii(engine: Any, tmp_path: Path) -> None:
    app = create_app(engine, config=config_for(tmp_path), auth_mode="required")
    _, key = make_key(engine, "invoices:read", "invoices:write")
    [invoice] = upload(app, key, UBL, sync=True).json()["invoices"]
    path = f"/v1/invoices/{invoice['id']}/export"
    assert request(app, "GET", path, key=key).json() == invoice
    expected = truth(UBL)["number"]
    for fmt, root in (("ubl", "Invoice"), ("cii", "CrossIndustryInvoice")):
        response = request(app, "GET", f"{path}?format={fmt}", key=key)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/xml")
        tree = etree.fromstring(response.content)
        assert etree.QName(tree).localname == root
        assert expected in response.text
    assert request(app, "GET", f"{path}?format=pdf", key=key).status_code == 422
    assert request(app, "GET", "/v1/invoices/inv_404/export?format=ubl", key=key).status_code == 404
