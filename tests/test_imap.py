"""The IMAP source against a real Dovecot (tests/dovecot.py): the source with a real ledger and
pipeline on SQLite, then the real daemon end to end. No mocks: where a test needs the server to
misbehave it stops it, takes capabilities away, or puts a TCP proxy in the way."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import col, func, select

from mailingest.config import ImapSourceConfig, load_config
from mailingest.connectors.webhook import verify
from mailingest.errors import ConfigError, SourceError
from mailingest.ledger import Ledger
from mailingest.pipeline.runner import MAX_ATTEMPTS, Runtime, process_next
from mailingest.sources.imap import ImapSource
from mailingest.sources.imap_session import connect
from mailingest.storage import db, tables
from mailingest.storage.blobs import BlobStore
from tests.conftest import FIXTURES, WEBHOOK_SECRET, DaemonProcess, WebhookReceiver
from tests.dovecot import Dovecot, HoldingProxy

UBL = FIXTURES / "einvoice" / "xrechnung-testsuite__business-cases__standard__01.01a-INVOICE_ubl.xml"
T = TypeVar("T")


def invoice_mail(subject: str = "Invoice March", padding: int = 0) -> bytes:
    """A mail with the UBL invoice attached; unique Message-ID, so every call gives new bytes."""
    msg = EmailMessage()
    msg["From"] = "Billing <billing@vendor.example>"
    msg["To"] = "ap@buyer.example"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{time.time_ns()}@vendor.example>"
    msg.set_content("Please find our invoice attached.\n" + "x" * padding)
    msg.add_attachment(UBL.read_bytes(), maintype="application", subtype="xml", filename=UBL.name)
    return msg.as_bytes(policy=SMTP)


def wait_for(probe: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll until ``probe()`` is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(0.05)


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    server = Dovecot()
    server.start()
    yield server
    server.cleanup()


@dataclass
class Store:
    """A real ledger and pipeline on a SQLite file; the test decides when the pipeline runs."""

    engine: Engine
    ledger: Ledger
    runtime: Runtime
    source: str = "imap"  # whose ledger rows rows() lists (test_graph.py uses "graph")

    def rows(self) -> list[tables.Message]:
        with db.session_scope(self.engine) as session:
            query = select(tables.Message).where(tables.Message.source == self.source)
            return list(session.exec(query.order_by(col(tables.Message.received_at))).all())

    def process_all(self) -> int:
        count = 0
        while process_next(self.runtime):
            count += 1
        return count

    def invoices(self) -> int:
        with db.session_scope(self.engine) as session:
            return int(session.exec(select(func.count()).select_from(tables.Invoice)).one())


@pytest.fixture
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """SQLite unless a test asks for PostgreSQL too (``BOTH_DATABASES``)."""
    if getattr(request, "param", "sqlite") == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite:///{tmp_path / 'ledger.db'}"


BOTH_DATABASES = pytest.mark.parametrize("store_url", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def store(store_url: str, tmp_path: Path) -> Iterator[Store]:
    engine = db.make_engine(store_url)
    db.upgrade(engine)
    blobs = BlobStore(tmp_path / "blobs")
    yield Store(engine, Ledger(engine, blobs), Runtime(engine=engine, blobs=blobs, connectors=[]))
    engine.dispose()


def account(server: Dovecot, tmp_path: Path, **overrides: Any) -> ImapSourceConfig:
    secret = tmp_path / "imap-password"
    secret.write_text(server.password + "\n")
    return ImapSourceConfig.model_validate(
        {
            "name": "ap",
            "host": server.host,
            "port": server.port,
            "security": "none",
            "username": server.user,
            "password": {"file": str(secret)},
            "poll_interval": "2s",  # the safety net; pushes come through IDLE well before
            **overrides,
        }
    )


@contextmanager
def running(config: ImapSourceConfig, store: Store, sink: Any = None) -> Iterator[ImapSource]:
    source = ImapSource(config, store.ledger)
    source.start(sink or store.ledger.accept)
    try:
        yield source
    finally:
        source.stop()


# -- the source with a real ledger and pipeline ---------------------------------------------------


@BOTH_DATABASES
def test_fetched_once_with_peek_and_moved_only_after_processing(
    dovecot: Dovecot, store: Store, tmp_path: Path
) -> None:
    uid = dovecot.append("INBOX", invoice_mail())
    config = account(dovecot, tmp_path, after_processing={"action": "move", "folder": "Processed"})
    with running(config, store):
        (row,) = wait_for(store.rows, what="message in the ledger")
        assert (row.status, row.mailbox, row.uid) == ("received", "ap/INBOX", uid)
        assert row.uidvalidity == dovecot.uidvalidity("INBOX")
        time.sleep(0.8)  # longer than the source's ledger check: it must still leave the mail alone
        assert dovecot.list("INBOX") == [uid]
        assert "\\Seen" not in dovecot.flags("INBOX")[uid]  # BODY.PEEK[]
        assert store.process_all() == 1
        wait_for(lambda: dovecot.list("INBOX") == [] and dovecot.list("Processed"), what="moved")
    assert [r.status for r in store.rows()] == ["processed"]
    assert store.invoices() == 1
    (moved,) = dovecot.list("Processed")
    assert "\\Seen" not in dovecot.flags("Processed")[moved]  # left for a person to read


def test_restart_neither_refetches_nor_forgets_owed_actions(
    dovecot: Dovecot, store: Store, tmp_path: Path
) -> None:
    handed: list[int] = []

    def sink(raw: bytes, **kw: Any) -> str:
        msg_id = store.ledger.accept(raw, **kw)
        handed.append(kw["uid"])
        return msg_id

    config = account(dovecot, tmp_path)  # after_processing: seen
    first = dovecot.append("INBOX", invoice_mail("first"))
    with running(config, store, sink):
        wait_for(lambda: handed == [first], what="first mail fetched")
    # stopped before processing: the \Seen it is owed must not be lost
    assert store.process_all() == 1
    assert "\\Seen" not in dovecot.flags("INBOX")[first]
    second = dovecot.append("INBOX", invoice_mail("second"))  # arrives while the source is down
    with running(config, store, sink):
        wait_for(lambda: "\\Seen" in dovecot.flags("INBOX")[first], what="owed action applied")
        wait_for(lambda: handed == [first, second], what="second mail fetched")
        assert store.process_all() == 1
        wait_for(lambda: "\\Seen" in dovecot.flags("INBOX")[second], what="second marked seen")
    assert handed == [first, second]
    assert [r.uid for r in store.rows()] == [first, second]


def test_mail_appended_while_idle_arrives_within_two_seconds(
    dovecot: Dovecot, store: Store, tmp_path: Path
) -> None:
    dovecot.append("INBOX", invoice_mail("warm-up"))
    config = account(dovecot, tmp_path, poll_interval="30s")  # a fast pick-up can only be IDLE's doing
    with running(config, store) as source:
        wait_for(lambda: len(store.rows()) == 1)
        latencies = []
        for n in range(3):
            wait_for(lambda: dovecot.idling() == 1, what="watcher in IDLE")
            started = time.monotonic()
            dovecot.append("INBOX", invoice_mail(f"mail {n}"))
            wait_for(lambda n=n: len(store.rows()) == n + 2, timeout=5, what="pushed mail")  # type: ignore[misc]
            latencies.append(time.monotonic() - started)
        assert max(latencies) < 2.0, latencies
        print(f"IMAP IDLE push, APPEND → ledger: p50 {statistics.median(latencies) * 1000:.0f} ms")
        started = time.monotonic()
        source.stop()
        assert time.monotonic() - started < 2.0


@BOTH_DATABASES
def test_uidvalidity_change_does_not_process_the_same_mail_twice(
    dovecot: Dovecot, store: Store, tmp_path: Path
) -> None:
    raw = invoice_mail()
    dovecot.append("Invoices", raw)
    config = account(dovecot, tmp_path, folders=["Invoices"], after_processing={"action": "move"})
    with running(config, store):
        (original,) = wait_for(store.rows, what="mail fetched")
        before = dovecot.uidvalidity("Invoices")
        dovecot.delete("Invoices")  # a recreated mailbox gets a new UIDVALIDITY: old UIDs are void
        dovecot.append("Invoices", raw)
        assert dovecot.uidvalidity("Invoices") != before
        wait_for(lambda: len(store.rows()) == 2, what="re-listed")
        again = store.rows()[1]
        assert again.uidvalidity != original.uidvalidity
        assert (again.status, again.duplicate_of) == ("duplicate", original.id)
        time.sleep(0.8)
        assert dovecot.list("Invoices"), "a duplicate waits for its original's outcome"
        assert store.process_all() == 1  # the original only
        wait_for(lambda: not dovecot.list("Invoices") and dovecot.list("Processed"), what="moved")
    assert store.invoices() == 1


def test_oversized_mail_is_not_fetched_and_goes_to_failed(
    dovecot: Dovecot, store: Store, tmp_path: Path
) -> None:
    big = dovecot.append("INBOX", invoice_mail("big", padding=60_000))
    small = dovecot.append("INBOX", invoice_mail("small"))
    config = account(dovecot, tmp_path, max_message_bytes=30_000, on_failure={"action": "move"})
    with running(config, store):
        wait_for(lambda: dovecot.list("Failed"), what="big mail moved to Failed")
        (row,) = wait_for(store.rows)
        assert row.uid == small
    assert dovecot.list("INBOX") == [small]
    assert big not in [r.uid for r in store.rows()]


def test_failed_message_gets_the_failure_keyword_and_stays_unread(
    dovecot: Dovecot, store: Store, tmp_path: Path
) -> None:
    uid = dovecot.append("INBOX", invoice_mail())
    with running(account(dovecot, tmp_path), store):  # on_failure: flag $MailingestFailed
        (row,) = wait_for(store.rows)
        with db.session_scope(store.engine) as session:  # as if it had crashed the worker each time
            message = session.get(tables.Message, row.id)
            assert message is not None
            message.attempts = MAX_ATTEMPTS
        assert store.process_all() == 1
        assert store.ledger.status(row.id) == "failed"
        wait_for(lambda: "$MailingestFailed" in dovecot.flags("INBOX")[uid], what="failure keyword")
    assert "\\Seen" not in dovecot.flags("INBOX")[uid]


def test_reconnects_after_the_server_restarts(dovecot: Dovecot, store: Store, tmp_path: Path) -> None:
    with running(account(dovecot, tmp_path), store):
        first = dovecot.append("INBOX", invoice_mail("before"))
        wait_for(lambda: len(store.rows()) == 1)
        dovecot.stop()
        dovecot.start()
        wait_for(lambda: dovecot.idling() == 1, timeout=15, what="reconnected")
        second = dovecot.append("INBOX", invoice_mail("after"))
        wait_for(lambda: len(store.rows()) == 2, timeout=15, what="fetched after the restart")
        assert store.process_all() == 2
        wait_for(lambda: all("\\Seen" in f for f in dovecot.flags("INBOX").values()), what="marked seen")
    assert [r.uid for r in store.rows()] == [first, second]


def test_polls_and_moves_without_idle_or_move_capability(store: Store, tmp_path: Path) -> None:
    server = Dovecot(extra_config="imap_capability = IMAP4rev1 UIDPLUS")  # no IDLE, no MOVE
    server.start()
    try:
        config = account(server, tmp_path, poll_interval="0.3s", after_processing={"action": "move"})
        with running(config, store):
            uid = server.append("INBOX", invoice_mail())
            (row,) = wait_for(store.rows, what="polled")
            assert row.uid == uid and server.idling() == 0
            assert store.process_all() == 1
            wait_for(lambda: server.list("Processed"), what="copied")
            wait_for(lambda: server.list("INBOX") == [], what="expunged from INBOX")
    finally:
        server.cleanup()


def test_tls_verifies_certificates_unless_told_not_to(store: Store, tmp_path: Path) -> None:
    server = Dovecot(tls=True)  # self-signed certificate
    server.start()
    try:
        for security, port in (("tls", server.tls_port), ("starttls", server.port)):
            strict = account(server, tmp_path, security=security, port=port)
            with pytest.raises(SourceError, match="certificate not trusted"):
                connect(strict, server.password)
        lax = account(server, tmp_path, security="tls", port=server.tls_port, verify_certificate=False)
        uid = server.append("INBOX", invoice_mail())
        with running(lax, store):
            (row,) = wait_for(store.rows, what="fetched over TLS")
        assert row.uid == uid
    finally:
        server.cleanup()


def test_a_wrong_password_is_reported_as_such(dovecot: Dovecot, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="login refused"):
        connect(account(dovecot, tmp_path), "wrong")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('pasword = { env = "X" }', "sources.imap.0.pasword"),
        ('password = "inline"', "inline"),
        ('after_processing = { action = "move", folder = "INBOX" }', "watched folder"),
        ('after_processing = { action = "archive" }', "after_processing.action"),
        ('on_failure = { action = "flag", flag = "has space" }', "on_failure.flag"),
        ('idle_timeout = "31m"', "idle_timeout"),
    ],
)
def test_config_rejects_mistakes_with_their_path(tmp_path: Path, extra: str, message: str) -> None:
    fields = {"name": '"ap"', "host": '"imap.example.com"', "username": '"ap"', "password": '{ env = "P" }'}
    key = extra.split(" ", 1)[0]
    fields.pop(key, None)
    lines = [f"{k} = {v}" for k, v in fields.items()]
    path = tmp_path / "c.toml"
    path.write_text("[[sources.imap]]\n" + "\n".join([*lines, extra]) + "\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path, environ={})


def test_config_defaults_and_unique_names(tmp_path: Path) -> None:
    account_toml = '[[sources.imap]]\nname = "ap"\nhost = "h"\nusername = "u"\npassword = { env = "P" }\n'
    path = tmp_path / "c.toml"
    path.write_text(account_toml)
    (imap,) = load_config(path, environ={}).sources.imap
    assert (imap.effective_port, imap.folders, imap.after_processing.action) == (993, ["INBOX"], "seen")
    assert (imap.on_failure.action, imap.idle_timeout, imap.reconnect_max) == ("flag", 1500, 300)
    assert imap.model_copy(update={"security": "starttls"}).effective_port == 143
    path.write_text(account_toml * 2)
    with pytest.raises(ConfigError, match="unique"):
        load_config(path, environ={})


# -- the real daemon ------------------------------------------------------------------------------


def imap_toml(port: int, secret: Path) -> str:
    return f"""
