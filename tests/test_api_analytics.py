"""Analytics and monitoring endpoints on SQLite and PostgreSQL, over invoices made by running the
sample fixtures through the real pipeline (with a real webhook receiver), one approval and one
correction made through the API. Expected figures are recomputed here from the invoices the API
returns, never hard-coded."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from mailingest.api import auth
from mailingest.api.app import create_app
from mailingest.api.sandbox import sample_files
from mailingest.config import Config
from mailingest.ingest import ingest_files
from mailingest.storage import db
from tests.conftest import WEBHOOK_SECRET, WebhookReceiver
from tests.test_api_auth import call


@pytest.fixture
def world(
    tmp_path: Path, db_url: str, webhook_receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> Any:
    monkeypatch.setenv("TEST_WEBHOOK_SECRET", WEBHOOK_SECRET)
    config = Config.model_validate(
        {
            "data_dir": str(tmp_path / "data"),
            "storage": {"url": db_url},
            "rules": {"path": str(tmp_path / "rules")},
            "api": {"auth": "required", "rate_limit": "0"},
            "connectors": {
                "webhook": [
                    {
                        "name": "erp",
                        "url": webhook_receiver.url,
                        "events": ["invoice.*"],
                        "secret": {"env": "TEST_WEBHOOK_SECRET"},
                        "allow_private_network": True,
                    }
                ]
            },
        }
    )
    ingest_files(config, sample_files())
    engine = db.make_engine(db_url)
    app = create_app(engine, config=config)
    with db.session_scope(engine) as s:
        analyst = auth.create_key(s, name="bi", scopes=["analytics:read"])[1]
        admin = auth.create_key(s, name="admin", scopes=["admin"])[1]
    invoices = call(app, "GET", "/v1/invoices?limit=200", token=admin).json()["data"]
    assert len(invoices) >= 10
    yield app, analyst, admin, invoices, engine
    engine.dispose()


def money(value: Any) -> Decimal:
    return Decimal(str(value)) if value is not None else Decimal(0)


def counted(invoice: dict[str, Any]) -> bool:
    return invoice["status"] not in ("rejected", "duplicate") and not invoice.get("duplicate_of")


def test_analytics_figures_match_the_invoices(world: Any) -> None:
    app, analyst, admin, invoices, _engine = world
    get = lambda path: call(app, "GET", path, token=analyst)  # noqa: E731 - short local helper

    # one approval and one correction through the API
    approvable = next(i for i in invoices if i["status"] in ("validated", "needs_review", "extracted"))
    assert call(app, "POST", f"/v1/invoices/{approvable['id']}/approve", token=admin).status_code == 200
    corrected = next(i for i in invoices if i["id"] != approvable["id"] and counted(i))
    etag = call(app, "GET", f"/v1/invoices/{corrected['id']}", token=admin).headers["etag"]
    patched = call(
        app,
        "PATCH",
        f"/v1/invoices/{corrected['id']}",
        token=admin,
        content=b'{"number": "CORRECTED-1"}',
        headers={"If-Match": etag, "Content-Type": "application/merge-patch+json"},
    )
    assert patched.status_code == 200, patched.text

    # spend: per currency, every grouping adds up to the invoices' own amounts
    expected: dict[str, Decimal] = defaultdict(Decimal)
    expected_lines: dict[str, Decimal] = defaultdict(Decimal)
    for invoice in invoices:
        if counted(invoice):
            sign = -1 if invoice["type"] == "credit_note" else 1
            expected[invoice.get("currency")] += sign * money(invoice["totals"].get("amount_due"))
            for line in invoice.get("lines", []):
                if line.get("net_amount") is not None:
                    expected_lines[invoice.get("currency")] += sign * money(line["net_amount"])
    for by, want in (("vendor", expected), ("month", expected), ("gl_account", expected_lines)):
        response = get(f"/v1/analytics/spend?by={by}")
        assert response.status_code == 200 and response.json()["by"] == by
        got: dict[str, Decimal] = defaultdict(Decimal)
        for row in response.json()["data"]:
            got[row["currency"]] += money(row["amount"])
        assert {c: v for c, v in got.items() if v} == {c: v for c, v in want.items() if v}, by
    one_month = get("/v1/analytics/spend?by=month&date_from=2024-01-01&date_to=2024-12-31").json()["data"]
    assert one_month and all(row["key"].startswith("2024-") for row in one_month)
    assert get("/v1/analytics/spend?by=month&date_from=yesterday").status_code == 422

    times = get("/v1/analytics/processing-times").json()
    assert times["received_to_extracted"]["count"] == len(invoices)
    assert times["extracted_to_approved"]["count"] == 1 and times["received_to_approved"]["count"] == 1
    for figure in times.values():
        assert figure["p50_seconds"] is not None and 0 <= figure["p50_seconds"] <= figure["p90_seconds"]

    errors: dict[str, int] = defaultdict(int)
    for invoice in invoices:
        for message in (invoice.get("validation") or {}).get("messages", []):
            if message.get("severity", "error") == "error":
                errors[message["rule"]] += 1
    exceptions = get("/v1/analytics/exceptions").json()
    assert exceptions["validation_errors"] == dict(errors) and errors
    assert exceptions["needs_review"] == sum(i["status"] == "needs_review" for i in invoices) - (
        approvable["status"] == "needs_review"
    )
    assert exceptions["duplicates"]["invoices"] == sum(
        not counted(i) and i["status"] != "rejected" for i in invoices
    )
    assert exceptions["failed_documents"] == {}

    corrections = get("/v1/analytics/corrections").json()
    assert corrections["invoices"] == len(invoices)
    assert [row["invoices"] for row in corrections["by_field"]] == [1] and corrections["by_field"][0][
        "rate"
    ] > 0
    assert sum(row["corrections"] for row in corrections["by_vendor"]) == 1

    def straight(invoice: dict[str, Any]) -> bool:
        status = "approved" if invoice["id"] == approvable["id"] else invoice["status"]
        valid = (invoice.get("validation") or {}).get("valid", True)
        return (
            valid is not False
            and counted(invoice)
            and status not in ("needs_review", "rejected")
            and invoice["id"] != corrected["id"]
        )

    stp = get("/v1/analytics/straight-through").json()
    assert stp["invoices"] == len(invoices) and stp["straight_through"] == sum(map(straight, invoices))
    assert 0 < stp["rate"] < 1

    confidence = get("/v1/analytics/confidence").json()
    with_confidence = [i for i in invoices if (i.get("extraction") or {}).get("confidence") is not None]
    assert confidence["overall"]["count"] == len(with_confidence)
    assert confidence["fields"] and all(
        0 <= f["min"] <= f["mean"] <= 1 for f in confidence["fields"].values()
    )

    deliveries = get("/v1/analytics/deliveries").json()["connectors"]
    assert set(deliveries) == {"erp"} and deliveries["erp"]["delivered"] >= len(invoices)
    assert deliveries["erp"]["success_rate"] == 1.0 and deliveries["erp"]["attempt_success_rate"] == 1.0


def test_probes_and_metrics(world: Any, tmp_path: Path) -> None:
    app, analyst, _admin, _invoices, _engine = world
    assert call(app, "GET", "/livez").json() == {"status": "ok"}
    ready = call(app, "GET", "/readyz")
    assert ready.status_code == 200 and ready.json()["schema"]["current"] == ready.json()["schema"]["heads"]
    assert call(app, "GET", "/v1/analytics/spend", token=analyst).status_code == 200
    text = call(app, "GET", "/metrics").text
    histogram = 'mailingest_api_request_duration_seconds_count{method="GET",route="/v1/analytics/spend",'
    assert histogram + 'status="200"} 1.0' in text
    assert "mailingest_outbox_lag_seconds 0.0" in text  # every delivery went out
    count = next(
        line for line in text.splitlines() if line.startswith("mailingest_extraction_duration_seconds_count")
    )
    assert float(count.split()[-1]) >= 10

    # a database behind the newest migration is not ready
    behind = db.make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    db.upgrade(behind, "0001")
    not_ready = call(create_app(behind), "GET", "/readyz")
    assert not_ready.status_code == 503 and not_ready.json()["schema"]["current"] == ["0001"]
    behind.dispose()
