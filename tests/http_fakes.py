"""Fake ERP servers for tests/test_http_connector.py: a real HTTP server on loopback with a
scriptable route, a fake Odoo 19 (External JSON-2 API) and a fake ERPNext (Frappe REST) that
check the documented request shapes and keep the records they were asked to create."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
Reply = tuple[int, dict[str, str], Any]


@dataclass
class Call:
    method: str
    path: str  # percent-decoded
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class FakeApi:
    """A real HTTP server on loopback; ``route`` answers each call, ``calls`` records them all."""

    route: Callable[[Call], Reply]
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FakeApi:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                split = urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                call = Call(
                    self.command,
                    unquote(split.path),
                    parse_qs(split.query),
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                )
                with api.lock:
                    api.calls.append(call)
                    try:
                        code, headers, answer = api.route(call)
                    except (KeyError, TypeError, ValueError, AssertionError) as exc:
                        code, headers, answer = 422, {}, {"name": type(exc).__name__, "message": str(exc)}
                data = json.dumps(answer).encode()
                self.send_response(code)
                for k, v in {"content-type": "application/json", **headers}.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = _any

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _matches(record: dict[str, Any], domain: list[Any]) -> bool:
    for term in domain:
        assert isinstance(term, list) and len(term) == 3 and term[1] == "=", f"unsupported term {term}"
        if record.get(term[0]) != term[2]:
            return False
    return True


class FakeOdoo:
    """Odoo 19 External JSON-2 API: POST /json/2/<model>/<method>, ``Authorization: bearer <key>``,
    a JSON object of named parameters; answers the method's return value."""

    MOVE_FIELDS = {"move_type", "partner_id", "ref", "invoice_date", "invoice_date_due", "currency_id",
                   "journal_id", "payment_reference", "invoice_line_ids", "narration"}  # fmt: skip
    LINE_FIELDS = {"name", "quantity", "price_unit", "account_id", "tax_ids", "product_id"}

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.partners: dict[int, dict[str, Any]] = {}
        self.moves: dict[int, dict[str, Any]] = {}
        self.currencies = {1: {"name": "EUR"}, 2: {"name": "USD"}}
        self.fail_next: list[int] = []

    def route(self, call: Call) -> Reply:
        if self.fail_next:
            return self.fail_next.pop(0), {}, {"message": "scripted failure"}
        scheme, _, key = call.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or key != self.api_key:
            return 401, {}, {"name": "werkzeug.exceptions.Unauthorized", "message": "Invalid apikey"}
        match = re.fullmatch(r"/json/2/([a-z.]+)/([a-z_]+)", call.path)
        assert call.method == "POST" and match, f"not a JSON-2 call: {call.method} {call.path}"
        assert call.headers["content-type"].startswith("application/json")
        model, method = match.groups()
        body = call.json
        assert isinstance(body, dict)
        if method == "search":
            assert set(body) <= {"domain", "limit", "offset", "order", "context"}, body
            table = {
                "res.partner": self.partners,
                "account.move": self.moves,
                "res.currency": self.currencies,
            }
            found = [i for i, r in table[model].items() if _matches(r, body["domain"])]
            return 200, {}, found[: body.get("limit") or None]
        assert method == "create" and set(body) <= {"vals_list", "context"}, body
        assert isinstance(body["vals_list"], list) and body["vals_list"]
        ids = []
        for vals in body["vals_list"]:
            if model == "res.partner":
                assert isinstance(vals["name"], str) and vals["name"]
                self.partners[len(self.partners) + 1] = vals
                ids.append(len(self.partners))
                continue
            assert model == "account.move"
            assert set(vals) <= self.MOVE_FIELDS, f"unknown fields {set(vals) - self.MOVE_FIELDS}"
            assert vals["move_type"] in ("in_invoice", "in_refund")
            assert vals["partner_id"] in self.partners
            assert isinstance(vals["ref"], str)
            for key in ("invoice_date", "invoice_date_due"):
                assert key not in vals or DATE.match(vals[key]), f"{key} is not a date"
            assert "currency_id" not in vals or vals["currency_id"] in self.currencies
            assert vals["invoice_line_ids"]
            for command in vals["invoice_line_ids"]:
                assert isinstance(command, list) and command[:2] == [0, 0], f"not Command.create: {command}"
                line = command[2]
                assert set(line) <= self.LINE_FIELDS and isinstance(line["name"], str)
                assert _number(line["quantity"]) and _number(line["price_unit"])
            self.moves[len(self.moves) + 1] = vals
            ids.append(len(self.moves))
        return 200, {}, ids


class FakeErpNext:
    """Frappe REST: ``Authorization: token key:secret``; GET /api/resource/<DocType>?filters=…
    answers ``{"data": [...]}``, POST creates and answers ``{"data": {...}}``; validation errors
    are HTTP 417 like Frappe's."""

    ITEM_FIELDS = {"item_name", "description", "qty", "rate", "uom", "conversion_factor", "expense_account",
                   "cost_center", "item_code"}  # fmt: skip

    def __init__(self, token: str) -> None:
        self.token = token
        self.suppliers: dict[str, dict[str, Any]] = {}
        self.invoices: dict[str, dict[str, Any]] = {}

    def route(self, call: Call) -> Reply:
        if call.headers.get("authorization") != f"token {self.token}":
            return 401, {}, {"exc_type": "AuthenticationError"}
        match = re.fullmatch(r"/api/resource/(Supplier|Purchase Invoice)", call.path)
        assert match, f"unexpected path {call.path}"
        doctype = match.group(1)
        table = self.suppliers if doctype == "Supplier" else self.invoices
        if call.method == "GET":
            filters = json.loads(call.query["filters"][0])
            assert json.loads(call.query["fields"][0]) == ["name"]
            rows = [{"name": name} for name, doc in table.items() if _matches(doc, filters)]
            return 200, {}, {"data": rows}
        assert call.method == "POST" and call.headers["content-type"].startswith("application/json")
        doc = call.json
        if doctype == "Supplier":
            assert isinstance(doc["supplier_name"], str)
            name = doc["supplier_name"]
            table[name] = doc
            return 200, {}, {"data": {"name": name, **doc}}
        if doc["supplier"] not in self.suppliers:
            return 417, {}, {"exc_type": "LinkValidationError", "exception": "Could not find Supplier"}
        assert isinstance(doc["bill_no"], str) and doc["is_return"] in (0, 1)
        for key in ("bill_date", "posting_date", "due_date"):
            assert key not in doc or DATE.match(doc[key]), f"{key} is not a date"
        assert doc["items"]
        for item in doc["items"]:
            assert set(item) <= self.ITEM_FIELDS and isinstance(item["item_name"], str)
            assert _number(item["qty"]) and _number(item["rate"])
            assert (item["qty"] < 0) == (doc["is_return"] == 1)  # returns carry negative quantities
        name = f"ACC-PINV-2024-{len(self.invoices) + 1:05d}"
        table[name] = doc
        return 200, {}, {"data": {"name": name, "docstatus": 0, **doc}}
