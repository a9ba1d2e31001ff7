"""Enrichment lookups ([[rules.lookups]]) through the router the pipeline uses
(workers.build_router) against a real HTTP server on loopback, and once through the daemon:
budget data a rule tests, contract data by POST, failure policies, the answer cache, URL
encoding of placeholders and the config check of placeholder paths."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from mailingest.config import Config, ConfigError, load_config
from mailingest.models import Invoice
from mailingest.workers import build_router
from tests.conftest import DaemonProcess
from tests.test_rules_e2e import invoices_by_number, mail, send, ubl

MakeDaemon = Callable[..., DaemonProcess]

OVER_BUDGET = """
[[rule]]
name = "over-budget"
priority = 10
when = { "enrichment.budget.remaining" = { lt = 0 } }
then = { status = "needs_review", tags = ["over-budget"] }

[[rule]]
name = "within-budget-cel"
priority = 20
expr = 'double(enrichment.budget.remaining) >= invoice.totals.amount_due'  # CEL: no int vs double
then = { tags = ["budget-ok"] }

[[rule]]
name = "contract-expired"
priority = 30
when = { "enrichment.contract.active" = false }
then = { status = "needs_review", tags = ["no-contract"] }

[[rule]]
name = "budget-lookup-failed"
priority = 40
when = { "lookups.failed" = { contains = "budget" } }
then = { tags = ["budget-unknown"] }
"""


class ErpServer:
    """Answers by path prefix with (status, body, delay); records every request (raw path)."""

    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, Any, float]] = {}
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                with server.lock:
                    server.requests.append(
                        (self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                key = next((p for p in server.answers if self.path.startswith(p)), None)
                status, answer, delay = server.answers[key] if key else (404, {"error": "no"}, 0.0)
                if callable(answer):
                    answer = answer(self.path, body)
                time.sleep(delay)
                raw = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                except OSError:
                    pass  # the client gave up (timeout test)

            do_GET = do_POST = _answer

            def log_message(self, *_args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def count(self, prefix: str) -> int:
        with self.lock:
            return sum(1 for r in self.requests if r[1].startswith(prefix))


@pytest.fixture
def erp() -> Iterator[ErpServer]:
    server = ErpServer()
    yield server
    server.http.shutdown()
    server.http.server_close()


def router(tmp_path: Path, lookups: list[dict[str, Any]], rules: str = OVER_BUDGET) -> Any:
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "rules" / "r.toml").write_text(rules)
    config = Config.model_validate(
        {"rules": {"path": str(tmp_path / "rules"), "lookups": lookups, "reload": 0}}
    )
    return build_router(config, watch=False)


def invoice(cost_center: str = "CC 10/Ops", amount: str = "250.00", **kw: Any) -> Invoice:
    base: dict[str, Any] = {
        "id": "inv_TEST",
        "number": "INV-9",
        "currency": "EUR",
        "status": "validated",
        "contract": "K-2026/7",
        "seller": {"name": "ACME GmbH", "vat_id": "DE811907980"},
        "totals": {"amount_due": amount},
        "lines": [{"item": {"name": "Paper"}, "net_amount": amount, "coding": {"cost_center": cost_center}}],
        "validation": {"valid": True},
    }
    return Invoice.model_validate({**base, **kw})


def budget(url: str, **kw: Any) -> dict[str, Any]:
    return {"name": "budget", "url": url + "/budgets/{invoice.lines[0].coding.cost_center}", **kw}


def warnings(inv: Invoice) -> list[tuple[str, str]]:
    assert inv.validation is not None
    return [(m.rule, m.text) for m in inv.validation.messages]


def test_budget_lookup_feeds_rules_when_and_cel(tmp_path: Path, erp: ErpServer) -> None:
    erp.answers["/budgets/"] = (200, lambda path, _b: {"remaining": -120.5 if "Ops" in path else 9000}, 0.0)
    route = router(tmp_path, [budget(erp.url, headers={"x-tenant": "t1"})])

    over = route(invoice(), {"mailbox": "ap"})
    assert over.status == "needs_review"
    assert over.routing == ["over-budget"] and "over-budget" in over.tags
    assert over.enrichment == {"budget": {"remaining": -120.5}}  # stored on the invoice
    method, path, headers, _ = erp.requests[0]
    assert method == "GET" and path == "/budgets/CC%2010%2FOps"
    assert headers["x-tenant"] == "t1" and headers["accept"] == "application/json"

    fine = route(invoice(cost_center="CC-20"), {})
    assert fine.status == "validated" and fine.routing == ["within-budget-cel"]
    assert fine.enrichment == {"budget": {"remaining": 9000}}


def test_placeholders_are_url_encoded_and_params_templated(tmp_path: Path, erp: ErpServer) -> None:
    erp.answers["/budgets/"] = (200, {"remaining": 1}, 0.0)
    lookup = budget(erp.url, params={"vendor": "{invoice.seller.vat_id}", "q": "{invoice.contract}"})
    route = router(tmp_path, [lookup])
    route(invoice(cost_center="a/b c?d#e&f"), {})
    _, path, _, _ = erp.requests[0]
    raw_path, _, query = path.partition("?")
    assert raw_path == "/budgets/a%2Fb%20c%3Fd%23e%26f"  # one path segment, nothing leaks into the query
    assert unquote(raw_path.rsplit("/", 1)[1]) == "a/b c?d#e&f"
    assert sorted(query.split("&")) == ["q=K-2026%2F7", "vendor=DE811907980"]


def test_contract_lookup_by_post_with_bearer_token(
    tmp_path: Path, erp: ErpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ERP_TOKEN", "tok-123")
    erp.answers["/contracts"] = (200, {"active": False, "ends": "2026-06-30"}, 0.0)
    lookup = {
        "name": "contract",
        "url": erp.url + "/contracts",
        "method": "POST",
        "token": {"env": "ERP_TOKEN"},
    }
    routed = router(tmp_path, [lookup])(invoice(), {"from": "billing@vendor.example"})

    method, _, headers, body = erp.requests[0]
    sent = json.loads(body)
    assert method == "POST" and headers["authorization"] == "Bearer tok-123"
    assert sent["lookup"] == "contract" and sent["invoice"]["contract"] == "K-2026/7"
    assert sent["source"] == {"from": "billing@vendor.example"}
    assert routed.enrichment == {"contract": {"active": False, "ends": "2026-06-30"}}
    assert routed.status == "needs_review" and "no-contract" in routed.tags


@pytest.mark.parametrize("failure", ["timeout", "500", "not-an-object"])
@pytest.mark.parametrize("on_error", ["ignore", "review"])
def test_failures_under_both_policies(tmp_path: Path, erp: ErpServer, failure: str, on_error: str) -> None:
    answer = {
        "timeout": (200, {"remaining": 5}, 1.5),
        "500": (500, {"error": "down"}, 0.0),
        "not-an-object": (200, [1, 2], 0.0),
    }[failure]
    erp.answers["/budgets/"] = answer
    routed = router(tmp_path, [budget(erp.url, timeout="0.3s", on_error=on_error)])(invoice(), {})

    assert routed.routing == ["budget-lookup-failed"]  # rules see lookups.failed
    assert routed.enrichment is None
    assert routed.status == ("needs_review" if on_error == "review" else "validated")
    assert routed.validation is not None and routed.validation.valid  # a warning, not an error
    [(rule, text)] = warnings(routed)
    assert rule == "lookup:budget"
    expected = {"timeout": "timed out after 0.3s", "500": "HTTP 500", "not-an-object": "JSON list"}[failure]
    assert expected in text


def test_missing_placeholder_value_is_a_failure(tmp_path: Path, erp: ErpServer) -> None:
    erp.answers["/budgets/"] = (200, {"remaining": 5}, 0.0)
    routed = router(tmp_path, [budget(erp.url, on_error="review")])(invoice(lines=[]), {})
    assert erp.requests == []
    assert routed.status == "needs_review"
    assert "placeholder {invoice.lines.0.coding.cost_center} has no value" in warnings(routed)[0][1]


def test_answers_are_cached_per_url_for_cache_ttl(tmp_path: Path, erp: ErpServer) -> None:
    erp.answers["/budgets/"] = (200, {"remaining": 10}, 0.0)
    cached = router(tmp_path, [budget(erp.url, cache_ttl="1.5s")])
    for _ in range(3):
        assert cached(invoice(cost_center="A"), {}).enrichment == {"budget": {"remaining": 10}}
    cached(invoice(cost_center="B"), {})
    assert erp.count("/budgets/A") == 1 and erp.count("/budgets/B") == 1
    time.sleep(1.6)
    cached(invoice(cost_center="A"), {})
    assert erp.count("/budgets/A") == 2  # expired

    uncached = router(tmp_path, [budget(erp.url)])
    uncached(invoice(cost_center="C"), {})
    uncached(invoice(cost_center="C"), {})
    assert erp.count("/budgets/C") == 2


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://erp.example/b/{invoice.no_such_field}", "unknown placeholder {invoice.no_such_field}"),
        ("https://erp.example/b/{invoice.__class__}", "unknown placeholder {invoice.__class__}"),
        ("https://erp.example/b/{secret}", "unknown placeholder {secret}"),
        ("https://erp.example/b/{invoice.lines[0].coding}", "is a list or a table, not one value"),
        ("https://erp.example/b/{invoice.number!r}", "may not carry a format"),
    ],
)
def test_bad_placeholders_are_config_errors_at_load(tmp_path: Path, url: str, message: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'[[rules.lookups]]\nname = "budget"\nurl = "{url}"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert "rules.lookups.0.url" in err.value.detail and message in err.value.detail


def test_lookup_config_other_checks(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[[rules.lookups]]\nname = "budget"\nurl = "https://e/{invoice.number}"\n'
        'params = { v = "{invoice.nope}" }\n'
    )
    with pytest.raises(
        ConfigError, match=r"rules\.lookups\.0\.params: unknown placeholder \{invoice\.nope\}"
    ):
        load_config(path, environ={})
    path.write_text(
        '[[rules.lookups]]\nname = "a"\nurl = "https://e/x"\n[[rules.lookups]]\nname = "a"\nurl = "https://e/y"\n'
    )
    with pytest.raises(ConfigError, match="lookup names must be unique"):
        load_config(path, environ={})
    path.write_text('[[rules.lookups]]\nname = "vendor_score"\nurl = "https://e/x"\n')
    with pytest.raises(ConfigError, match=r"rules\.lookups\.0\.name: lookup name 'vendor_score' is reserved"):
        load_config(path, environ={})
    path.write_text(
        '[[rules.lookups]]\nname = "budget"\nurl = "https://e/{source.mailbox}/{invoice.lines[2].item.name}"\n'
        'method = "POST"\ntoken = { env = "T" }\ncache_ttl = "5m"\non_error = "review"\n'
    )
    lookup = load_config(path, environ={}).rules.lookups[0]
    assert (lookup.method, lookup.cache_ttl, lookup.on_error) == ("POST", 300.0, "review")


@pytest.mark.e2e
def test_daemon_routes_on_budget_lookup(make_daemon: MakeDaemon, erp: ErpServer, tmp_path: Path) -> None:
    erp.answers["/budgets/"] = (
        200,
        lambda path, _b: {"remaining": 100 if "Hetzner" in unquote(path) else -1},
        0.0,
    )
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "budget.toml").write_text(OVER_BUDGET)
    extra = f"""
