"""The ERP-shaped HTTP connector against real HTTP servers on loopback: a fake Odoo (JSON-2 API)
and a fake ERPNext (Frappe REST) that check the documented request shapes and keep records, an
OAuth2 token endpoint, the real outbox dispatcher and the real daemon."""

from __future__ import annotations

import base64
import json
import smtplib
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from sqlmodel import col, select

from mailingest.config import HttpConfig, load_config
from mailingest.config_base import Secret
from mailingest.connectors.dispatcher import Dispatcher
from mailingest.connectors.http import HttpConnector, template_context
from mailingest.connectors.registry import build_connectors
from mailingest.errors import ConfigError, DeliveryError, PermanentDeliveryError
from mailingest.storage import db, repo, tables
from tests.conftest import FIXTURES, WebhookReceiver
from tests.http_fakes import Call, FakeApi, FakeErpNext, FakeOdoo, Reply


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[Call], Reply]], FakeApi]]:
    started: list[FakeApi] = []

    def start(route: Callable[[Call], Reply]) -> FakeApi:
        api = FakeApi(route).start()
        started.append(api)
        return api

    yield start
    for api in started:
        api.stop()


# ------------------------------------------------------------------------------------ helpers


def invoice(number: str = "INV-2024-001", **extra: Any) -> dict[str, Any]:
    data = {
        "id": f"inv_{number}",
        "type": "invoice",
        "number": number,
        "issue_date": "2024-03-01",
        "due_date": "2024-03-31",
        "currency": "EUR",
        "seller": {"name": "ACME Büro GmbH", "vat_id": "DE123456789"},
        "totals": {"tax_exclusive": "100.00", "tax_total": "19.00", "amount_due": "119.00"},
        "lines": [
            {"quantity": "2", "net_amount": "80.00", "price": {"net": "40.00"}, "item": {"name": "Paper A4"}},
            {
                "quantity": "1",
                "net_amount": "20.00",
                "item": {"name": "Toner", "description": "Toner black"},
                "coding": {"gl_account": "6815 - Office - AC"},
            },
        ],
        "status": "validated",
    }
    return {"type": "invoice.validated", "timestamp": "2024-03-02T10:00:00Z", "data": data | extra}


def http_config(**values: Any) -> HttpConfig:
    return HttpConfig.model_validate({"name": "erp", "allow_private_network": True, **values})


# -------------------------------------------------------------------------------------- Odoo


def test_odoo_mapping_creates_one_vendor_bill_in_the_documented_shape(serve, monkeypatch) -> None:
    monkeypatch.setenv("ODOO_KEY", "6578616d706c65206a736f6e")
    odoo = FakeOdoo("6578616d706c65206a736f6e")
    api = serve(odoo.route)
    connector = HttpConnector(
        http_config(
            mapping="odoo",
            base_url=api.url,
            auth={"type": "bearer", "token": {"env": "ODOO_KEY"}, "scheme": "bearer"},
            vars={"database": "mycompany", "journal_id": 2},
        )
    )
    done = connector.deliver("evt_1", invoice())
    assert done.status_code == 200 and done.response_excerpt == "[1]"
    [bill] = odoo.moves.values()
    assert bill["move_type"] == "in_invoice" and bill["ref"] == "INV-2024-001"
    assert (bill["invoice_date"], bill["invoice_date_due"]) == ("2024-03-01", "2024-03-31")
    assert bill["currency_id"] == 1 and bill["journal_id"] == 2
    assert odoo.partners[bill["partner_id"]] == {
        "name": "ACME Büro GmbH",
        "vat": "DE123456789",
        "is_company": True,
    }
    assert bill["invoice_line_ids"] == [
        [0, 0, {"name": "Paper A4", "quantity": 2, "price_unit": 40}],
        [0, 0, {"name": "Toner", "quantity": 1, "price_unit": 20}],
    ]
    assert [c.path for c in api.calls] == [
        "/json/2/res.partner/search",
        "/json/2/res.partner/create",
        "/json/2/res.currency/search",
        "/json/2/account.move/search",
        "/json/2/account.move/create",
    ]
    assert all(c.headers["x-odoo-database"] == "mycompany" for c in api.calls)
    assert all(c.headers["user-agent"].startswith("mailingest/") for c in api.calls)

    # a redelivery of the same event finds the bill by ref and creates nothing
    again = connector.deliver("evt_1", invoice())
    assert again.response_excerpt is not None and again.response_excerpt.startswith(
        "already present (existing)"
    )
    assert len(odoo.moves) == 1 and len(odoo.partners) == 1

    # another bill of the same supplier reuses the partner; a credit note becomes in_refund
    connector.deliver("evt_2", invoice("CN-7", type="credit_note"))
    assert len(odoo.partners) == 1
    assert [(m["move_type"], m["ref"]) for m in odoo.moves.values()] == [
        ("in_invoice", "INV-2024-001"),
        ("in_refund", "CN-7"),
    ]
    connector.close()


