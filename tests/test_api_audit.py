"""``GET /v1/audit`` (admin) and ``GET /v1/invoices/{id}/history`` (invoices:read), on SQLite and
PostgreSQL: a real invoice (uploaded and extracted through the API) is approved and commented,
and the audit log and the invoice's history show it; filters, time range and cursor pages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from mailingest.api.app import create_app
from mailingest.config import Config
from mailingest.storage import db
from tests.conftest import FIXTURES
from tests.test_api import make_key, request

UBL = FIXTURES / "einvoice" / "xrechnung-testsuite__business-cases__standard__01.01a-INVOICE_ubl.xml"


@pytest.fixture
def engine(db_url: str) -> Any:
    engine = db.make_engine(db_url)
    db.upgrade(engine)
    yield engine
    engine.dispose()


def test_audit_log_and_invoice_history(engine: Any, tmp_path: Path) -> None:
    config = Config.model_validate(
        {"data_dir": str(tmp_path / "data"), "rules": {"path": str(tmp_path / "r")}}
    )
    app = create_app(engine, config=config, auth_mode="required")
    _, admin = make_key(engine, "admin")
    _, reader = make_key(engine, "invoices:read")
    clerk_id, clerk = make_key(engine, "invoices:read", "invoices:write", "invoices:approve")
    started = datetime.now(UTC) - timedelta(seconds=1)

    files = [("files", (UBL.name, UBL.read_bytes()))]
    made = request(app, "POST", "/v1/documents?sync=true", key=clerk, files=files)
    assert made.status_code == 201, made.text
    invoice = made.json()["invoices"][0]["id"]
    assert (
        request(app, "POST", f"/v1/invoices/{invoice}/comments", key=clerk, json={"body": "ok"}).status_code
        == 201
    )
    approved = request(app, "POST", f"/v1/invoices/{invoice}/approve", key=clerk)
    assert approved.status_code == 200, approved.text

    # the invoice's history: its events and its audit entries, oldest first
    assert request(app, "GET", f"/v1/invoices/{invoice}/history", key=admin).status_code == 200
    history = request(app, "GET", f"/v1/invoices/{invoice}/history", key=reader)
    assert history.status_code == 200, history.text
    items = history.json()["data"]
    events = [i["type"] for i in items if i["kind"] == "event"]
    audits = [i["action"] for i in items if i["kind"] == "audit"]
    assert events[-1] == "invoice.approved" and len(events) >= 2  # extracted …, then approved
    assert audits[0] == "invoice.created" and audits[-2:] == ["invoice.commented", "invoice.approved"]
    assert [i["at"] for i in items] == sorted(i["at"] for i in items)
    approval = next(i for i in items if i.get("action") == "invoice.approved")
    assert approval["actor"] == f"api:{clerk_id}" and approval["detail"]["to"] == "approved"
    assert request(app, "GET", "/v1/invoices/inv_nope/history", key=reader).status_code == 404

    # the audit log: admin only
    assert request(app, "GET", "/v1/audit", key=reader).status_code == 403
    assert request(app, "GET", "/v1/audit", key=clerk).status_code == 403
    every = request(app, "GET", "/v1/audit?limit=500", key=admin).json()["data"]
    assert every and all(e["id"].startswith("aud_") for e in every)
    ids = [int(e["id"][4:]) for e in every]
    assert ids == sorted(ids, reverse=True)
    calls = {e["action"] for e in every if e["actor"] == f"api:{clerk_id}"}
    assert {"POST /v1/documents", "POST /v1/invoices/{invoice_id}/approve", "invoice.approved"} <= calls

    def audit(**params: Any) -> list[dict[str, Any]]:
        response = request(app, "GET", "/v1/audit", key=admin, params={"limit": 500, **params})
        assert response.status_code == 200, response.text
        return list(response.json()["data"])

    [entry] = audit(action="invoice.approved")
    assert entry["subject_type"] == "invoice" and entry["subject_id"] == invoice
    family = [e["action"] for e in audit(action="invoice.*")]
    assert family[:2] == ["invoice.approved", "invoice.commented"] and family[-1] == "invoice.created"
    assert {e["action"] for e in audit(subject_id=invoice)} == set(audits)
    assert {e["subject_type"] for e in audit(subject_type="invoice")} == {"invoice"}
    assert all(e["actor"] == f"api:{clerk_id}" for e in audit(actor=f"api:{clerk_id}"))
    assert audit(**{"from": started.isoformat()}) and not audit(to=started.isoformat())
    assert not audit(**{"from": (datetime.now(UTC) + timedelta(hours=1)).isoformat()})
    assert request(app, "GET", "/v1/audit?from=yesterday", key=admin).status_code == 422
    assert request(app, "GET", "/v1/audit?starting_after=nope", key=admin).status_code == 422

    # cursor pages: every entry once, in order, although each page call adds an entry itself
    seen: list[str] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 3, **({"starting_after": after} if after else {})}
        page = request(app, "GET", "/v1/audit", key=admin, params=params).json()
        seen += [e["id"] for e in page["data"]]
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
    first = every[0]["id"]
    assert seen[seen.index(first) :] == [e["id"] for e in every]
    assert len(seen) == len(set(seen))
