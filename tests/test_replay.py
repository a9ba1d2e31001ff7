"""Manual replay and the deliveries/connectors API: dead deliveries go out again with the same
webhook-id, by event, by invoice or by time range, from the CLI and from the REST API."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select

from mailingest.api import auth
from mailingest.api.app import create_app
from mailingest.cli import main
from mailingest.config import load_config
from mailingest.connectors.dispatcher import Dispatcher
from mailingest.connectors.registry import build_connectors, subscriptions
from mailingest.storage import db, repo, tables
from mailingest.storage.tables import utcnow
from tests.conftest import WEBHOOK_SECRET, WebhookReceiver


@pytest.fixture
def setup(db_url: str, tmp_path: Path, webhook_receiver: WebhookReceiver, monkeypatch: Any) -> Any:
    monkeypatch.setenv("T_SECRET", WEBHOOK_SECRET)
    config_path = tmp_path / "config.toml"
    config_path.write_text(
        f"""
data_dir = "{tmp_path / "data"}"

[storage]
url = "{db_url}"

[outbox]
retry_schedule = ["0s", "0s"]

[[connectors.webhook]]
name = "erp"
url = "{webhook_receiver.url}"
secret = {{ env = "T_SECRET" }}
allow_private_network = true

[[connectors.webhook]]
name = "crm"
url = "{webhook_receiver.url}"
secret = {{ env = "T_SECRET" }}
allow_private_network = true
events = ["invoice.*"]
"""
    )
    config = load_config(config_path)
    engine = db.make_engine(config.storage_url)
    db.upgrade(engine)
    yield config_path, config, engine
    engine.dispose()


def emit(engine: Any, config: Any, type_: str, invoice: str) -> str:
    with db.session_scope(engine) as s:
        return repo.add_event(
            s, type=type_, subject_id=invoice, data={"id": invoice}, connectors=subscriptions(config)
        ).id


def dispatch(engine: Any, config: Any) -> None:
    dispatcher = Dispatcher(engine, build_connectors(config), schedule=config.outbox.retry_schedule)
    while dispatcher.run_once():
        pass
    dispatcher.close()


def cli(capsys: Any, *args: str) -> tuple[int, list[dict[str, Any]], str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines() if line.startswith("{")], err


def test_cli_lists_dead_deliveries_and_replays_them_with_the_same_webhook_id(
    setup: Any, webhook_receiver: WebhookReceiver, capsys: Any
) -> None:
    config_path, config, engine = setup
    webhook_receiver.responses = [(500, {})] * 6  # both tries of all three deliveries fail
    first = emit(engine, config, "invoice.extracted", "inv_1")
    second = emit(engine, config, "document.received", "doc_1")
    dispatch(engine, config)
    code, dead, _ = cli(capsys, "deliveries", "list", "--status", "dead", "--config", str(config_path))
    assert code == 0
    assert sorted((d["event_id"], d["connector"]) for d in dead) == sorted(
        [(first, "erp"), (first, "crm"), (second, "erp")]
    )
    assert all(d["attempts"] == 2 and "HTTP 500" in d["last_error"] for d in dead)

    code, replayed, err = cli(
        capsys, "deliveries", "replay", "--invoice", "inv_1", "--connector", "erp", "-c", str(config_path)
    )
    assert code == 0 and [r["event_id"] for r in replayed] == [first] and "replaying 1" in err
    dispatch(engine, config)
    assert [r.headers["webhook-id"] for r in webhook_receiver.accepted()] == [first]

    code, replayed, _ = cli(capsys, "deliveries", "replay", "--event", second, "-c", str(config_path))
    assert code == 0 and len(replayed) == 1
    dispatch(engine, config)
    assert [r.headers["webhook-id"] for r in webhook_receiver.accepted()] == [first, second]

    # the delivery keeps its whole history: two failures, the replay, the success
    code, [listed], _ = cli(
        capsys, "deliveries", "list", "--event", first, "--connector", "erp", "-c", str(config_path)
    )
    assert code == 0 and listed["status"] == "delivered" and listed["replays"] == 1
    delivery_id = listed["id"]
    assert main(["deliveries", "show", delivery_id, "-c", str(config_path)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "delivered" and shown["replays"] == 1
    assert [(a["number"], a["outcome"]) for a in shown["attempts"]] == [
        (1, "retry"),
        (2, "dead"),
        (3, "delivered"),
    ]
    # nothing matches: exit 1; no selector: usage error
    code, _, err = cli(capsys, "deliveries", "replay", "--invoice", "inv_none", "-c", str(config_path))
    assert code == 1 and "replaying 0" in err
    with pytest.raises(SystemExit) as usage:
        main(["deliveries", "replay", "-c", str(config_path)])
    assert usage.value.code == 2


def test_cli_replays_a_time_range_and_delivered_ones_too(
    setup: Any, webhook_receiver: WebhookReceiver, capsys: Any
) -> None:
    config_path, config, engine = setup
    old = emit(engine, config, "invoice.extracted", "inv_old")
    with db.session_scope(engine) as s:  # make it a day old
        event = s.exec(select(tables.Event).where(tables.Event.id == old)).one()
        event.created_at = utcnow() - timedelta(days=1)
        s.add(event)
    recent = emit(engine, config, "invoice.extracted", "inv_new")
    dispatch(engine, config)
    assert len(webhook_receiver.accepted()) == 4  # both events to erp and crm
    code, replayed, _ = cli(
        capsys, "deliveries", "replay", "--since", "2h", "--connector", "crm", "-c", str(config_path)
    )
    assert code == 0 and [r["event_id"] for r in replayed] == [recent]
    since = (utcnow() - timedelta(days=2)).isoformat()
    until = (utcnow() - timedelta(hours=12)).isoformat()
    code, replayed, _ = cli(
        capsys, "deliveries", "replay", "--since", since, "--until", until, "-c", str(config_path)
    )
    assert code == 0 and sorted(r["connector"] for r in replayed) == ["crm", "erp"]
    assert {r["event_id"] for r in replayed} == {old}
    dispatch(engine, config)
    ids = [r.headers["webhook-id"] for r in webhook_receiver.accepted()]
    assert ids.count(recent) == 3 and ids.count(old) == 4  # same ids: receivers can de-duplicate


def call(app: Any, method: str, path: str, key: str, **kw: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
            headers = {"Authorization": f"Bearer {key}", **kw.pop("headers", {})}
            return await c.request(method, path, headers=headers, **kw)

    return asyncio.run(go())


def test_api_lists_shows_and_replays_deliveries_and_tests_connectors(
    setup: Any, webhook_receiver: WebhookReceiver
) -> None:
    _, config, engine = setup
    with db.session_scope(engine) as s:
        _, manager = auth.create_key(s, name="ops", scopes=["webhooks:manage"])
        _, reader = auth.create_key(s, name="bi", scopes=["invoices:read"])
    app = create_app(engine, config=config, auth_mode="required")
    webhook_receiver.responses = [(500, {})] * 4
    event_id = emit(engine, config, "invoice.extracted", "inv_1")
    dispatch(engine, config)

    assert call(app, "GET", "/v1/deliveries", reader).status_code == 403
    listed = call(app, "GET", "/v1/deliveries?status=dead&connector=erp", manager).json()
    [dead] = listed["data"]
    assert dead["event_id"] == event_id and listed["has_more"] is False
    shown = call(app, "GET", f"/v1/deliveries/{dead['id']}", manager).json()
    assert [(a["outcome"], a["status_code"]) for a in shown["attempts"]] == [("retry", 500), ("dead", 500)]
    assert call(app, "GET", "/v1/deliveries/dlv_nope", manager).status_code == 404

    connectors = {c["name"]: c for c in call(app, "GET", "/v1/connectors", manager).json()["data"]}
    assert connectors["erp"]["deliveries"] == {"dead": 1} and connectors["erp"]["circuit"] == "closed"
    assert connectors["erp"]["consecutive_failures"] == 2 and connectors["crm"]["events"] == ["invoice.*"]

    body = {"invoice_id": "inv_1", "status": "dead"}
    first = call(app, "POST", "/v1/deliveries/replay", manager, json=body, headers={"Idempotency-Key": "k1"})
    again = call(app, "POST", "/v1/deliveries/replay", manager, json=body, headers={"Idempotency-Key": "k1"})
    assert first.status_code == 200 and first.json()["replayed"] == 2
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert call(app, "POST", "/v1/deliveries/replay", manager, json={}).status_code == 422
    dispatch(engine, config)
    assert sorted(r.headers["webhook-id"] for r in webhook_receiver.accepted()) == [event_id, event_id]
    with db.session_scope(engine) as s:
        assert {d.replays for d in s.exec(select(tables.Delivery))} == {1}  # the repeat changed nothing

    ping = call(app, "POST", "/v1/connectors/crm/test", manager)
    assert ping.status_code == 202
    assert call(app, "POST", "/v1/connectors/nope/test", manager).status_code == 404
    dispatch(engine, config)
    [test_event] = [r for r in webhook_receiver.accepted() if r.json["type"] == "connector.test"]
    assert test_event.headers["webhook-id"] == ping.json()["event_id"]
    assert (
        call(app, "GET", f"/v1/deliveries/{ping.json()['delivery_id']}", manager).json()["status"]
        == "delivered"
    )


def test_a_connector_disabled_by_410_is_reported_and_can_be_enabled_again(
    setup: Any, webhook_receiver: WebhookReceiver, capsys: Any
) -> None:
    config_path, config, engine = setup
    with db.session_scope(engine) as s:
        _, manager = auth.create_key(s, name="ops", scopes=["webhooks:manage"])
    app = create_app(engine, config=config, auth_mode="required")
    webhook_receiver.responses = [(410, {})]
    event_id = emit(engine, config, "document.received", "doc_1")  # erp only: crm takes invoice.*
    dispatch(engine, config)
    connectors = {c["name"]: c for c in call(app, "GET", "/v1/connectors", manager).json()["data"]}
    assert connectors["erp"]["disabled"] and "410" in connectors["erp"]["disabled_reason"]

    replay = call(app, "POST", "/v1/deliveries/replay", manager, json={"event_id": event_id})
    assert replay.json()["replayed"] == 1 and replay.json()["disabled_connectors"] == ["erp"]
    assert call(app, "POST", "/v1/connectors/crm/enable", manager).status_code == 409
    code, _, err = cli(capsys, "deliveries", "enable", "erp", "-c", str(config_path))
    assert code == 0 and "restart" in err
    assert call(app, "POST", "/v1/connectors/erp/enable", manager).status_code == 409  # already enabled
    dispatch(engine, config)  # "the restart": the replayed delivery goes out now
    assert [r.headers["webhook-id"] for r in webhook_receiver.accepted()] == [event_id]