def test_odoo_without_lines_vat_or_due_date_still_sends_a_valid_bill(serve, monkeypatch) -> None:
    monkeypatch.setenv("ODOO_KEY", "k")
    odoo = FakeOdoo("k")
    api = serve(odoo.route)
    connector = HttpConnector(
        http_config(mapping="odoo", base_url=api.url, auth={"type": "bearer", "token": {"env": "ODOO_KEY"}})
    )
    payload = invoice("X-1", lines=[], due_date=None, currency="CHF", seller={"name": "Solo Trader"})
    connector.deliver("evt_9", payload)
    [bill] = odoo.moves.values()
    assert "invoice_date_due" not in bill and "currency_id" not in bill  # CHF is not in this database
    assert bill["invoice_line_ids"] == [[0, 0, {"name": "Invoice X-1", "quantity": 1, "price_unit": 100}]]
    assert api.calls[0].json == {"domain": [["name", "=", "Solo Trader"]], "limit": 1}
    assert "x-odoo-database" not in api.calls[0].headers  # an unset optional header is left out


# ----------------------------------------------------------------------------------- ERPNext


def test_erpnext_mapping_creates_one_purchase_invoice_in_the_documented_shape(serve, monkeypatch) -> None:
    monkeypatch.setenv("ERP_TOKEN", "1a2b3c:4d5e6f")
    erp = FakeErpNext("1a2b3c:4d5e6f")
    api = serve(erp.route)
    connector = HttpConnector(
        http_config(
            mapping="erpnext",
            base_url=api.url,
            auth={"type": "bearer", "scheme": "token", "token": {"env": "ERP_TOKEN"}},
            vars={"company": "Buyer GmbH", "expense_account": "5000 - Cost - AC"},
        )
    )
    done = connector.deliver("evt_1", invoice())
    assert done.status_code == 200 and "ACC-PINV-2024-00001" in (done.response_excerpt or "")
    [doc] = erp.invoices.values()
    assert erp.suppliers == {"ACME Büro GmbH": {"tax_id": "DE123456789", "supplier_name": "ACME Büro GmbH"}}
    assert {
        k: doc[k] for k in ("supplier", "bill_no", "bill_date", "posting_date", "due_date", "currency")
    } == {
        "supplier": "ACME Büro GmbH",
        "bill_no": "INV-2024-001",
        "bill_date": "2024-03-01",
        "posting_date": "2024-03-01",
        "due_date": "2024-03-31",
        "currency": "EUR",
    }
    assert doc["is_return"] == 0 and doc["company"] == "Buyer GmbH"
    assert [(i["item_name"], i["qty"], i["rate"], i["expense_account"]) for i in doc["items"]] == [
        ("Paper A4", 2, 40, "5000 - Cost - AC"),
        ("Toner", 1, 20, "6815 - Office - AC"),  # the line's GL account from the rules wins
    ]
    assert [(c.method, c.path) for c in api.calls] == [
        ("GET", "/api/resource/Supplier"),
        ("POST", "/api/resource/Supplier"),
        ("GET", "/api/resource/Purchase Invoice"),
        ("POST", "/api/resource/Purchase Invoice"),
    ]
    assert json.loads(api.calls[2].query["filters"][0]) == [
        ["bill_no", "=", "INV-2024-001"],
        ["supplier", "=", "ACME Büro GmbH"],
    ]

    connector.deliver("evt_1", invoice())  # redelivery: found by bill_no + supplier, nothing created
    assert len(erp.invoices) == 1 and len(erp.suppliers) == 1
    connector.deliver("evt_2", invoice("CN-1", type="credit_note"))
    credit = erp.invoices["ACC-PINV-2024-00002"]
    assert credit["is_return"] == 1 and [i["qty"] for i in credit["items"]] == [-2, -1]
    connector.close()


