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


# --- retries, circuit breaking, isolation, rotation, thin payloads, routing -------------------


def hook(name: str, url: str, **kw) -> WebhookConnector:  # type: ignore[no-untyped-def]
    return WebhookConnector(
        WebhookConfig(name=name, url=url, secret=Secret(env="T_SECRET"), allow_private_network=True, **kw)
    )


def test_receiver_failing_three_times_then_recovering_gets_it_once(
    db_url, webhook_receiver, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("T_SECRET", WEBHOOK_SECRET)
    engine = db.make_engine(db_url)
    db.upgrade(engine)
    dispatcher = Dispatcher(
        engine, {"erp": hook("erp", webhook_receiver.url)}, schedule=[0, 0.1, 0.1, 0.1, 0.1]
    )
    webhook_receiver.responses = [(500, {}), (502, {}), (503, {})]
    event_id = add(engine, "invoice.extracted", "inv_1", 1)
    drain(dispatcher, 2)
    assert [r.headers["webhook-id"] for r in webhook_receiver.requests] == [event_id] * 4
    assert [r.headers["webhook-id"] for r in webhook_receiver.accepted()] == [event_id]
    with db.session_scope(engine) as s:
        attempts = s.exec(select(tables.DeliveryAttempt).order_by(tables.DeliveryAttempt.number)).all()
        assert [(a.number, a.outcome, a.status_code) for a in attempts] == [
            (1, "retry", 500),
            (2, "retry", 502),
            (3, "retry", 503),
            (4, "delivered", 200),
        ]
        assert all(a.duration_ms > 0 and a.response_excerpt == "ok" for a in attempts)
        state = s.get(tables.ConnectorState, "erp")
        assert state is not None and state.consecutive_failures == 0 and state.circuit_open_until is None
    dispatcher.close()


def wait_closed_or_half_open(dispatcher: Dispatcher) -> None:
    deadline = time.monotonic() + 5
    while dispatcher.circuits()["erp"] == "open" and time.monotonic() < deadline:
        time.sleep(0.05)


def test_circuit_opens_after_consecutive_failures_then_a_probe_closes_it(
    db_url, webhook_receiver, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("T_SECRET", WEBHOOK_SECRET)
    engine = db.make_engine(db_url)
    db.upgrade(engine)
    erp = hook("erp", webhook_receiver.url, circuit_failures=3, circuit_cooldown=1.0)
    dispatcher = Dispatcher(engine, {"erp": erp}, schedule=[0] + [0.05] * 20)
    webhook_receiver.responses = [(500, {})] * 4
    for n in range(3):
        add(engine, "invoice.extracted", f"inv_{n}", n)
    drain(dispatcher, 0.6)
    # three failures open the circuit: no more attempts during the cool-down, nothing spent
    assert len(webhook_receiver.requests) == 3
    assert dispatcher.circuits() == {"erp": "open"}
    with db.session_scope(engine) as s:
        state = s.get(tables.ConnectorState, "erp")
        assert state is not None and state.consecutive_failures == 3 and state.circuit_open_until is not None
        assert {d.status for d in s.exec(select(tables.Delivery))} == {"pending"}
    wait_closed_or_half_open(dispatcher)
    assert dispatcher.circuits() == {"erp": "half_open"}
    # half-open: exactly one probe; it fails (the 4th scripted 500), so the circuit opens again
    assert dispatcher.run_once() == 1
    assert dispatcher.circuits() == {"erp": "open"}
    assert dispatcher.run_once() == 0 and len(webhook_receiver.requests) == 4
    wait_closed_or_half_open(dispatcher)
    assert dispatcher.run_once() == 1  # the probe succeeds: the circuit closes, the rest follow
    drain(dispatcher, 0.5)
    assert sorted(r.json["data"]["n"] for r in webhook_receiver.accepted()) == [0, 1, 2]
    assert dispatcher.circuits() == {"erp": "closed"}
    dispatcher.close()


def test_one_endpoint_down_does_not_delay_the_others(tmp_path, webhook_receiver, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import socket
    import threading

    monkeypatch.setenv("T_SECRET", WEBHOOK_SECRET)
    engine = db.make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    db.upgrade(engine)
    # a black hole: accepts connections (the kernel backlog) but never answers
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)
    dead = hook("stuck", f"http://127.0.0.1:{hole.getsockname()[1]}/hook", timeout=3.0)
    dispatcher = Dispatcher(
        engine, {"stuck": dead, "erp": hook("erp", webhook_receiver.url)}, schedule=[0, 1], concurrency=2
    )
    thread = threading.Thread(target=dispatcher.run_forever, daemon=True)
    thread.start()
    started = time.monotonic()
    for n in range(6):
        with db.session_scope(engine) as s:
            repo.add_event(
                s,
                type="invoice.extracted",
                subject_id=f"inv_{n}",
                data={"n": n},
                connectors=[("stuck", ["*"]), ("erp", ["*"])],
            )
        dispatcher.wake.set()
    webhook_receiver.wait_for(lambda got: len(got) == 6, timeout=10)
    assert time.monotonic() - started < 2.0  # the stuck endpoint's 3 s timeouts held nothing up
    dispatcher.stop()
    thread.join(10)
    dispatcher.close()
    hole.close()


def test_secret_rotation_signs_with_both_and_either_verifies(tmp_path, webhook_receiver, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from mailingest.connectors.webhook import new_secret

    old, new = new_secret(), new_secret()
    monkeypatch.setenv("OLD", old)
    monkeypatch.setenv("NEW", new)
    engine = db.make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    db.upgrade(engine)
    rotating = WebhookConnector(
        WebhookConfig(
            name="erp",
            url=webhook_receiver.url,
            secrets=[Secret(env="NEW"), Secret(env="OLD")],
            allow_private_network=True,
        )
    )
    pair = WebhookConnector(
        WebhookConfig(
            name="crm",
            url=webhook_receiver.url,
            secret=Secret(env="NEW"),
            previous_secret=Secret(env="OLD"),
            allow_private_network=True,
        )
    )
    dispatcher = Dispatcher(engine, {"erp": rotating, "crm": pair}, schedule=[0])
    with db.session_scope(engine) as s:
        repo.add_event(
            s,
            type="invoice.extracted",
            subject_id="inv_1",
            data={"n": 1},
            connectors=[("erp", ["*"]), ("crm", ["*"])],
        )
    dispatcher.run_once()
    assert len(webhook_receiver.accepted()) == 2
    for request in webhook_receiver.accepted():
        assert len(request.headers["webhook-signature"].split(" ")) == 2
        assert verify(new, request.headers, request.body)  # receivers already on the new secret
        assert verify(old, request.headers, request.body)  # receivers still on the old one
        assert not verify(new_secret(), request.headers, request.body)
    dispatcher.close()


def test_secret_settings_are_checked_at_load() -> None:
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="either secret"):
        WebhookConfig(name="x", url="https://x.example/", secrets=[Secret(env="A")], secret=Secret(env="B"))
    with pytest.raises(ValidationError, match="either secret"):
        WebhookConfig(name="x", url="https://x.example/")
    with pytest.raises(ValidationError, match="previous_secret goes with secret"):
        WebhookConfig(
            name="x", url="https://x.example/", secrets=[Secret(env="A")], previous_secret=Secret(env="B")
        )


def test_thin_payload_carries_a_reference_not_the_invoice(tmp_path, webhook_receiver, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("T_SECRET", WEBHOOK_SECRET)
    engine = db.make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    db.upgrade(engine)
    thin = hook("thin", webhook_receiver.url, payload="thin", api_url="https://ap.example.com/")
    dispatcher = Dispatcher(engine, {"thin": thin}, schedule=[0])
    invoice = {"id": "inv_7", "type": "invoice", "status": "validated", "number": "42", "lines": [{"x": 1}]}
    with db.session_scope(engine) as s:
        repo.add_event(
            s, type="invoice.validated", subject_id="inv_7", data=invoice, connectors=[("thin", ["*"])]
        )
        repo.add_event(
            s,
            type="document.received",
            subject_id="doc_1",
            data={"id": "doc_1"},
            connectors=[("thin", ["*"])],
        )
    dispatcher.run_once()
    dispatcher.run_once()
    got = {r.json["type"]: r for r in webhook_receiver.accepted()}
    assert got["invoice.validated"].json["data"] == {
        "id": "inv_7",
        "type": "invoice",
        "status": "validated",
        "links": {"invoice": "https://ap.example.com/v1/invoices/inv_7"},
    }
    assert verify(WEBHOOK_SECRET, got["invoice.validated"].headers, got["invoice.validated"].body)
    assert got["document.received"].json["data"] == {"id": "doc_1"}  # only invoice events are thinned
    dispatcher.close()


def test_routed_only_connectors_get_only_invoices_routed_to_them(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from mailingest.config import load_config
    from mailingest.connectors.registry import subscriptions

    config_path = tmp_path / "config.toml"
    config_path.write_text(
        """
[[connectors.webhook]]
name = "everything"
url = "https://a.example/hook"
secret = { env = "S" }

[[connectors.webhook]]
name = "erp"
url = "https://b.example/hook"
secret = { env = "S" }
routed_only = true
"""
    )
    subs = subscriptions(load_config(config_path, environ={}))
    engine = db.make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    db.upgrade(engine)
    with db.session_scope(engine) as s:
        repo.add_event(
            s,
            type="invoice.extracted",
            subject_id="inv_1",
            data={"id": "inv_1", "deliver_to": ["erp"]},
            connectors=subs,
        )
        repo.add_event(
            s,
            type="invoice.extracted",
            subject_id="inv_2",
            data={"id": "inv_2", "deliver_to": []},
            connectors=subs,
        )
        repo.add_event(s, type="invoice.extracted", subject_id="inv_3", data={"id": "inv_3"}, connectors=subs)
        repo.add_event(s, type="document.received", subject_id="doc_1", data={"id": "doc_1"}, connectors=subs)
    with db.session_scope(engine) as s:
        got = sorted((d.connector, d.subject_id) for d in s.exec(select(tables.Delivery)))
    assert got == [
        ("erp", "doc_1"),  # not an invoice event: the ordinary event filter decides
        ("erp", "inv_1"),
        ("everything", "doc_1"),
        ("everything", "inv_1"),
        ("everything", "inv_2"),
        ("everything", "inv_3"),
    ]
