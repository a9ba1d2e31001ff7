"""HTTP validation hooks through the router the pipeline uses (workers.build_router), against a
real HTTP server on loopback: messages, field operations, blockers, signatures, failure policy."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mailingest.config import Config
from mailingest.connectors.webhook import verify
from mailingest.models import Invoice
from mailingest.workers import build_router
from tests.conftest import WEBHOOK_SECRET


class HookServer:
    """Answers each path with a configured (status, body, delay); records requests."""

    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, Any, float]] = {}
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                server.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                status, answer, delay = server.answers.get(self.path, (404, {}, 0.0))
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

            def log_message(self, *_args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()


@pytest.fixture
def hooks_server() -> Iterator[HookServer]:
    server = HookServer()
    yield server
    server.http.shutdown()
    server.http.server_close()


def router(tmp_path: Path, rules: str, hooks: list[dict[str, Any]]) -> Any:
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "rules" / "r.toml").write_text(rules)
    config = Config.model_validate({"rules": {"path": str(tmp_path / "rules"), "hooks": hooks, "reload": 0}})
    return build_router(config, watch=False)


def invoice(**kw: Any) -> Invoice:
    base: dict[str, Any] = {
        "number": "INV-9",
        "currency": "EUR",
        "status": "validated",
        "purchase_order": "PO-4711",
        "seller": {"name": "ACME GmbH"},
        "totals": {"amount_due": "250.00"},
        "validation": {"valid": True},
    }
    return Invoice.model_validate({**base, **kw})


APPROVE = '[[rule]]\nname = "approve-all"\nthen = { status = "approved" }\n'


def test_messages_operations_and_blockers_are_recorded(
    tmp_path: Path, hooks_server: HookServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_SECRET", WEBHOOK_SECRET)
    hooks_server.answers["/vendor"] = (
        200,
        {
            "messages": [{"type": "info", "content": "vendor 100234 in accounting"}],
            "operations": [
                {"op": "replace", "path": "buyer_reference", "value": "COST-7"},
                {"op": "replace", "path": "totals.amount_due", "value": "1"},
            ],
        },
        0.0,
    )
    hooks_server.answers["/po"] = (
        200,
        {
            "messages": [{"type": "warning", "content": "price differs by 0.4 %", "path": "lines.0"}],
            "automation_blockers": [
                {"content": "quantity invoiced 12 > received 10", "path": "lines.0.quantity"}
            ],
        },
        0.0,
    )
    route = router(
        tmp_path,
        APPROVE
        + '[[rule]]\nname = "see-block"\nwhen = { "hooks.blocked" = true }\nthen = { tags = ["blocked"] }\n',
        [
            {"name": "vendor-exists", "url": f"{hooks_server.url}/vendor", "secret": {"env": "HOOK_SECRET"}},
            {"name": "po-match", "url": f"{hooks_server.url}/po"},
        ],
    )
    routed = route(invoice(), {"mailbox": "ap@x", "from": "a@b", "subject": "s"})
    assert routed.status == "needs_review"  # a blocker wins over the approving rule
    assert routed.tags == ["blocked"] and routed.routing == ["approve-all", "see-block"]
    assert routed.buyer_reference == "COST-7" and routed.totals.amount_due == 250  # only allowed paths
    assert routed.validation is not None and routed.validation.valid is False
    messages = [(m.rule, m.severity, m.text) for m in routed.validation.messages]
    assert messages == [
        ("hook:vendor-exists", "info", "vendor 100234 in accounting"),
        ("hook:vendor-exists", "warning", "operation on 'totals.amount_due' ignored: not a settable path"),
        ("hook:po-match", "warning", "price differs by 0.4 %"),
        ("hook:po-match", "error", "blocked: quantity invoiced 12 > received 10"),
    ]
    (path, headers, body), (_, headers2, body2) = hooks_server.requests
    assert path == "/vendor" and verify(WEBHOOK_SECRET, headers, body)
    sent = json.loads(body)
    assert sent["hook"] == "vendor-exists" and sent["invoice"]["number"] == "INV-9"
    assert sent["invoice"]["totals"]["amount_due"] == "250.00" and sent["source"]["mailbox"] == "ap@x"
    assert "webhook-signature" not in headers2
    assert json.loads(body2)["invoice"]["buyer_reference"] == "COST-7"  # later hooks see earlier operations


def test_clean_answers_let_the_rules_decide(tmp_path: Path, hooks_server: HookServer) -> None:
    hooks_server.answers["/ok"] = (200, {"messages": []}, 0.0)
    route = router(tmp_path, APPROVE, [{"name": "budget", "url": f"{hooks_server.url}/ok"}])
    routed = route(invoice(), {})
    assert routed.status == "approved" and routed.validation is not None and routed.validation.valid


@pytest.mark.parametrize(
    ("answer", "timeout", "reason"),
    [
        ((500, {"error": "db down"}, 0.0), 5.0, "HTTPStatusError"),
        ((200, b"<html>not json", 0.0), 5.0, "JSONDecodeError"),
        ((200, {"messages": [{"type": "fatal", "content": "x"}]}, 0.0), 5.0, "ValidationError"),
        ((200, {}, 1.5), 0.3, "ReadTimeout"),
    ],
)
def test_failure_policy_block_or_allow(
    tmp_path: Path, hooks_server: HookServer, answer: tuple[int, Any, float], timeout: float, reason: str
) -> None:
    hooks_server.answers["/h"] = answer
    for policy, status, severity in (("block", "needs_review", "error"), ("allow", "approved", "warning")):
        hook = {"name": "contract", "url": f"{hooks_server.url}/h", "timeout": timeout, "on_error": policy}
        route = router(tmp_path, APPROVE, [hook])
        started = time.monotonic()
        routed = route(invoice(), {})
        assert time.monotonic() - started < timeout + 1.0
        assert routed.status == status
        assert routed.validation is not None
        (message,) = routed.validation.messages
        assert message.rule == "hook:contract" and message.severity == severity
        assert message.text.startswith(f"hook failed: {reason}")


def test_unreachable_hook_server(tmp_path: Path) -> None:
    from tests.conftest import free_port

    hook = {"name": "gone", "url": f"http://127.0.0.1:{free_port()}/x", "timeout": 1}
    routed = router(tmp_path, APPROVE, [hook])(invoice(), {})
    assert routed.status == "needs_review" and routed.validation is not None
    assert "ConnectError" in routed.validation.messages[0].text