def test_erpnext_validation_error_is_permanent_and_wrong_token_too(serve, monkeypatch) -> None:
    monkeypatch.setenv("ERP_TOKEN", "wrong:token")
    erp = FakeErpNext("right:token")
    api = serve(erp.route)
    connector = HttpConnector(
        http_config(mapping="erpnext", base_url=api.url, auth={"type": "bearer", "scheme": "token",
                                                                "token": {"env": "ERP_TOKEN"}})
    )  # fmt: skip
    with pytest.raises(PermanentDeliveryError) as refused:
        connector.deliver("evt_1", invoice())
    assert refused.value.context["status_code"] == 401 and len(api.calls) == 1  # no token refresh to try


# -------------------------------------------------------------------------------------- OAuth2


def test_oauth2_client_credentials_token_is_cached_and_refreshed_after_a_401(serve, monkeypatch) -> None:
    issued: list[str] = []
    valid: set[str] = set()
    records: list[Any] = []

    def token_endpoint(call: Call) -> Reply:
        assert call.path == "/oauth/token" and call.method == "POST"
        assert call.headers["content-type"] == "application/x-www-form-urlencoded"
        form = parse_qs(call.body.decode())
        assert form == {"grant_type": ["client_credentials"], "scope": ["bills.write"]}
        assert call.headers["authorization"] == "Basic " + base64.b64encode(b"mailingest:s3cr%3At").decode()
        token = f"tok{len(issued) + 1}"
        issued.append(token)
        valid.add(token)
        return 200, {}, {"access_token": token, "token_type": "Bearer", "expires_in": 3600}

    def resource(call: Call) -> Reply:
        if call.headers.get("authorization", "").removeprefix("Bearer ") not in valid:
            return 401, {"www-authenticate": 'Bearer error="invalid_token"'}, {"error": "invalid_token"}
        records.append(call.json)
        return 201, {}, {"id": len(records)}

    auth_server, api = serve(token_endpoint), serve(resource)
    monkeypatch.setenv("T_CLIENT_SECRET", "s3cr:t")
    connector = HttpConnector(
        http_config(
            url=f"{api.url}/bills",
            body='{"number": {{ invoice.number | tojson }}, "gross": {{ totals.amount_due | num }}}',
            auth={"type": "oauth2", "token_url": f"{auth_server.url}/oauth/token", "client_id": "mailingest",
                  "client_secret": {"env": "T_CLIENT_SECRET"}, "scope": "bills.write"},
        )
    )  # fmt: skip
    assert "s3cr" not in repr(connector) and "s3cr" not in repr(connector.config)
    connector.deliver("evt_1", invoice("A-1"))
    connector.deliver("evt_2", invoice("A-2"))
    assert issued == ["tok1"]  # cached across deliveries
    valid.clear()  # the API revokes it
    connector.deliver("evt_3", invoice("A-3"))
    assert issued == ["tok1", "tok2"]  # one 401, one fresh token, the request repeated
    assert records == [{"number": f"A-{n}", "gross": 119} for n in (1, 2, 3)]
    assert [c.headers["authorization"] for c in api.calls] == [
        "Bearer tok1",
        "Bearer tok1",
        "Bearer tok1",
        "Bearer tok2",
    ]


