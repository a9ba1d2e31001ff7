"""The Microsoft Graph source against a local HTTP server that answers with Graph's documented
shapes (client-credentials token endpoint, mail folder delta with nextLink/deltaLink paging and
``@removed`` entries, ``$value`` MIME, PATCH, ``/move``, 429 + Retry-After, 401 for bad tokens),
with a real ledger and pipeline on SQLite."""

from __future__ import annotations

import itertools
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from mailingest.config import GraphSourceConfig, load_config
from mailingest.errors import ConfigError, SourceError
from mailingest.ledger import Ledger
from mailingest.pipeline.runner import MAX_ATTEMPTS, Runtime
from mailingest.sources.graph import SCOPE, GraphClient, GraphSource
from mailingest.storage import db, tables
from mailingest.storage.blobs import BlobStore
from tests.conftest import FIXTURES, DaemonProcess
from tests.test_imap import Store

UBL = FIXTURES / "einvoice" / "xrechnung-testsuite__business-cases__standard__01.01a-INVOICE_ubl.xml"
USER = "ap@buyer.example"
TENANT = "contoso.onmicrosoft.com"
CLIENT_ID = "11111111-2222-3333-4444-555555555555"
CLIENT_SECRET = "s3cr3t~value"
T = TypeVar("T")
_counter = itertools.count(1)


def invoice_mail(subject: str) -> bytes:
    """A mail with the UBL invoice attached; unique Message-ID, so every call gives new bytes."""
    msg = EmailMessage()
    msg["From"] = "Billing <billing@vendor.example>"
    msg["To"] = USER
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{time.time_ns()}.{next(_counter)}@vendor.example>"
    msg.set_content("Please find our invoice attached.\n")
    msg.add_attachment(UBL.read_bytes(), maintype="application", subtype="xml", filename=UBL.name)
    return msg.as_bytes(policy=SMTP)


