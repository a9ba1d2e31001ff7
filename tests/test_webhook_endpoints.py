"""Webhook endpoints managed through the API (``/v1/webhook-endpoints``).

The end-to-end test runs the real daemon: an endpoint created through the API receives signed
events for mail sent over SMTP without a restart, a rotation signs with both secrets, PATCH
changes what it gets, disabling and deleting stop deliveries (pending ones are dead-lettered),
and ``/metrics`` shows its circuit. The others drive the ASGI app: the SSRF guard, scopes,
idempotent create, If-Match, name clashes.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session, select

from mailingest.api.app import create_app
from mailingest.config import Config
from mailingest.connectors.webhook import verify
from mailingest.storage import db, tables
from tests.conftest import FIXTURES, DaemonProcess, WebhookReceiver
from tests.test_api import make_key, request
from tests.test_e2e import invoice_mail, send

UBL = FIXTURES / "einvoice" / "xrechnung-testsuite__business-cases__standard__01.01a-INVOICE_ubl.xml"
CII = FIXTURES / "einvoice" / "en16931__cii__examples__CII_business_example_01.xml"
UBL2 = FIXTURES / "einvoice" / "akretion-facturx__xml__ubl-21-en16931.xml"


def mail(path: Path) -> bytes:
    return invoice_mail((path.name, path.read_bytes(), "application/xml"), subject=f"Invoice {path.stem}")


def api_key(daemon: DaemonProcess, scopes: str) -> str:
    argv = ["api-key", "create", "--name", "t", "--scopes", scopes, "-c", str(daemon.config_path)]
    created = subprocess.run(
        [sys.executable, "-m", "mailingest", *argv],
        capture_output=True,
        text=True,
        check=True,
        env=daemon.env,
        cwd=daemon.workdir,
    )
    return created.stdout.strip()


def wait(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not met in {timeout}s")


def test_endpoint_created_through_the_api_gets_signed_events_without_a_restart(
    make_daemon: Callable[..., DaemonProcess], webhook_receiver: WebhookReceiver
) -> None:
    daemon = make_daemon()  # no webhook in the config file at all
    text = daemon.config_path.read_text()
    daemon.config_path.write_text(text.replace("[api]\n", "[api]\nallow_private_webhooks = true\n", 1))
    key = api_key(daemon, "webhooks:manage,invoices:read")
    daemon.start()
    client = httpx.Client(base_url=daemon.api, headers={"Authorization": f"Bearer {key}"}, timeout=10)

    body = {"name": "erp", "url": webhook_receiver.url, "events": ["invoice.*"], "description": "ERP"}
    created = client.post("/v1/webhook-endpoints", json=body, headers={"Idempotency-Key": "create-erp"})
    assert created.status_code == 201, created.text
    endpoint = created.json()
    secret = endpoint["secret"]
    assert endpoint["id"].startswith("whe_") and secret.startswith("whsec_")
    again = client.post("/v1/webhook-endpoints", json=body, headers={"Idempotency-Key": "create-erp"})
    assert again.json() == endpoint and again.headers["idempotent-replayed"] == "true"
    shown = client.get(f"/v1/webhook-endpoints/{endpoint['id']}")
    assert shown.status_code == 200 and "secret" not in shown.json()
    assert all("secret" not in e for e in client.get("/v1/webhook-endpoints").json()["data"])
    listed = {c["name"]: c for c in client.get("/v1/connectors").json()["data"]}
    assert listed[body["name"]]["kind"] == "webhook_endpoint"

    # a mail arrives: the endpoint gets its invoice events, signed with the secret from creation
    send(daemon.smtp_port, mail(UBL))
    got = webhook_receiver.wait_for(lambda rs: any(r.json["type"] == "invoice.extracted" for r in rs))
    assert {r.json["type"].split(".")[0] for r in got} == {"invoice"}  # its event filter
    for r in got:
        assert verify(secret, r.headers, r.body)
        assert len(r.headers["webhook-signature"].split()) == 1

    # rotation: the new secret is shown once; during the overlap both sign every request
    rotated = client.post(f"/v1/webhook-endpoints/{endpoint['id']}/rotate-secret", json={})
    assert rotated.status_code == 200, rotated.text
    new_secret = rotated.json()["secret"]
    assert new_secret != secret and rotated.json()["previous_secret_expires_at"]
    time.sleep(0.5)  # the dispatcher notices the change at its next round
    ping = client.post(f"/v1/webhook-endpoints/{endpoint['id']}/test")
    assert ping.status_code == 202, ping.text
    [pinged] = webhook_receiver.wait_for(lambda rs: any(r.json["type"] == "connector.test" for r in rs))[-1:]
    assert pinged.json["type"] == "connector.test"
    assert len(pinged.headers["webhook-signature"].split()) == 2
    assert verify(new_secret, pinged.headers, pinged.body) and verify(secret, pinged.headers, pinged.body)

    # PATCH the event filter (If-Match): the next mail brings only document events
    etag = client.get(f"/v1/webhook-endpoints/{endpoint['id']}").headers["etag"]
    assert (
        client.patch(f"/v1/webhook-endpoints/{endpoint['id']}", json={"events": ["x.y"]}).status_code == 428
    )
    patched = client.patch(
        f"/v1/webhook-endpoints/{endpoint['id']}", json={"events": ["document.*"]}, headers={"If-Match": etag}
    )
    assert patched.status_code == 200 and patched.json()["events"] == ["document.*"]
    stale = client.patch(
        f"/v1/webhook-endpoints/{endpoint['id']}", json={"events": ["*"]}, headers={"If-Match": etag}
    )
    assert stale.status_code == 412
    before = len(webhook_receiver.accepted())
    send(daemon.smtp_port, mail(CII))
    later = webhook_receiver.wait_for(lambda rs: len(rs) > before)
    time.sleep(1.0)  # the invoice events of this mail would come right behind
    later = webhook_receiver.accepted()[before:]
    assert later and {r.json["type"].split(".")[0] for r in later} == {"document"}
    assert all(verify(new_secret, r.headers, r.body) for r in later)

    # disabled: no deliveries are even created for it
    etag = patched.headers["etag"]
    off = client.patch(
        f"/v1/webhook-endpoints/{endpoint['id']}", json={"enabled": False}, headers={"If-Match": etag}
    )
    assert off.status_code == 200 and off.json()["enabled"] is False
    owed = len(client.get("/v1/deliveries", params={"connector": "erp", "limit": 200}).json()["data"])
    count = len(webhook_receiver.accepted())
    send(daemon.smtp_port, mail(UBL2))
    daemon.wait_processed(lambda s: s["messages"].get("processed", 0) >= 3)
    time.sleep(1.0)
    assert len(client.get("/v1/deliveries", params={"connector": "erp", "limit": 200}).json()["data"]) == owed
    assert len(webhook_receiver.accepted()) == count

    # enabled again, the receiver answers 503 + Retry-After: the delivery waits, the circuit
    # counts the failure (/metrics), and DELETE dead-letters it with a clear error
    on = client.patch(
        f"/v1/webhook-endpoints/{endpoint['id']}",
        json={"enabled": True},
        headers={"If-Match": off.headers["etag"]},
    )
    assert on.status_code == 200 and on.json()["enabled"] is True
    webhook_receiver.responses.append((503, {"retry-after": "120"}))
    time.sleep(0.5)
    ping = client.post(f"/v1/webhook-endpoints/{endpoint['id']}/test").json()
    wait(
        lambda: client.get(f"/v1/deliveries/{ping['delivery_id']}").json()["attempts"],
        what="the failed attempt recorded",
    )
    metrics = httpx.get(f"{daemon.api}/metrics").text
    assert 'mailingest_connector_consecutive_failures{connector="erp"} 1.0' in metrics
    assert 'mailingest_connector_circuit_open{connector="erp"} 0.0' in metrics
    assert 'mailingest_connector_disabled{connector="erp"} 0.0' in metrics
    deleted = client.delete(f"/v1/webhook-endpoints/{endpoint['id']}")
    assert deleted.status_code == 200 and deleted.json()["dead_lettered"] == 1
    dead = client.get(f"/v1/deliveries/{ping['delivery_id']}").json()
    assert dead["status"] == "dead" and "was deleted" in dead["last_error"]
    assert client.get(f"/v1/webhook-endpoints/{endpoint['id']}").status_code == 404
    count = len(webhook_receiver.requests)
    send(daemon.smtp_port, mail(UBL))  # a duplicate of the first mail: still events, no endpoint
    daemon.wait_processed(lambda s: sum(s["messages"].values()) >= 4 and not s["messages"].get("received"))
    time.sleep(1.0)
    assert len(webhook_receiver.requests) == count
    assert daemon.stop() == 0


@pytest.fixture
def engine(tmp_path: Path) -> Any:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'api.db'}")
    db.upgrade(engine)
    yield engine
    engine.dispose()


def app_for(engine: Any, tmp_path: Path, **api: Any) -> Any:
    config = Config.model_validate(
        {
            "data_dir": str(tmp_path / "data"),
            "api": api,
            "connectors": {
                "webhook": [{"name": "configured", "url": "https://example.com/h", "secret": {"env": "X"}}]
            },
        }
    )
    return create_app(engine, config=config, auth_mode="required")


def test_ssrf_guard_refuses_private_targets_unless_the_operator_allows_them(
    engine: Any, tmp_path: Path
) -> None:
    _, key = make_key(engine, "webhooks:manage")
    strict = app_for(engine, tmp_path)
    for url in (
        "http://127.0.0.1:9/hook",
        "http://10.1.2.3/hook",
        "http://[::1]/hook",
        "http://169.254.169.254/",
    ):
        refused = request(strict, "POST", "/v1/webhook-endpoints", key=key, json={"name": "a", "url": url})
        assert refused.status_code == 422, (url, refused.text)
        assert "allow_private_webhooks" in refused.json()["detail"]
    with Session(engine) as s:
        assert (
            s.exec(
                select(tables.AuditLog).where(tables.AuditLog.action == "webhook_endpoint.created")
            ).first()
            is None
        )
    made = request(strict, "POST", "/v1/webhook-endpoints", key=key, json={"name": "a", "url": "http://[::1"})
    assert made.status_code == 422  # not a URL at all
    # a name that does not resolve (yet) is accepted: every delivery attempt checks it again
    later = {"name": "later", "url": "https://not-yet.invalid/hook"}
    assert request(strict, "POST", "/v1/webhook-endpoints", key=key, json=later).status_code == 201
    lax = app_for(engine, tmp_path, allow_private_webhooks=True)
    made = request(
        lax, "POST", "/v1/webhook-endpoints", key=key, json={"name": "a", "url": "http://127.0.0.1:9/h"}
    )
    assert made.status_code == 201, made.text
    # a PATCH to a private URL is checked the same way
    etag = request(lax, "GET", f"/v1/webhook-endpoints/{made.json()['id']}", key=key).headers["etag"]
    moved = request(
        strict,
        "PATCH",
        f"/v1/webhook-endpoints/{made.json()['id']}",
        key=key,
        json={"url": "http://192.168.1.1/h"},
        headers={"If-Match": etag},
    )
    assert moved.status_code == 422


def test_scopes_idempotency_and_names(engine: Any, tmp_path: Path) -> None:
    app = app_for(engine, tmp_path, allow_private_webhooks=True)
    _, manager = make_key(engine, "webhooks:manage")
    _, reader = make_key(engine, "invoices:read")
    body = {"name": "erp", "url": "http://127.0.0.1:9/h", "events": ["invoice.approved"]}
    for path, method in (("/v1/webhook-endpoints", "GET"), ("/v1/webhook-endpoints", "POST")):
        assert request(app, method, path, key=reader, json=body).status_code == 403
        assert request(app, method, path, json=body).status_code == 401
    first = request(
        app, "POST", "/v1/webhook-endpoints", key=manager, json=body, headers={"Idempotency-Key": "k1"}
    )
    assert first.status_code == 201
    replay = request(
        app, "POST", "/v1/webhook-endpoints", key=manager, json=body, headers={"Idempotency-Key": "k1"}
    )
    assert replay.json() == first.json() and replay.headers["idempotent-replayed"] == "true"
    other = request(
        app,
        "POST",
        "/v1/webhook-endpoints",
        key=manager,
        json={**body, "name": "x"},
        headers={"Idempotency-Key": "k1"},
    )
    assert other.status_code == 422  # the key was used for another request
    assert request(app, "POST", "/v1/webhook-endpoints", key=manager, json=body).status_code == 409
    clash = request(app, "POST", "/v1/webhook-endpoints", key=manager, json={**body, "name": "configured"})
    assert clash.status_code == 409 and "config" in clash.json()["detail"]
    bad = request(
        app, "POST", "/v1/webhook-endpoints", key=manager, json={**body, "name": "b", "secret": "nope"}
    )
    assert bad.status_code == 422 and "secret" in bad.json()["detail"]
    listed = request(app, "GET", "/v1/webhook-endpoints?limit=1", key=manager).json()
    assert [e["name"] for e in listed["data"]] == ["erp"] and listed["has_more"] is False
    with Session(engine) as s:
        rows = s.exec(
            select(tables.AuditLog).where(tables.AuditLog.action == "webhook_endpoint.created")
        ).all()
    assert len(rows) == 1 and rows[0].subject_id == first.json()["id"]


def test_two_dispatchers_share_api_endpoints_and_a_410_disables_one(
    db_url: str, tmp_path: Path, webhook_receiver: WebhookReceiver
) -> None:
    """Two dispatchers on one database (PostgreSQL: two daemons) build the endpoint's connector
    from the table, deliver every event once and in order per invoice; a 410 disables the
    endpoint (``enabled: false``), PATCH enabled = true brings it back."""
    from mailingest.connectors.dispatcher import Dispatcher
    from mailingest.storage import repo

    engine = db.make_engine(db_url)
    db.upgrade(engine)
    app = app_for(engine, tmp_path, allow_private_webhooks=True)
    _, key = make_key(engine, "webhooks:manage")
    made = request(
        app, "POST", "/v1/webhook-endpoints", key=key, json={"name": "erp", "url": webhook_receiver.url}
    )
    endpoint_id, secret = made.json()["id"], made.json()["secret"]
    one, two = (Dispatcher(engine, {}, schedule=[0, 0.2, 0.2], owner=f"host-{n}") for n in (1, 2))

    def emit(subject: str, n: int) -> str:
        with db.session_scope(engine) as s:
            return repo.add_event(
                s, type="invoice.updated", subject_id=subject, data={"n": n}, connectors=[]
            ).id

    sent = [emit(f"inv_{i % 3}", i) for i in range(9)]
    deadline = time.monotonic() + 30
    while len({r.headers["webhook-id"] for r in webhook_receiver.accepted()}) < len(sent):
        assert time.monotonic() < deadline, "not all delivered"
        one.run_once()
        two.run_once()
    got = webhook_receiver.accepted()
    assert sorted(r.headers["webhook-id"] for r in got) == sorted(sent)  # each once
    assert all(verify(secret, r.headers, r.body) for r in got)
    for subject in ("inv_0", "inv_1", "inv_2"):
        order = [r.json["data"]["n"] for r in got if f"inv_{r.json['data']['n'] % 3}" == subject]
        assert order == sorted(order)

    webhook_receiver.responses.append((410, {}))
    emit("inv_9", 9)
    wait(lambda: one.run_once() + two.run_once() == 0 and not one.connectors and not two.connectors)
    shown = request(app, "GET", f"/v1/webhook-endpoints/{endpoint_id}", key=key)
    assert shown.json()["enabled"] is False and "410" in shown.json()["disabled_reason"]
    with Session(engine) as s:
        disabled = s.exec(select(tables.Event).where(tables.Event.type == "webhook_endpoint.disabled")).one()
        assert disabled.payload["data"]["connector"] == "erp"
    on = request(
        app,
        "PATCH",
        f"/v1/webhook-endpoints/{endpoint_id}",
        key=key,
        json={"enabled": True},
        headers={"If-Match": shown.headers["etag"]},
    )
    assert on.status_code == 200 and on.json()["disabled_reason"] is None
    last = emit("inv_10", 10)
    wait(
        lambda: (
            (one.run_once(), two.run_once())
            and last in {r.headers["webhook-id"] for r in webhook_receiver.accepted()}
        )
    )
    for dispatcher in (one, two):
        dispatcher.close()
    engine.dispose()