def test_oauth2_refused_credentials_are_permanent_and_an_expiring_token_is_renewed(
    serve, monkeypatch
) -> None:
    monkeypatch.setenv("T_CLIENT_SECRET", "x")
    tokens: list[str] = []

    def token_endpoint(call: Call) -> Reply:
        form = parse_qs(call.body.decode())
        if form.get("client_id") != ["good"]:
            return 401, {}, {"error": "invalid_client"}
        assert form["client_secret"] == ["x"]  # client_auth = "post"
        tokens.append(f"t{len(tokens)}")
        return 200, {}, {"access_token": tokens[-1], "expires_in": 1}

    auth_server = serve(token_endpoint)
    api = serve(lambda call: (200, {}, {}))

    def connector(client_id: str) -> HttpConnector:
        return HttpConnector(
            http_config(
                url=api.url,
                body="{}",
                auth={
                    "type": "oauth2",
                    "client_auth": "post",
                    "client_id": client_id,
                    "token_url": auth_server.url,
                    "client_secret": {"env": "T_CLIENT_SECRET"},
                },
            )
        )

    with pytest.raises(PermanentDeliveryError, match="invalid_client"):
        connector("bad").deliver("evt_1", invoice())
    good = connector("good")
    good.deliver("evt_1", invoice())
    time.sleep(1.0)  # the token lives 1 s and is refreshed a tenth of that before
    good.deliver("evt_2", invoice())
    assert tokens == ["t0", "t1"]


# ---------------------------------------------------------------- dispatcher: retries, dead letters


def _dispatch(db_url: str, connector: HttpConnector, payload: dict[str, Any], seconds: float) -> str:
    """Add one event and run a dispatcher until its delivery is settled (delivered or dead) or
    ``seconds`` passed — settling, not a fixed time, so a slow machine does not fail it."""
    engine = db.make_engine(db_url)
    db.upgrade(engine)
    with db.session_scope(engine) as s:
        event_id = repo.add_event(
            s, type=payload["type"], subject_id=payload["data"]["id"], data=payload["data"],
            connectors=[(connector.name, connector.events)],
        ).id  # fmt: skip
    dispatcher = Dispatcher(engine, {connector.name: connector}, schedule=[0, 0.2, 0.2, 0.2])
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        dispatcher.run_once()
        with db.session_scope(engine) as s:
            delivery = s.exec(select(tables.Delivery).where(tables.Delivery.event_id == event_id)).one()
            if delivery.status != "pending":
                break
        time.sleep(0.05)
    dispatcher.close()
    return event_id


def _attempts(db_url: str) -> list[tuple[str, int | None]]:
    with db.session_scope(db.make_engine(db_url)) as s:
        rows = s.exec(select(tables.DeliveryAttempt).order_by(col(tables.DeliveryAttempt.number))).all()
        return [(a.outcome, a.status_code) for a in rows]