def wait_for(probe: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(0.05)


# -- the fake Graph -------------------------------------------------------------------------------


@dataclass
class Call:
    method: str
    path: str  # unquoted, without /v1.0
    query: dict[str, str]
    body: Any
    at: float


@dataclass
class FakeGraph:
    """Mailbox state plus a change log; delta tokens are positions in that log."""

    expires_in: int = 3599
    page_size: int = 2
    folders: dict[str, str] = field(default_factory=lambda: {"Processed": "AAMkFolderProcessed="})
    mail: dict[str, bytes] = field(default_factory=dict)  # id → MIME, the watched folder's content
    meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    changes: list[tuple[str, str]] = field(default_factory=list)  # (upsert | removed, id)
    pages: dict[str, tuple[list[dict[str, Any]], int]] = field(default_factory=dict)
    tokens: dict[str, float] = field(default_factory=dict)  # token → expiry (monotonic)
    token_requests: int = 0
    unauthorized: int = 0
    throttle: set[str] = field(default_factory=set)  # "delta": answer the next delta GET with 429
    throttled_at: float | None = None
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    def add(self, subject: str) -> str:
        with self.lock:
            graph_id = f"AAMkAGI2TG93AAA{len(self.meta) + 1:04d}-_x="
            self.mail[graph_id] = invoice_mail(subject)
            self.meta[graph_id] = {
                "subject": subject,
                "receivedDateTime": "2026-03-02T09:15:00Z",
                "isRead": False,
                "categories": ["Blue category"],
            }
            self.changes.append(("upsert", graph_id))
            return graph_id

    def delete(self, graph_id: str) -> None:
        with self.lock:
            del self.mail[graph_id]
            self.changes.append(("removed", graph_id))

    def revoke_tokens(self) -> None:
        with self.lock:
            self.tokens.clear()

    def of(self, method: str, suffix: str = "") -> list[Call]:
        return [c for c in self.calls if c.method == method and c.path.endswith(suffix)]

    def downloads(self, graph_id: str) -> int:
        return len(self.of("GET", f"/messages/{graph_id}/$value"))

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def entry(self, graph_id: str) -> dict[str, Any]:
        if graph_id not in self.mail:
            return {
                "@odata.type": "#microsoft.graph.message",
                "id": graph_id,
                "@removed": {"reason": "deleted"},
            }
        meta = self.meta[graph_id]
        return {
            "@odata.type": "#microsoft.graph.message",
            "@odata.etag": 'W/"CQAAABYAAAC"',
            "id": graph_id,
            "subject": meta["subject"],
            "receivedDateTime": meta["receivedDateTime"],
            "hasAttachments": True,
            "from": {"emailAddress": {"name": "Billing", "address": "billing@vendor.example"}},
        }

    def delta(self, query: dict[str, str]) -> dict[str, Any]:
        """Initial sync lists the folder; a deltatoken lists what changed since; pages of
        ``page_size`` linked by ``@odata.nextLink``, the last one carrying ``@odata.deltaLink``."""
        root = f"{self.base}/v1.0/users/{USER}/mailFolders/inbox/messages/delta"
        if "$skiptoken" in query:
            entries, position = self.pages.pop(query["$skiptoken"])
        else:
            if "$deltatoken" in query:
                since = int(query["$deltatoken"])
                ids = list(dict.fromkeys(graph_id for _, graph_id in self.changes[since:]))
            else:
                ids = list(self.mail)
            entries, position = [self.entry(i) for i in ids], len(self.changes)
        page, rest = entries[: self.page_size], entries[self.page_size :]
        body: dict[str, Any] = {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata", "value": page}
        if rest:
            token = secrets.token_hex(8)
            self.pages[token] = (rest, position)
            body["@odata.nextLink"] = f"{root}?$skiptoken={token}"
        else:
            body["@odata.deltaLink"] = f"{root}?$deltatoken={position}"
        return body


def _handler(graph: FakeGraph) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            ctype = "message/rfc822" if isinstance(body, bytes) else "application/json"
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
            self._send(status, {"error": {"code": code, "message": message}}, headers)

        def _handle(self, method: str) -> None:
            parts = urlsplit(self.path)
            path = unquote(parts.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            with graph.lock:
                if path == f"/{TENANT}/oauth2/v2.0/token":
                    return self._token(raw)
                token = self.headers.get("Authorization", "").removeprefix("Bearer ")
                if graph.tokens.get(token, 0.0) < time.monotonic():
                    graph.unauthorized += 1
                    return self._error(401, "InvalidAuthenticationToken", "Access token has expired.")
                body = json.loads(raw) if raw else None
                graph.calls.append(Call(method, path.removeprefix("/v1.0"), query, body, time.monotonic()))
                return self._graph(method, path.removeprefix(f"/v1.0/users/{USER}"), query, body)

        def _token(self, raw: bytes) -> None:
            form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
            graph.token_requests += 1
            expected = {
                "grant_type": "client_credentials",
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "scope": SCOPE,
            }
            if form != expected:
                desc = "AADSTS7000215: Invalid client secret provided."
                return self._send(401, {"error": "invalid_client", "error_description": desc})
            token = secrets.token_urlsafe(24)
            graph.tokens[token] = time.monotonic() + graph.expires_in
            return self._send(
                200, {"token_type": "Bearer", "expires_in": graph.expires_in, "access_token": token}
            )

        def _graph(self, method: str, path: str, query: dict[str, str], body: Any) -> None:
            segments = path.strip("/").split("/")
            if method == "GET" and path == "/mailFolders/inbox/messages/delta":
                if "delta" in graph.throttle:
                    graph.throttle.discard("delta")
                    graph.throttled_at = time.monotonic()
                    return self._error(429, "TooManyRequests", "Too many requests", {"Retry-After": "1"})
                return self._send(200, graph.delta(query))
            if method == "GET" and path == "/mailFolders":
                name = query["$filter"].removeprefix("displayName eq '").removesuffix("'")
                found = [{"id": graph.folders[name]}] if name in graph.folders else []
                return self._send(200, {"value": found})
            if segments[0] != "messages" or segments[1] not in graph.mail:
                return self._error(
                    404, "ErrorItemNotFound", "The specified object was not found in the store."
                )
            graph_id, meta = segments[1], graph.meta[segments[1]]
            if method == "GET" and segments[2:] == ["$value"]:
                return self._send(200, graph.mail[graph_id])
            if method == "GET" and not segments[2:]:
                return self._send(200, {"id": graph_id, "categories": meta["categories"]})
            if method == "PATCH" and not segments[2:]:
                meta.update(body)
                graph.changes.append(("upsert", graph_id))  # Graph lists changed messages again
                return self._send(200, {"id": graph_id, **meta})
            if method == "POST" and segments[2:] == ["move"]:
                del graph.mail[graph_id]
                graph.changes.append(("removed", graph_id))
                return self._send(201, {"id": graph_id + "moved", "parentFolderId": body["destinationId"]})
            return self._error(400, "BadRequest", f"unsupported {method} {path}")

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def do_PATCH(self) -> None:
            self._handle("PATCH")

        def log_message(self, *_args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def graph() -> Iterator[FakeGraph]:
    fake = FakeGraph()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    fake.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()


# -- ledger, pipeline, source ---------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    db.upgrade(engine)
    blobs = BlobStore(tmp_path / "blobs")
    yield Store(
        engine, Ledger(engine, blobs), Runtime(engine=engine, blobs=blobs, connectors=[]), source="graph"
    )
    engine.dispose()


def source_config(graph: FakeGraph, tmp_path: Path, **overrides: Any) -> GraphSourceConfig:
    secret = tmp_path / "graph-secret"
    secret.write_text(CLIENT_SECRET + "\n")
    return GraphSourceConfig.model_validate(
        {
            "name": "ap",
            "tenant_id": TENANT,
            "client_id": CLIENT_ID,
            "client_secret": {"file": str(secret)},
            "authority": graph.base,
            "graph_url": f"{graph.base}/v1.0",
            "user": USER,
            "poll_interval": "0.3s",
            "timeout": "5s",
            **overrides,
        }
    )


@contextmanager
def running(config: GraphSourceConfig, store: Store, tmp_path: Path) -> Iterator[GraphSource]:
    source = GraphSource(config, store.ledger, tmp_path / "data")
    source.start(store.ledger.accept)
    try:
        yield source
    finally:
        started = time.monotonic()
        source.stop()
        assert time.monotonic() - started < 3


# -- tests ----------------------------------------------------------------------------------------


def test_new_mail_lands_once_and_is_marked_read_only_after_processing(
    graph: FakeGraph, store: Store, tmp_path: Path
) -> None:
    ids = [graph.add(f"Invoice {n}") for n in range(3)]  # two delta pages
    with running(source_config(graph, tmp_path), store, tmp_path):
        wait_for(lambda: len(store.rows()) == 3, what="three messages")
        rows = store.rows()
        assert {r.mailbox for r in rows} == {"ap/inbox"}
        assert {r.subject for r in rows} == {"Invoice 0", "Invoice 1", "Invoice 2"}
        wait_for(lambda: len(graph.of("GET", "/messages/delta")) >= 3, what="another delta round")
        assert all(store.ledger.status(r.id) == "received" for r in rows)
        assert graph.of("PATCH") == [] and graph.of("POST") == []  # nothing before the commit
        assert store.process_all() == 3
        wait_for(lambda: len(graph.of("PATCH")) == 3, what="marked read")
        # Our PATCH makes Graph list the messages again: they must not be downloaded again.
        rounds = len(graph.of("GET", "/messages/delta"))
        wait_for(lambda: len(graph.of("GET", "/messages/delta")) >= rounds + 2, what="later rounds")
    assert [c.body for c in graph.of("PATCH")] == [{"isRead": True}] * 3
    assert all(graph.downloads(i) == 1 for i in ids)
    assert all(graph.meta[i]["isRead"] for i in ids)
    assert len(store.rows()) == 3
    assert all(store.ledger.status(r.id) == "processed" for r in store.rows())


def test_restart_resumes_from_the_stored_delta_link_and_moves_after_commit(
    graph: FakeGraph, store: Store, tmp_path: Path
) -> None:
    first = [graph.add("Invoice A"), graph.add("Invoice B")]
    config = source_config(graph, tmp_path, after_processing={"action": "move", "folder": "Processed"})
    with running(config, store, tmp_path):
        wait_for(lambda: len(store.rows()) == 2, what="first two")
    state = json.loads((tmp_path / "data" / "state" / "graph-ap.json").read_text())
    assert "$deltatoken=" in state["delta_link"] and sorted(state["pending"]) == sorted(first)
    assert graph.of("POST") == []

    store.process_all()  # processed while the source is down: the move is owed
    later = graph.add("Invoice C")
    before = len(graph.calls)
    with running(config, store, tmp_path):
        wait_for(lambda: len(store.rows()) == 3, what="the new one")
        wait_for(lambda: len(graph.of("POST", "/move")) == 2, what="owed moves")
        assert store.process_all() == 1
        wait_for(lambda: len(graph.of("POST", "/move")) == 3, what="third move")
        wait_for(lambda: not graph.mail, what="folder empty")
        rounds = len(graph.of("GET", "/messages/delta"))
        wait_for(lambda: len(graph.of("GET", "/messages/delta")) > rounds, what="round after the moves")
    restart_delta = next(c for c in graph.calls[before:] if c.path.endswith("/delta"))
    assert "$deltatoken" in restart_delta.query  # not a full listing
    assert all(graph.downloads(i) == 1 for i in [*first, later])
    assert {c.body["destinationId"] for c in graph.of("POST", "/move")} == {"AAMkFolderProcessed="}
    assert len(graph.of("GET", "/mailFolders")) == 1  # the display name is looked up once, then cached
    state = json.loads((tmp_path / "data" / "state" / "graph-ap.json").read_text())
    assert state["messages"] == {} and state["pending"] == []  # @removed after the move forgets them


def test_removed_entries_are_ignored(graph: FakeGraph, store: Store, tmp_path: Path) -> None:
    kept = graph.add("Invoice kept")
    with running(source_config(graph, tmp_path), store, tmp_path):
        wait_for(lambda: len(store.rows()) == 1, what="first")
        gone = graph.add("Invoice recalled")
        graph.delete(gone)  # the next delta round reports it only as @removed
        rounds = len(graph.of("GET", "/messages/delta"))
        wait_for(lambda: len(graph.of("GET", "/messages/delta")) >= rounds + 2, what="two more rounds")
    assert graph.downloads(gone) == 0 and graph.downloads(kept) == 1
    assert len(store.rows()) == 1


def test_failed_message_gets_the_failure_category(graph: FakeGraph, store: Store, tmp_path: Path) -> None:
    graph_id = graph.add("Invoice broken")
    with running(source_config(graph, tmp_path), store, tmp_path):  # on_failure: category
        (row,) = wait_for(store.rows, what="fetched")
        with db.session_scope(store.engine) as session:  # as if it had crashed the worker each time
            message = session.get(tables.Message, row.id)
            assert message is not None
            message.attempts = MAX_ATTEMPTS
        assert store.process_all() == 1
        assert store.ledger.status(row.id) == "failed"
        wait_for(lambda: graph.of("PATCH"), what="category")
    assert graph.meta[graph_id]["categories"] == ["Blue category", "Mailingest failed"]  # kept the user's
    assert graph.meta[graph_id]["isRead"] is False


def test_token_is_refreshed_before_expiry_and_after_a_401(
    graph: FakeGraph, store: Store, tmp_path: Path
) -> None:
    graph.expires_in = 1  # refreshed half a second before it runs out
    with running(source_config(graph, tmp_path), store, tmp_path):
        graph.add("Invoice 1")
        wait_for(lambda: len(store.rows()) == 1, what="first")
        wait_for(lambda: graph.token_requests >= 3, what="proactive refreshes")
        assert graph.unauthorized == 0
        graph.expires_in = 3599
        graph.revoke_tokens()  # the next call is refused: one refresh, one retry
        graph.add("Invoice 2")
        wait_for(lambda: len(store.rows()) == 2, what="second after the 401")
    assert graph.unauthorized >= 1


def test_throttling_waits_for_retry_after(graph: FakeGraph, store: Store, tmp_path: Path) -> None:
    graph.add("Invoice 1")
    graph.throttle.add("delta")
    with running(source_config(graph, tmp_path), store, tmp_path):
        wait_for(lambda: len(store.rows()) == 1, what="fetched after the 429")
    assert graph.throttled_at is not None
    refused, retried = graph.of("GET", "/messages/delta")[:2]
    assert refused.at == pytest.approx(graph.throttled_at, abs=0.05)
    assert retried.at - refused.at >= 0.95  # Retry-After: 1


def test_wrong_secret_is_logged_and_retried_without_crashing(
    graph: FakeGraph, store: Store, tmp_path: Path
) -> None:
    config = source_config(graph, tmp_path)
    (tmp_path / "graph-secret").write_text("wrong\n")
    with pytest.raises(SourceError, match="invalid_client"):
        GraphClient(config, config.client_secret, threading.Event()).token()
    with running(config, store, tmp_path) as source:
        wait_for(lambda: graph.token_requests >= 3, what="retries")  # 1 s, 2 s backoff
        assert source.thread.is_alive()
    assert store.rows() == [] and graph.calls == []


def test_missing_secret_refuses_to_start(graph: FakeGraph, store: Store, tmp_path: Path) -> None:
    config = source_config(graph, tmp_path, client_secret={"env": "MAILINGEST_TEST_NO_SUCH_SECRET"})
    with pytest.raises(ConfigError, match="MAILINGEST_TEST_NO_SUCH_SECRET"):
        GraphSource(config, store.ledger, tmp_path).start(store.ledger.accept)


def test_config_is_checked(tmp_path: Path) -> None:
    base = (
        '[[sources.graph]]\nname = "ap"\ntenant_id = "t"\nclient_id = "c"\nuser = "u@x"\n'
        'client_secret = { env = "S" }\n'
    )
    cases = {
        base.replace('{ env = "S" }', '"inline"'): "may not be written inline",
        base + 'after_processing = { action = "move", folder = "Inbox" }\n': "watched folder",
        base + base: "must be unique",
        base + "poll_intervall = 5\n": "poll_intervall: Extra inputs",
    }
    for text, message in cases.items():
        path = tmp_path / "c.toml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_config(path, environ={})
    path = tmp_path / "ok.toml"
    path.write_text(base)
    (graph,) = load_config(path, environ={}).sources.graph
    assert graph.folder == "inbox" and graph.after_processing.action == "read"
    assert graph.on_failure.action == "flag" and graph.poll_interval == 60


def test_daemon_end_to_end(
    graph: FakeGraph, tmp_path: Path, make_daemon: Callable[..., DaemonProcess]
) -> None:
    (tmp_path / "graph-secret").write_text(CLIENT_SECRET)
    graph_id = graph.add("Invoice via Graph")
    daemon = make_daemon(
        extra=f"""
[[sources.graph]]
name = "ap"
tenant_id = "{TENANT}"
client_id = "{CLIENT_ID}"
client_secret = {{ file = "{tmp_path / "graph-secret"}" }}
authority = "{graph.base}"
graph_url = "{graph.base}/v1.0"
user = "{USER}"
poll_interval = "0.5s"
"""
    )
    daemon.start()
    wait_for(lambda: graph.meta[graph_id]["isRead"], timeout=30, what="marked read by the daemon")
    assert daemon.get("/v1/stats")["messages"]["processed"] == 1
    assert daemon.stop() == 0
    assert graph.downloads(graph_id) == 1