[[sources.imap]]
name = "ap"
host = "127.0.0.1"
port = {port}
security = "none"
username = "alice"
password = {{ file = "{secret}" }}
after_processing = {{ action = "move", folder = "Processed" }}
poll_interval = "5s"
"""


def extracted(got: list[Any]) -> list[Any]:
    return [r for r in got if r.json["type"] == "invoice.extracted"]


@pytest.mark.e2e
def test_daemon_turns_an_imap_mail_into_a_signed_webhook(
    make_daemon: Callable[..., DaemonProcess],
    webhook_receiver: WebhookReceiver,
    dovecot: Dovecot,
    tmp_path: Path,
) -> None:
    secret = tmp_path / "imap-password"
    secret.write_text(dovecot.password)
    daemon = make_daemon(webhook_receiver.url, extra=imap_toml(dovecot.port, secret))
    daemon.start()
    wait_for(lambda: dovecot.idling() == 1, what="daemon waiting in IDLE")
    dovecot.append("INBOX", invoice_mail())
    got = webhook_receiver.wait_for(lambda g: len(extracted(g)) == 1)
    (hook,) = extracted(got)
    assert verify(WEBHOOK_SECRET, hook.headers, hook.body)
    invoice = hook.json["data"]
    assert invoice["source"]["channel"] == "imap" and invoice["source"]["mailbox"] == "ap/INBOX"
    wait_for(lambda: dovecot.list("INBOX") == [] and dovecot.list("Processed"), what="moved")
    assert daemon.stop() == 0


@pytest.mark.e2e
def test_daemon_killed_before_the_move_moves_once_and_delivers_once(
    make_daemon: Callable[..., DaemonProcess],
    webhook_receiver: WebhookReceiver,
    dovecot: Dovecot,
    tmp_path: Path,
) -> None:
    secret = tmp_path / "imap-password"
    secret.write_text(dovecot.password)
    proxy = HoldingProxy(dovecot.port, hold=b" MOVE ")  # swallows the daemon's MOVE: it waits forever
    try:
        daemon = make_daemon(webhook_receiver.url, extra=imap_toml(proxy.port, secret))
        daemon.start()
        wait_for(lambda: dovecot.idling() == 1, what="daemon waiting in IDLE")
        dovecot.append("INBOX", invoice_mail())
        assert proxy.held.wait(20), daemon.log()
        assert daemon.get("/v1/stats")["messages"] == {"processed": 1}  # committed, not yet moved
        daemon.kill()
        assert len(dovecot.list("INBOX")) == 1
        proxy.hold = None
        daemon.start()
        wait_for(lambda: dovecot.list("INBOX") == [] and dovecot.list("Processed"), what="moved")
        webhook_receiver.wait_for(lambda g: len(extracted(g)) == 1)
        time.sleep(1.5)  # time enough for any wrongful repeat to show up
        ids = [r.headers["webhook-id"] for r in webhook_receiver.accepted()]
        assert len(ids) == len(set(ids)), "an event was delivered twice"
        assert len(extracted(webhook_receiver.accepted())) == 1
        stats = daemon.get("/v1/stats")
        assert sum(stats["invoices"].values()) == 1 and stats["messages"] == {"processed": 1}
        assert len(dovecot.list("Processed")) == 1
    finally:
        proxy.close()