def test_5xx_then_success_is_retried_with_idempotency_key_and_basic_auth(
    db_url, webhook_receiver: WebhookReceiver, monkeypatch
) -> None:
    monkeypatch.setenv("T_PASSWORD", "pa55")
    webhook_receiver.responses = [(503, {"Retry-After": "0"}), (500, {})]
    connector = HttpConnector(
        http_config(
            url=webhook_receiver.url,
            body_file=None,
            body='{"ref": {{ invoice.number | tojson }}, "event": {{ event.type | tojson }}}',
            headers={"X-Source": "{{ vars.source }}"},
            vars={"source": "mailingest"},
            idempotency_header="Idempotency-Key",
            auth={"type": "basic", "username": "ap", "password": {"env": "T_PASSWORD"}},
        )
    )
    _dispatch(db_url, connector, invoice(), seconds=15)
    assert len(webhook_receiver.requests) == 3
    keys = {r.headers["idempotency-key"] for r in webhook_receiver.requests}
    assert keys == {"inv_INV-2024-001"}  # the same external id on every attempt
    [ok] = webhook_receiver.accepted()
    assert ok.json == {"ref": "INV-2024-001", "event": "invoice.validated"}
    assert ok.headers["authorization"] == "Basic " + base64.b64encode(b"ap:pa55").decode()
    assert ok.headers["x-source"] == "mailingest" and ok.headers["content-type"] == "application/json"
    assert _attempts(db_url) == [("retry", 503), ("retry", 500), ("delivered", 200)]


def test_400_is_dead_lettered_at_once_with_the_response_recorded(
    db_url, webhook_receiver: WebhookReceiver, monkeypatch
) -> None:
    webhook_receiver.responses = [(400, {})]
    connector = HttpConnector(http_config(url=webhook_receiver.url, body="{}"))
    _dispatch(db_url, connector, invoice(), seconds=15)
    assert len(webhook_receiver.requests) == 1
    assert _attempts(db_url) == [("dead", 400)]
    with db.session_scope(db.make_engine(db_url)) as s:
        attempt = s.exec(select(tables.DeliveryAttempt)).one()
        assert attempt.response_excerpt == "ok" and "HTTP 400" in (attempt.error or "")
        assert s.exec(select(tables.Delivery)).one().status == "dead"
        # one refused invoice does not stop the connector: the next event is delivered
        assert s.get(tables.ConnectorState, connector.name) is None or (
            s.get(tables.ConnectorState, connector.name).disabled_at is None  # type: ignore[union-attr]
        )
    again = HttpConnector(http_config(url=webhook_receiver.url, body="{}"))  # the first was closed
    _dispatch(db_url, again, invoice(), seconds=15)
    assert _attempts(db_url)[-1] == ("delivered", 200)


def test_403_disables_the_connector(db_url, webhook_receiver: WebhookReceiver) -> None:
    webhook_receiver.responses = [(403, {})]
    connector = HttpConnector(http_config(url=webhook_receiver.url, body="{}"))
    _dispatch(db_url, connector, invoice(), seconds=15)
    assert _attempts(db_url) == [("dead", 403)]
    with db.session_scope(db.make_engine(db_url)) as s:
        state = s.get(tables.ConnectorState, connector.name)
        assert state is not None and state.disabled_at is not None and "403" in (state.disabled_reason or "")


# ----------------------------------------------------------------------- templates and config


def test_template_errors_are_config_errors_at_build_or_permanent_with_their_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"connectors\.http\.erp\.body, line 2"):
        HttpConnector(http_config(url="http://127.0.0.1:9/x", body='{\n"a": {{ invoice.number | }}\n}'))
    with pytest.raises(ConfigError, match=r"unknown name.*invoce"):
        HttpConnector(http_config(url="http://127.0.0.1:9/x", body="{{ invoce.number }}"))
    with pytest.raises(ConfigError, match=r"steps\.find\.done_if"):
        HttpConnector(
            http_config(url="http://127.0.0.1:9/x", steps=[{"name": "find", "url": "/", "done_if": "x ==="}])
        )
    with pytest.raises(ConfigError, match=r"steps\.find\.when.*unknown name.*stepz"):
        HttpConnector(
            http_config(
                url="http://127.0.0.1:9/x", steps=[{"name": "find", "url": "/", "when": "not stepz.a"}]
            )
        )
    with pytest.raises(ConfigError, match="cannot read body_file"):
        HttpConnector(http_config(url="http://127.0.0.1:9/x", body_file=str(tmp_path / "missing.j2")))

    globals_ok = HttpConnector(
        http_config(
            url="http://127.0.0.1:9/x",
            body="{% set ns = namespace(n=0) %}{% for i in range(2) %}{% set ns.n = ns.n + i %}{% endfor %}"
            '{"n": {{ ns.n }}}',
        )
    )
    assert globals_ok.request.body is not None
    context = template_context("evt_1", invoice(), variables={}, base_url=None)
    assert globals_ok.request.body.render(context) == '{"n": 1}'
    template = tmp_path / "bill.json.j2"
    template.write_text(
        '{\n  "ref": {{ invoice.number | tojson }},\n  "po": {{ invoice.purchase_order }}\n}\n'
    )
    connector = HttpConnector(http_config(url="http://127.0.0.1:9/x", body_file=str(template)))
    with pytest.raises(PermanentDeliveryError, match=r"connectors\.http\.erp\.body, line 3: UndefinedError"):
        connector.deliver("evt_1", invoice())
    broken = HttpConnector(http_config(url="http://127.0.0.1:9/x", body='{"ref": {{ invoice.number }}}'))
    with pytest.raises(PermanentDeliveryError, match="rendered invalid JSON"):
        broken.deliver("evt_1", invoice())  # unquoted string: the tojson filter was forgotten


