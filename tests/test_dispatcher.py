"""The outbox dispatcher against a real HTTP receiver, on SQLite and PostgreSQL."""

from __future__ import annotations

import time

from sqlmodel import select

from mailingest.config import Secret, WebhookConfig
from mailingest.connectors.dispatcher import Dispatcher
from mailingest.connectors.webhook import WebhookConnector, verify
from mailingest.storage import db, repo, tables
from tests.conftest import WEBHOOK_SECRET, WebhookReceiver


def setup(db_url: str, receiver: WebhookReceiver, monkeypatch) -> tuple:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("T_SECRET", WEBHOOK_SECRET)
    engine = db.make_engine(db_url)
    db.upgrade(engine)
    hook = WebhookConnector(
        WebhookConfig(name="erp", url=receiver.url, secret=Secret(env="T_SECRET"), allow_private_network=True)
    )
    dispatcher = Dispatcher(engine, {"erp": hook}, schedule=[0, 0.2, 0.2])
    return engine, dispatcher


def add(engine, type_: str, subject: str, n: int) -> str:  # type: ignore[no-untyped-def]
    with db.session_scope(engine) as s:
        return repo.add_event(
            s, type=type_, subject_id=subject, data={"n": n}, connectors=[("erp", ["*"])]
        ).id


def drain(dispatcher: Dispatcher, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        dispatcher.run_once()
        time.sleep(0.05)


def test_retry_after_then_success_with_every_attempt_recorded(db_url, webhook_receiver, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    engine, dispatcher = setup(db_url, webhook_receiver, monkeypatch)
    webhook_receiver.responses = [(503, {"Retry-After": "1"})]
    event_id = add(engine, "invoice.extracted", "inv_1", 1)
    started = time.monotonic()
    dispatcher.run_once()
    assert dispatcher.run_once() == 0  # not due yet: Retry-After (1 s) beats the 0.2 s schedule
    while not webhook_receiver.accepted() and time.monotonic() - started < 10:
        dispatcher.run_once()
        time.sleep(0.05)
    assert time.monotonic() - started >= 0.9
    [request] = webhook_receiver.accepted()
    assert request.headers["webhook-id"] == event_id and verify(WEBHOOK_SECRET, request.headers, request.body)
    with db.session_scope(engine) as s:
        attempts = s.exec(select(tables.DeliveryAttempt).order_by(tables.DeliveryAttempt.number)).all()
        assert [(a.outcome, a.status_code) for a in attempts] == [("retry", 503), ("delivered", 200)]
        assert s.exec(select(tables.Delivery)).one().status == "delivered"
    dispatcher.close()


def test_ordering_per_subject_and_dead_letter_after_the_schedule(
    db_url, webhook_receiver, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    engine, dispatcher = setup(db_url, webhook_receiver, monkeypatch)
    webhook_receiver.responses = [(500, {})] * 3
    add(engine, "invoice.extracted", "inv_1", 1)
    add(engine, "invoice.validated", "inv_1", 2)
    drain(dispatcher, 3)
    # the first event died after 3 failed attempts (the whole schedule); only then did the second go out
    assert [r.json["data"]["n"] for r in webhook_receiver.requests] == [1, 1, 1, 2]
    assert [r.json["data"]["n"] for r in webhook_receiver.accepted()] == [2]
    with db.session_scope(engine) as s:
        statuses = [d.status for d in s.exec(select(tables.Delivery).order_by(tables.Delivery.event_seq))]
    assert statuses == ["dead", "delivered"]
    dispatcher.close()


def test_410_disables_the_endpoint_and_says_so(db_url, webhook_receiver, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    engine, dispatcher = setup(db_url, webhook_receiver, monkeypatch)
    webhook_receiver.responses = [(410, {})]
    add(engine, "invoice.extracted", "inv_1", 1)
    drain(dispatcher, 0.5)
    add(engine, "invoice.extracted", "inv_2", 2)
    drain(dispatcher, 0.5)
    assert len(webhook_receiver.requests) == 1  # nothing more is sent to a gone endpoint
    with db.session_scope(engine) as s:
        state = s.get(tables.ConnectorState, "erp")
        assert state is not None and state.disabled_at is not None
        types = [e.type for e in s.exec(select(tables.Event))]
        assert "webhook_endpoint.disabled" in types
        audit = s.exec(select(tables.AuditLog).where(tables.AuditLog.action == "connector.disabled")).all()
        assert len(audit) == 1
    dispatcher.close()
    # a restart remembers it
    _, again = setup(db_url, webhook_receiver, monkeypatch)
    assert again.connectors == {}
    again.close()
