"""``/v1/invoices``: filters, cursor pagination under concurrent inserts, PATCH corrections with
ETag/If-Match, assign, comments and idempotency — against the real app over SQLite and
PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from sqlmodel import Session, select

from mailingest.api.app import create_app
from mailingest.api.invoices import columns
from mailingest.models import Invoice, new_id
from mailingest.storage import db, tables
from mailingest.storage.tables import utcnow
from mailingest.storage.tables_vendors import Correction
from tests.test_api import CONFIG, make_key, request


@pytest.fixture
def engine(db_url: str) -> Any:
    engine = db.make_engine(db_url)
    db.upgrade(engine)
    yield engine
    engine.dispose()


def seed(engine: Any, *, created_at: Any = None, status: str = "validated", **fields: Any) -> str:
    """One stored invoice built from the canonical model, with its message and document."""
    invoice = Invoice.model_validate({"status": status, **fields})
    invoice.id = invoice_id = new_id("inv")
    msg_id, doc_id = new_id("msg"), new_id("doc")
    with db.session_scope(engine) as s:
        s.add(tables.Message(id=msg_id, source="api", sha256=msg_id.ljust(64, "0")[:64], status="processed"))
        s.flush()
        s.add(tables.Document(id=doc_id, message_id=msg_id, path="1", sha256="1" * 64, status="extracted"))
        s.flush()
        extra = {"created_at": created_at} if created_at is not None else {}
        s.add(
            tables.Invoice(
                id=invoice_id,
                document_id=doc_id,
                message_id=msg_id,
                status=status,
                data=invoice.to_json_dict(),
                **columns(invoice),
                **extra,
            )
        )
    return invoice_id


def app_for(engine: Any) -> FastAPI:
    return create_app(engine, config=CONFIG, auth_mode="required")


def ids(response: Any) -> set[str]:
    assert response.status_code == 200, response.text
    return {d["id"] for d in response.json()["data"]}


def test_list_filters(engine: Any) -> None:
    app = app_for(engine)
    _, key = make_key(engine, "invoices:read")
    acme = seed(
        engine,
        number="ACME-2026-001",
        issue_date="2026-03-01",
        currency="EUR",
        seller={"name": "ACME GmbH", "vat_id": "DE123456789"},
        totals={"amount_due": "119.00"},
        tags=["urgent", "it"],
    )
    globex = seed(
        engine,
        number="GX/77",
        issue_date="2026-04-15",
        currency="USD",
        seller={"name": "Globex Corporation", "vat_id": "US999"},
        totals={"amount_due": "2500.50"},
        status="needs_review",
    )
    credit = seed(
        engine,
        type="credit_note",
        number="CN-1",
        issue_date="2026-05-02",
        currency="EUR",
        seller={"name": "Acme Supplies Ltd"},
        totals={"amount_due": "-20"},
        tags=["it"],
    )

    def listed(query: str) -> set[str]:
        return ids(request(app, "GET", f"/v1/invoices?{query}", key=key))

    assert listed("") == {acme, globex, credit}
    assert listed("status=needs_review") == {globex}
    assert listed("status=validated,needs_review") == {acme, globex, credit}
    assert listed("vendor=acme") == {acme, credit}
    assert listed("vat_id=DE123456789") == {acme}
    assert listed("issue_date_from=2026-04-01") == {globex, credit}
    assert listed("issue_date_from=2026-03-01&issue_date_to=2026-04-30") == {acme, globex}
    assert listed("amount_min=100&amount_max=200") == {acme}
    assert listed("amount_max=0") == {credit}
    assert listed("currency=eur") == {acme, credit}
    assert listed("tag=it") == {acme, credit}
    assert listed("tag=urgent") == {acme}
    assert listed("tag=nothing") == set()
    assert listed("type=credit_note") == {credit}
    assert listed("q=gx/7") == {globex}
    assert listed("q=supplies") == {credit}
    assert listed("q=100%") == set()  # LIKE wildcards are literal

    bad = request(app, "GET", "/v1/invoices?amount_min=lots&type=bill", key=key)
    assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"
    assert "query.amount_min" in bad.json()["detail"] and "query.type" in bad.json()["detail"]
    assert request(app, "GET", "/v1/invoices?starting_after=inv_nope", key=key).status_code == 404


def test_pagination_is_stable_while_rows_are_inserted(engine: Any) -> None:
    app = app_for(engine)
    _, key = make_key(engine, "invoices:read")
    same_time = utcnow() - timedelta(hours=1)
    # ties on created_at are broken by id, so rows sharing a timestamp are neither lost nor repeated
    original = {seed(engine, number=f"T{i}", created_at=same_time if i % 2 else None) for i in range(23)}
    for order in ("-created_at", "created_at"):
        seen: list[str] = []
        cursor = ""
        for page in range(10):
            response = request(app, "GET", f"/v1/invoices?limit=5&sort={order}{cursor}", key=key)
            body = response.json()
            seen += [d["id"] for d in body["data"]]
            seed(engine, number=f"new-{order}-{page}")  # a concurrent insert between page reads
            if not body["has_more"]:
                break
            cursor = f"&starting_after={seen[-1]}"
        assert len(seen) == len(set(seen))
        if order == "-created_at":  # newest first: rows inserted meanwhile are ahead of the cursor
            assert set(seen) == original
        else:  # oldest first: everything before the cursor is stable, new rows come at the end
            assert original <= set(seen)
            original = original | set(seen)


def test_patch_needs_if_match_and_records_the_correction(engine: Any) -> None:
    app = app_for(engine)
    key_id, key = make_key(engine, "invoices:read", "invoices:write")
    _, reader = make_key(engine, "invoices:read")
    invoice_id = seed(
        engine,
        number="INV-1",
        currency="EUR",
        seller={"name": "Wrong Name", "vat_id": "DE1"},
        totals={"amount_due": "10.00"},
        lines=[{"id": "1", "net_amount": "10.00", "coding": {"gl_account": "4000"}}],
        status="needs_review",
    )
    finding = {"of": "inv_other", "reason": "same number and seller"}  # the pipeline's, kept as is
    with db.session_scope(engine) as s:
        row = s.get(tables.Invoice, invoice_id)
        assert row is not None
        row.data = {**row.data, "duplicate": finding}
        s.add(row)
    got = request(app, "GET", f"/v1/invoices/{invoice_id}", key=key)
    tag = got.headers["etag"]
    assert tag.startswith('"')
    path = f"/v1/invoices/{invoice_id}"
    patch = {"seller": {"name": "Right Name GmbH"}, "number": "INV-0001", "totals": {"amount_due": "12.50"}}

    assert request(app, "PATCH", path, key=reader, json=patch, headers={"If-Match": tag}).status_code == 403
    missing = request(app, "PATCH", path, key=key, json=patch)
    assert missing.status_code == 428 and missing.headers["content-type"] == "application/problem+json"
    stale = request(app, "PATCH", path, key=key, json=patch, headers={"If-Match": '"0000"'})
    assert stale.status_code == 412

    invalid = request(
        app, "PATCH", path, key=key, json={"totals": {"amount_due": "lots"}}, headers={"If-Match": tag}
    )
    assert invalid.status_code == 422 and "body.totals.amount_due" in invalid.json()["detail"]
    assert invalid.json()["errors"][0]["loc"] == ["body", "totals", "amount_due"]
    unknown = request(app, "PATCH", path, key=key, json={"colour": "red"}, headers={"If-Match": tag})
    assert unknown.status_code == 422 and "body.colour" in unknown.json()["detail"]
    frozen = request(app, "PATCH", path, key=key, json={"status": "approved"}, headers={"If-Match": tag})
    assert frozen.status_code == 422 and "status" in frozen.json()["detail"]
    frozen = request(app, "PATCH", path, key=key, json={"duplicate": None}, headers={"If-Match": tag})
    assert frozen.status_code == 422 and "duplicate" in frozen.json()["detail"]

    ok = request(app, "PATCH", path, key=key, json=patch, headers={"If-Match": tag})
    assert ok.status_code == 200, ok.text
    data = ok.json()
    assert data["seller"] == {"name": "Right Name GmbH", "vat_id": "DE1"}  # merged, not replaced
    assert data["number"] == "INV-0001" and data["totals"]["amount_due"] == "12.50"
    assert data["lines"][0]["coding"]["gl_account"] == "4000"
    assert data["duplicate"] == finding
    assert ok.headers["etag"] != tag
    assert request(app, "GET", path, key=key).headers["etag"] == ok.headers["etag"]
    # the same If-Match again is now stale
    assert request(app, "PATCH", path, key=key, json=patch, headers={"If-Match": tag}).status_code == 412

    lines_patch = {"lines": [{"id": "1", "net_amount": "12.50", "coding": {"gl_account": "6815"}}]}
    coded = request(app, "PATCH", path, key=key, json=lines_patch, headers={"If-Match": ok.headers["etag"]})
    assert coded.status_code == 200 and coded.json()["lines"][0]["coding"]["gl_account"] == "6815"
    removed = request(
        app, "PATCH", path, key=key, json={"currency": None}, headers={"If-Match": coded.headers["etag"]}
    )
    assert "currency" not in removed.json()

    assert ids(request(app, "GET", "/v1/invoices?vendor=right+name", key=key)) == {invoice_id}
    assert ids(request(app, "GET", "/v1/invoices?amount_min=12.5&amount_max=12.5", key=key)) == {invoice_id}
    assert ids(request(app, "GET", "/v1/invoices?number=INV-0001", key=key)) == {invoice_id}
    with Session(engine) as s:
        row = s.get(tables.Invoice, invoice_id)
        events = s.exec(select(tables.Event).where(tables.Event.type == "invoice.updated")).all()
        audits = s.exec(select(tables.AuditLog).where(tables.AuditLog.action == "invoice.updated")).all()
        corrections = s.exec(select(Correction).where(Correction.invoice_id == invoice_id)).all()
    assert row is not None and row.seller_name == "Right Name GmbH" and row.currency is None
    assert len(events) == 3 and events[0].payload["data"]["number"] == "INV-0001"
    assert [a.actor for a in audits] == [f"api:{key_id}"] * 3
    assert audits[0].detail is not None and audits[0].detail["fields"] == ["number", "seller", "totals"]
    by_field = {c.field: (c.old, c.new) for c in corrections}  # the vendor profile learns from these
    assert by_field["/seller/name"] == ("Wrong Name", "Right Name GmbH")
    assert by_field["/lines/0/coding/gl_account"] == ("4000", "6815")
    assert (
        request(app, "PATCH", "/v1/invoices/inv_404", key=key, json={}, headers={"If-Match": "*"}).status_code
        == 404
    )


def test_assign_comments_and_idempotency(engine: Any) -> None:
    app = app_for(engine)
    _, key = make_key(engine, "invoices:read", "invoices:write", "invoices:approve")
    _, other = make_key(engine, "invoices:approve")
    invoice_id = seed(engine, number="A-1")
    path = f"/v1/invoices/{invoice_id}/assign"
    first = request(
        app,
        "POST",
        path,
        key=key,
        json={"approvers": ["ana@example.com"]},
        headers={"Idempotency-Key": "a-1"},
    )
    assert first.status_code == 200 and first.json()["approvers"] == ["ana@example.com"]
    again = request(
        app,
        "POST",
        path,
        key=key,
        json={"approvers": ["ana@example.com"]},
        headers={"Idempotency-Key": "a-1"},
    )
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    conflict = request(
        app,
        "POST",
        path,
        key=key,
        json={"approvers": ["bob@example.com"]},
        headers={"Idempotency-Key": "a-1"},
    )
    assert conflict.status_code == 422 and "Idempotency-Key" in conflict.json()["detail"]
    # keys are per credential: another key may use the same Idempotency-Key for its own request
    theirs = request(
        app,
        "POST",
        path,
        key=other,
        json={"approvers": ["bob@example.com"]},
        headers={"Idempotency-Key": "a-1"},
    )
    assert theirs.status_code == 200 and theirs.json()["approvers"] == ["bob@example.com"]
    empty = request(app, "POST", path, key=key, json={"approvers": [""]})
    assert empty.status_code == 422 and "body.approvers.0" in empty.json()["detail"]

    comments = f"/v1/invoices/{invoice_id}/comments"
    made = request(
        app, "POST", comments, key=key, json={"body": "VAT id checked"}, headers={"Idempotency-Key": "c-1"}
    )
    assert made.status_code == 201 and made.json()["id"].startswith("com_")
    replay = request(
        app, "POST", comments, key=key, json={"body": "VAT id checked"}, headers={"Idempotency-Key": "c-1"}
    )
    assert replay.status_code == 201 and replay.json() == made.json()
    request(app, "POST", comments, key=key, json={"body": "second"})
    listed = request(app, "GET", comments, key=key).json()
    assert [c["body"] for c in listed["data"]] == ["VAT id checked", "second"] and not listed["has_more"]
    assert request(app, "POST", comments, key=other, json={"body": "x"}).status_code == 403
    assert (
        request(app, "POST", "/v1/invoices/inv_404/comments", key=key, json={"body": "x"}).status_code == 404
    )
    with Session(engine) as s:
        assigned = s.exec(select(tables.Event).where(tables.Event.type == "invoice.assigned")).all()
    assert len(assigned) == 2


def test_patch_runs_the_checks_again(engine: Any) -> None:
    app = app_for(engine)
    _, key = make_key(engine, "invoices:read", "invoices:write")
    totals = {"tax_exclusive": "10", "tax_total": "2", "tax_inclusive": "15", "amount_due": "15"}
    note = {
        "rule": "MI-PDF-TOTAL",
        "severity": "warning",
        "text": "the PDF text says 14.00",
    }  # an extractor's
    invoice_id = seed(
        engine,
        number="V-1",
        currency="EUR",
        totals=totals,
        status="needs_review",
        validation={"valid": True, "messages": [note]},
    )
    path = f"/v1/invoices/{invoice_id}"

    def rules(response: Any) -> set[str]:
        assert response.status_code == 200, response.text
        return {m["rule"] for m in response.json()["validation"].get("messages", [])}

    tag = request(app, "GET", path, key=key).headers["etag"]
    broken = request(app, "PATCH", path, key=key, json={"number": "V-01"}, headers={"If-Match": tag})
    assert "BR-CO-15" in rules(broken)  # tax inclusive is not exclusive + tax
    fixed = request(
        app,
        "PATCH",
        path,
        key=key,
        json={"totals": {"tax_inclusive": "12", "amount_due": "12"}},
        headers={"If-Match": broken.headers["etag"]},
    )
    assert "BR-CO-15" not in rules(fixed) and "MI-PDF-TOTAL" in rules(fixed)
    listed = [m["rule"] for m in fixed.json()["validation"]["messages"]]
    assert len(listed) == len(set(listed))  # replaced, not piled up
    assert fixed.json()["status"] == "needs_review"  # the workflow is the actions' business
    with Session(engine) as s:
        row = s.get(tables.Invoice, invoice_id)
    assert row is not None and row.valid == fixed.json()["validation"]["valid"]