[rules]
path = "{rules}"
reload = "0s"

[[rules.lookups]]
name = "budget"
url = "{erp.url}/budgets/{{invoice.seller.name}}"
params = {{ number = "{{invoice.number}}" }}
cache_ttl = "1m"
"""
    daemon = make_daemon(extra=extra)
    daemon.start()
    send(
        daemon.smtp_port,
        mail(
            ("over.xml", ubl("O-1", "500")),
            ("ok.xml", ubl("K-1", "50", seller="Hetzner Online GmbH")),
        ),
    )
    found = invoices_by_number(daemon, 2)
    over, ok = (
        daemon.get(f"/v1/invoices/{found['O-1']['id']}"),
        daemon.get(f"/v1/invoices/{found['K-1']['id']}"),
    )
    assert over["status"] == "needs_review" and "over-budget" in over["tags"]
    assert over["enrichment"]["budget"] == {"remaining": -1}
    assert ok["enrichment"]["budget"] == {"remaining": 100}
    assert "within-budget-cel" in ok["routing"] and ok["status"] != "needs_review"
    paths = sorted(r[1] for r in erp.requests)
    assert paths == [
        "/budgets/ACME%20Office%20GmbH?number=O-1",
        "/budgets/Hetzner%20Online%20GmbH?number=K-1",
    ]
