"""``/v1/batches``: per-item outcomes, partial failure, idempotent retry, background batches and
scopes — the real app over SQLite and PostgreSQL."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import Session, col, select

from mailingest.api.app import create_app
from mailingest.storage import db, tables
from mailingest.storage.tables import utcnow
from mailingest.storage.tables_api import Batch, BatchItem
from tests.test_api import CONFIG, make_key, request
from tests.test_api_invoices import seed


@pytest.fixture
def engine(db_url: str) -> Any:
    engine = db.make_engine(db_url)
    db.upgrade(engine)
    yield engine
    engine.dispose()


def events(engine: Any, type_: str) -> list[str]:
    with Session(engine) as s:
        return [
            e.subject_id or "" for e in s.exec(select(tables.Event).where(tables.Event.type == type_)).all()
        ]


def test_partial_failure_and_idempotent_retry(engine: Any) -> None:
    app = create_app(engine, config=CONFIG, auth_mode="required")
    _, key = make_key(engine, "invoices:read", "invoices:approve")
    ready = [seed(engine, number=f"B{i}", status="needs_review") for i in range(3)]
    done = seed(engine, number="B-done", status="approved")
    items = [{"invoice_id": i, "comment": "month end"} for i in ready]
    items += [{"invoice_id": done}, {"invoice_id": "inv_later"}]
    body = {"action": "approve", "items": items}

    made = request(app, "POST", "/v1/batches", key=key, json=body, headers={"Idempotency-Key": "b-1"})
    assert made.status_code == 202, made.text
    batch = made.json()
    assert batch["id"].startswith("bat_") and batch["status"] == "done"
    assert batch["counts"] == {"pending": 0, "succeeded": 3, "failed": 2}
    statuses = [(i["invoice_id"], i["status"], (i["error"] or {}).get("status")) for i in batch["items"]]
    assert statuses[:3] == [(i, "succeeded", None) for i in ready]
    assert statuses[3:] == [(done, "failed", 409), ("inv_later", "failed", 404)]
    replay = request(app, "POST", "/v1/batches", key=key, json=body, headers={"Idempotency-Key": "b-1"})
    assert replay.json()["id"] == batch["id"] and replay.headers["idempotent-replayed"] == "true"
    assert sorted(events(engine, "invoice.approved")) == sorted(ready)  # the replay ran nothing

    # the missing invoice arrives; a retry runs only the failed items
    with db.session_scope(engine) as s:
        row = s.get(tables.Invoice, seed(engine, number="late", status="validated"))
        assert row is not None
        s.add(
            tables.Invoice(**{**row.model_dump(), "id": "inv_later", "data": {**row.data, "id": "inv_later"}})
        )
    retried = request(app, "POST", f"/v1/batches/{batch['id']}/retry", key=key)
    assert retried.status_code == 202
    after = {i["invoice_id"]: (i["status"], i["attempts"]) for i in retried.json()["items"]}
    assert after["inv_later"] == ("succeeded", 2) and after[done] == ("failed", 2)
    assert all(after[i] == ("succeeded", 1) for i in ready)
    again = request(app, "POST", f"/v1/batches/{batch['id']}/retry", key=key).json()
    assert {i["invoice_id"]: i["attempts"] for i in again["items"]}[ready[0]] == 1
    assert sorted(events(engine, "invoice.approved")) == sorted([*ready, "inv_later"])
    assert request(app, "GET", f"/v1/batches/{batch['id']}", key=key).json() == again
    assert request(app, "GET", "/v1/batches/bat_404", key=key).status_code == 404


def test_large_batches_run_in_the_background_and_scopes_apply(engine: Any) -> None:
    app = create_app(engine, config=CONFIG, auth_mode="required")
    _, tagger = make_key(engine, "invoices:read", "invoices:write")
    _, approver = make_key(engine, "invoices:read", "invoices:approve")
    invoices = [seed(engine, number=f"L{i}", tags=["old"]) for i in range(60)]
    body = {
        "action": "tag",
        "items": [{"invoice_id": i, "add_tags": ["q1"], "remove_tags": ["old"]} for i in invoices],
    }
    made = request(app, "POST", "/v1/batches", key=tagger, json=body)
    assert made.status_code == 202
    deadline = time.monotonic() + 30
    while (view := request(app, "GET", made.headers["location"], key=tagger).json())["status"] != "done":
        assert time.monotonic() < deadline, view["counts"]
        time.sleep(0.1)
    assert view["counts"] == {"pending": 0, "succeeded": 60, "failed": 0}
    tagged = request(app, "GET", "/v1/invoices?tag=q1&limit=200", key=tagger).json()["data"]
    assert len(tagged) == 60 and all(d["tags"] == ["q1"] for d in tagged)

    refused = request(
        app,
        "POST",
        "/v1/batches",
        key=tagger,
        json={"action": "approve", "items": [{"invoice_id": invoices[0]}]},
    )
    assert refused.status_code == 403 and "invoices:approve" in refused.json()["detail"]
    assigned = request(
        app,
        "POST",
        "/v1/batches",
        key=approver,
        json={"action": "assign", "items": [{"invoice_id": invoices[0], "approvers": ["cfo@example.com"]}]},
    )
    assert assigned.json()["counts"]["succeeded"] == 1
    assert request(app, "GET", f"/v1/invoices/{invoices[0]}", key=approver).json()["approvers"] == [
        "cfo@example.com"
    ]

    missing = request(
        app, "POST", "/v1/batches", key=approver, json={"action": "assign", "items": [{"invoice_id": "x"}]}
    )
    assert missing.status_code == 422 and "approvers" in missing.json()["detail"]
    too_many = {"action": "approve", "items": [{"invoice_id": "x"}] * 1001}
    over = request(app, "POST", "/v1/batches", key=approver, json=too_many)
    assert over.status_code == 422 and "body.items" in over.json()["detail"]


def test_an_interrupted_batch_is_resumed_by_retry(engine: Any) -> None:
    app = create_app(engine, config=CONFIG, auth_mode="required")
    _, key = make_key(engine, "invoices:read", "invoices:approve")
    invoices = [seed(engine, number=f"R{i}") for i in range(2)]
    made = request(
        app,
        "POST",
        "/v1/batches",
        key=key,
        json={"action": "approve", "items": [{"invoice_id": i} for i in invoices]},
    ).json()
    # as if the server stopped mid-batch: the second item never ran, long ago
    with db.session_scope(engine) as s:
        s.execute(update(Batch).where(col(Batch.id) == made["id"]).values(status="running", finished_at=None))
        s.execute(
            update(BatchItem)
            .where(col(BatchItem.batch_id) == made["id"], col(BatchItem.position) == 1)
            .values(status="pending", attempts=0)
        )
        s.execute(update(BatchItem).values(updated_at=utcnow() - timedelta(hours=1)))
        s.execute(
            update(tables.Invoice).where(col(tables.Invoice.id) == invoices[1]).values(status="validated")
        )
    resumed = request(app, "POST", f"/v1/batches/{made['id']}/retry", key=key)
    assert resumed.status_code == 202, resumed.text
    assert resumed.json()["status"] == "done"
    assert [(i["status"], i["attempts"]) for i in resumed.json()["items"]] == [
        ("succeeded", 1),
        ("succeeded", 1),
    ]

    with db.session_scope(engine) as s:  # a batch that is really running is left alone
        s.execute(update(Batch).where(col(Batch.id) == made["id"]).values(status="running"))
        s.execute(update(BatchItem).values(updated_at=utcnow()))
    busy = request(app, "POST", f"/v1/batches/{made['id']}/retry", key=key)
    assert busy.status_code == 409 and "running" in busy.json()["detail"]