def test_templates_are_sandboxed(serve) -> None:
    api = serve(lambda call: (200, {}, {}))
    escape = HttpConnector(http_config(url=api.url, body="{{ invoice.__class__.__mro__ }}"))
    with pytest.raises(PermanentDeliveryError, match=r"SecurityError|UndefinedError"):
        escape.deliver("evt_1", invoice())
    mutate = HttpConnector(http_config(url=api.url, body='{{ invoice.update({"number": "x"}) }}'))
    with pytest.raises(PermanentDeliveryError, match="SecurityError"):
        mutate.deliver("evt_1", invoice())
    assert api.calls == []


def test_private_destinations_are_refused_unless_allowed(serve) -> None:
    api = serve(lambda call: (200, {}, {}))
    guarded = HttpConnector(HttpConfig(name="erp", url=api.url, body="{}"))
    with pytest.raises(PermanentDeliveryError, match="non-public address"):
        guarded.deliver("evt_1", invoice())
    assert api.calls == []


def test_server_down_is_retryable(tmp_path: Path) -> None:
    from tests.conftest import free_port

    connector = HttpConnector(http_config(url=f"http://127.0.0.1:{free_port()}/bills", body="{}"))
    with pytest.raises(DeliveryError) as failed:
        connector.deliver("evt_1", invoice())
    assert not isinstance(failed.value, PermanentDeliveryError) and "ConnectError" in failed.value.detail


