"""The REST API's auth, actions, change feed and metrics against the real app and real databases
(SQLite and PostgreSQL), plus the ``api-key`` CLI."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlmodel import Session, col, select

from mailingest import cli
from mailingest.api import auth
from mailingest.api.app import create_app
from mailingest.config import ApiConfig, Config
from mailingest.storage import db, tables
from mailingest.storage.tables import utcnow

CONFIG = Config.model_validate(
    {
        "connectors": {
            "webhook": [
                {
                    "name": "erp",
                    "url": "https://erp.example/hook",
                    "events": ["invoice.*"],
                    "secret": {"env": "UNUSED"},
                }
            ]
        }
    }
)


def request(
    app: FastAPI, method: str, path: str, *, key: str | None = None, client: str = "127.0.0.1", **kw: Any
) -> httpx.Response:
    headers = dict(kw.pop("headers", {}))
    if key:
        headers["Authorization"] = f"Bearer {key}"

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(client, 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
            return await c.request(method, path, headers=headers, **kw)

    return asyncio.run(go())


@pytest.fixture
def engine(db_url: str) -> Any:
    engine = db.make_engine(db_url)
    db.upgrade(engine)
    yield engine
    engine.dispose()


def make_key(engine: Any, *scopes: str, **kw: Any) -> tuple[str, str]:
    with db.session_scope(engine) as s:
        row, secret = auth.create_key(s, name="test", scopes=scopes, **kw)
    return row.id, secret


def add_invoice(engine: Any, status: str = "validated") -> str:
    with db.session_scope(engine) as s:
        s.add(tables.Message(id="msg_1", source="cli", sha256="0" * 64, status="processed"))
        s.flush()  # no ORM relationships: parents go in first for the foreign keys
        s.add(tables.Document(id="doc_1", message_id="msg_1", path="1", sha256="1" * 64, status="extracted"))
        s.flush()
        s.add(
            tables.Invoice(
                id="inv_1",
                document_id="doc_1",
                message_id="msg_1",
                number="42",
                status=status,
                data={"id": "inv_1", "number": "42", "status": status},
            )
        )
    return "inv_1"


def required_app(engine: Any) -> FastAPI:
    return create_app(engine, config=CONFIG, auth_mode="required")


def test_v1_needs_a_valid_key_with_the_right_scope(engine: Any) -> None:
    app = required_app(engine)
    add_invoice(engine)
    missing = request(app, "GET", "/v1/invoices")
    assert missing.status_code == 401
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["status"] == 401 and "invoices:read" in missing.json()["detail"]
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert request(app, "GET", "/v1/invoices", key="mi_nonsense").status_code == 401

    _, reader = make_key(engine, "invoices:read")
    assert request(app, "GET", "/v1/invoices", key=reader).json()["data"][0]["id"] == "inv_1"
    forbidden = request(app, "GET", "/v1/stats", key=reader)
    assert forbidden.status_code == 403 and "analytics:read" in forbidden.json()["detail"]
    assert request(app, "POST", "/v1/invoices/inv_1/approve", key=reader).status_code == 403

    _, admin = make_key(engine, "admin")
    assert request(app, "GET", "/v1/stats", key=admin).json()["invoices"] == {"validated": 1}
    assert request(app, "GET", "/healthz").status_code == 200  # open


def test_revoked_and_expired_keys_are_refused(engine: Any) -> None:
    app = required_app(engine)
    key_id, revoked = make_key(engine, "invoices:read")
    assert request(app, "GET", "/v1/invoices", key=revoked).status_code == 200
    with db.session_scope(engine) as s:
        auth.revoke_key(s, key_id)
    refused = request(app, "GET", "/v1/invoices", key=revoked)
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
    _, expired = make_key(engine, "invoices:read", expires_at=utcnow() - timedelta(seconds=1))
    assert "expired" in request(app, "GET", "/v1/invoices", key=expired).json()["detail"]


def test_authenticated_calls_are_audited(engine: Any) -> None:
    app = required_app(engine)
    key_id, key = make_key(engine, "invoices:read")
    add_invoice(engine)
    assert request(app, "GET", "/v1/invoices/inv_1", key=key).status_code == 200
    with Session(engine) as s:
        entry = s.exec(select(tables.AuditLog).where(tables.AuditLog.actor == f"api:{key_id}")).one()
        used = s.get(tables.ApiKey, key_id)
    assert entry.action == "GET /v1/invoices/{invoice_id}"
    assert entry.detail is not None and entry.detail["status"] == 200 and entry.detail["duration_ms"] >= 0
    assert used is not None and used.last_used_at is not None


def test_loopback_open_allows_local_reads_only(engine: Any) -> None:
    app = create_app(engine, config=CONFIG)  # default: loopback-open on a loopback listen address
    add_invoice(engine)
    assert request(app, "GET", "/v1/stats").status_code == 200
    assert request(app, "GET", "/v1/invoices/inv_1", client="::1").status_code == 200
    assert request(app, "POST", "/v1/invoices/inv_1/approve").status_code == 401
    assert request(app, "GET", "/v1/stats", client="192.0.2.7").status_code == 401
    assert request(app, "GET", "/v1/stats", key="mi_unknown").status_code == 401  # a bad key never passes
    assert auth.effective_mode(ApiConfig(listen="0.0.0.0:8080")) == "required"
    assert auth.effective_mode(ApiConfig(listen="[::1]:8080")) == "loopback-open"
    assert auth.effective_mode(ApiConfig(auth="required")) == "required"


def test_approve_is_transactional_and_idempotent(engine: Any) -> None:
    app = required_app(engine)
    key_id, key = make_key(engine, "invoices:approve", "invoices:read")
    add_invoice(engine, status="needs_review")
    headers = {"Idempotency-Key": "req-1"}
    first = request(
        app, "POST", "/v1/invoices/inv_1/approve", key=key, headers=headers, json={"comment": "checked"}
    )
    assert first.status_code == 200 and first.json()["status"] == "approved"
    again = request(
        app, "POST", "/v1/invoices/inv_1/approve", key=key, headers=headers, json={"comment": "checked"}
    )
    assert again.status_code == 200 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    reused = request(app, "POST", "/v1/invoices/inv_1/reject", key=key, headers=headers)
    assert reused.status_code == 422

    with Session(engine) as s:
        invoice = s.get(tables.Invoice, "inv_1")
        events = s.exec(select(tables.Event).where(tables.Event.type == "invoice.approved")).all()
        deliveries = s.exec(select(tables.Delivery)).all()
        approvals = s.exec(select(tables.AuditLog).where(tables.AuditLog.action == "invoice.approved")).all()
    assert invoice is not None and invoice.status == "approved" and invoice.data["status"] == "approved"
    assert len(events) == 1 and events[0].payload["data"]["status"] == "approved"
    assert [d.connector for d in deliveries] == ["erp"]
    assert len(approvals) == 1 and approvals[0].actor == f"api:{key_id}"
    assert approvals[0].detail == {"from": "needs_review", "to": "approved", "comment": "checked"}

    conflict = request(app, "POST", "/v1/invoices/inv_1/reject", key=key)
    assert conflict.status_code == 409 and conflict.headers["content-type"] == "application/problem+json"
    assert request(app, "POST", "/v1/invoices/inv_1/approve", key=key).status_code == 409
    assert request(app, "POST", "/v1/invoices/inv_404/approve", key=key).status_code == 404

    feed = request(app, "GET", "/v1/events?limit=1", key=key).json()
    assert feed["data"][0]["type"] == "invoice.approved" and feed["has_more"] is False
    after = request(app, "GET", f"/v1/events?starting_after={feed['data'][0]['id']}", key=key).json()
    assert after == {"data": [], "has_more": False}
    assert request(app, "GET", "/v1/events?starting_after=evt_nope", key=key).status_code == 404


def test_metrics_are_prometheus_text(engine: Any) -> None:
    app = required_app(engine)
    add_invoice(engine)
    response = request(app, "GET", "/metrics")  # open, like /healthz
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    body = response.text
    assert 'mailingest_invoices{status="validated"} 1.0' in body
    assert 'mailingest_messages{status="processed"} 1.0' in body
    for name in ("mailingest_documents", "mailingest_deliveries", "mailingest_database_up 1.0"):
        assert name in body
    assert "process_cpu_seconds_total" in body


def test_cli_api_key_create_list_revoke(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    config = tmp_path / "config.toml"
    config.write_text(f'data_dir = "{tmp_path}"\n[storage]\nurl = "{url}"\n')
    base = ["api-key"]
    assert cli.main([*base, "create", "--name", "ci", "--scopes", "analytics:read", "-c", str(config)]) == 0
    out = capsys.readouterr()
    key = out.out.strip()
    assert key.startswith("mi_") and "\n" not in key and key not in out.err

    engine = db.make_engine(url)
    app = required_app(engine)
    assert request(app, "GET", "/v1/stats", key=key).status_code == 200

    assert cli.main([*base, "list", "-c", str(config)]) == 0
    listed = capsys.readouterr().out
    assert key not in listed and key[:8] in listed and "key_hash" not in listed
    with Session(engine) as s:
        key_id = s.exec(select(tables.ApiKey.id).order_by(col(tables.ApiKey.id))).one()
    assert cli.main([*base, "revoke", key_id, "-c", str(config)]) == 0
    assert request(app, "GET", "/v1/stats", key=key).status_code == 401
    assert cli.main([*base, "revoke", "key_missing", "-c", str(config)]) == 1
    with pytest.raises(SystemExit) as exc:
        cli.main([*base, "create", "--name", "x", "--scopes", "invoices:everything", "-c", str(config)])
    assert exc.value.code == 2
    engine.dispose()