def test_config_file_builds_the_connector_and_redacts_secrets(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ODOO_API_KEY", "very-secret-key")
    config = tmp_path / "c.toml"
    config.write_text(
        '[[connectors.http]]\nname = "odoo"\nmapping = "odoo"\nbase_url = "https://erp.example.com"\n'
        'events = ["invoice.approved"]\n'
        'auth = { type = "bearer", token = { env = "ODOO_API_KEY" } }\n'
        "[connectors.http.vars]\njournal_id = 2\n"
    )
    connector = build_connectors(load_config(config))["odoo"]
    assert isinstance(connector, HttpConnector) and connector.events == ["invoice.approved"]
    assert "Secret(env=ODOO_API_KEY)" in repr(connector.config)
    assert "very-secret" not in repr(connector) + repr(connector.config) + str(connector.config)

    def refused(text: str, match: str) -> None:
        config.write_text(text)
        with pytest.raises(ConfigError, match=match):
            load_config(config)

    entry = '[[connectors.http]]\nname = "x"\nurl = "https://a.example/b"\n'
    refused(entry + 'auth = { type = "bearer", token = "abc" }\n', "may not be written inline")
    refused(entry + 'auth = { type = "basic", username = "u" }\n', "needs password")
    refused(
        entry
        + 'auth = { type = "basic", username = "u", password = { env = "P" }, token = { env = "T" } }\n',
        "does not use token",
    )
    refused('[[connectors.http]]\nname = "x"\nmapping = "odoo"\n', "needs base_url")
    refused('[[connectors.http]]\nname = "x"\nmapping = "sap"\nbase_url = "https://a.example"\n', "mapping")
    refused('[[connectors.http]]\nname = "x"\nurl = "https://a.example"\nbody = "{}"\nbody_file = "b.j2"\n',
            "either body or body_file")  # fmt: skip


def test_missing_secret_fails_when_the_connector_is_built(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("NOPE_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="NOPE_TOKEN is not set"):
        HttpConnector(http_config(url="https://a.example/b", body="{}",
                                  auth={"type": "bearer", "token": Secret(env="NOPE_TOKEN")}))  # fmt: skip


def test_a_user_body_overrides_the_mapping(serve, monkeypatch) -> None:
    monkeypatch.setenv("ODOO_KEY", "k")
    odoo = FakeOdoo("k")
    api = serve(odoo.route)
    body = (
        '{"vals_list": [{"move_type": "in_invoice",'
        ' "partner_id": {{ (steps.partner or steps.new_partner)[0] }},'
        ' "ref": {{ external_id | tojson }}, "narration": "from mailingest",'
        ' "invoice_line_ids": [[0, 0, {"name": "total", "quantity": 1,'
        ' "price_unit": {{ totals.amount_due | num }}}]]}]}'
    )
    connector = HttpConnector(
        http_config(
            mapping="odoo", base_url=api.url, body=body, auth={"type": "bearer", "token": {"env": "ODOO_KEY"}}
        )
    )
    connector.deliver("evt_1", invoice())
    [bill] = odoo.moves.values()
    assert bill["ref"] == "inv_INV-2024-001" and bill["narration"] == "from mailingest"
    assert bill["invoice_line_ids"] == [[0, 0, {"name": "total", "quantity": 1, "price_unit": 119}]]


# ---------------------------------------------------------------------------------- end to end

UBL = FIXTURES / "einvoice" / "xrechnung-testsuite__business-cases__standard__01.01a-INVOICE_ubl.xml"


@pytest.mark.e2e
def test_mail_in_becomes_one_vendor_bill_in_odoo(make_daemon, serve, monkeypatch) -> None:
    monkeypatch.setenv("ODOO_API_KEY", "e2e-key")
    odoo = FakeOdoo("e2e-key")
    odoo.fail_next = [503]  # the first call fails: the dispatcher retries the whole pass
    api = serve(odoo.route)
    daemon = make_daemon(
        extra=f"""
[[connectors.http]]
name = "odoo"
mapping = "odoo"
base_url = "{api.url}"
events = ["invoice.extracted"]
allow_private_network = true
auth = {{ type = "bearer", token = {{ env = "ODOO_API_KEY" }} }}
"""
    )
    daemon.start()
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "billing@vendor.example", "ap@buyer.example", "Invoice"
    msg.set_content("Attached.")
    msg.add_attachment(UBL.read_bytes(), maintype="application", subtype="xml", filename=UBL.name)
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=30) as smtp:
        smtp.sendmail("billing@vendor.example", ["ap@buyer.example"], msg.as_bytes(policy=SMTP))
    deadline = time.monotonic() + 30
    while not odoo.moves and time.monotonic() < deadline:
        time.sleep(0.1)
    assert daemon.stop() == 0
    [bill] = odoo.moves.values()
    assert (
        bill["move_type"] == "in_invoice"
        and bill["ref"] == "123456XX"
        and bill["invoice_date"] == "2016-04-04"
    )
    assert odoo.partners[bill["partner_id"]]["vat"] == "DE123456789"
    assert len(bill["invoice_line_ids"]) >= 2 and all(c[:2] == [0, 0] for c in bill["invoice_line_ids"])
