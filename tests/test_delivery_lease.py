"""Delivery leases on the machine's PostgreSQL: two dispatchers (as two daemons would run them)
share one outbox and one receiver; every event arrives exactly once, in order per invoice."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict

from sqlmodel import select

from mailingest.config import Secret, WebhookConfig
from mailingest.connectors.dispatcher import Dispatcher
from mailingest.connectors.webhook import WebhookConnector
from mailingest.storage import db, repo, tables
from tests.conftest import WEBHOOK_SECRET, WebhookReceiver


def dispatcher(url: str, receiver: WebhookReceiver, owner: str, **kw) -> Dispatcher:  # type: ignore[no-untyped-def]
    engine = db.make_engine(url)  # its own engine and pool, as a second daemon would have
    hook = WebhookConnector(
        WebhookConfig(name="erp", url=receiver.url, secret=Secret(env="T_SECRET"), allow_private_network=True)
    )
    return Dispatcher(engine, {"erp": hook}, schedule=[0, 0.2, 0.2], owner=owner, **kw)


def add_events(url: str, subjects: int, per_subject: int) -> list[str]:
    engine = db.make_engine(url)
    ids = []
    for n in range(per_subject):
        for s_ in range(subjects):
            with db.session_scope(engine) as s:
                event = repo.add_event(
                    s,
                    type="invoice.updated",
                    subject_id=f"inv_{s_}",
                    data={"subject": f"inv_{s_}", "n": n},
                    connectors=[("erp", ["*"])],
                )
                ids.append(event.id)
    engine.dispose()
    return ids


def test_two_dispatchers_on_one_database_deliver_each_event_once_in_order(
    pg_url, webhook_receiver, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("T_SECRET", WEBHOOK_SECRET)
    db.upgrade(db.make_engine(pg_url))
    a = dispatcher(pg_url, webhook_receiver, "host-a", concurrency=4, poll_interval=0.05)
    b = dispatcher(pg_url, webhook_receiver, "host-b", concurrency=4, poll_interval=0.05)
    sent = {"a": 0, "b": 0}
    for key, d in (("a", a), ("b", b)):
        original = d.connectors["erp"].deliver

        def counted(event_id, payload, key=key, original=original):  # type: ignore[no-untyped-def]
            sent[key] += 1
            return original(event_id, payload)

        d.connectors["erp"].deliver = counted  # type: ignore[method-assign]
    threads = [threading.Thread(target=d.run_forever, daemon=True) for d in (a, b)]
    for t in threads:
        t.start()
    ids = add_events(pg_url, subjects=8, per_subject=10)
    webhook_receiver.wait_for(lambda got: len(got) >= len(ids), timeout=40)
    time.sleep(0.5)  # time for any wrongful repeat to show up
    for d in (a, b):
        d.stop()
    for t in threads:
        t.join(10)
    got = webhook_receiver.requests
    assert sorted(r.headers["webhook-id"] for r in got) == sorted(ids)  # every event once, no repeats
    per_subject: dict[str, list[int]] = defaultdict(list)
    for r in got:
        per_subject[r.json["data"]["subject"]].append(r.json["data"]["n"])
    assert all(ns == list(range(10)) for ns in per_subject.values()), per_subject
    with db.session_scope(a.engine) as s:
        owners = {d.claimed_by for d in s.exec(select(tables.Delivery))}
        assert owners == {None}  # leases end with the attempt
        attempts = s.exec(select(tables.DeliveryAttempt)).all()
        assert len(attempts) == len(ids)
    with db.session_scope(a.engine) as s:
        assert s.exec(select(tables.Delivery).where(tables.Delivery.status != "delivered")).all() == []
    assert sent["a"] > 0 and sent["b"] > 0 and sent["a"] + sent["b"] == len(ids)  # really shared
    a.close()
    b.close()


def test_a_dead_dispatchers_lease_runs_out_and_a_restart_takes_its_own_back(
    pg_url, webhook_receiver, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("T_SECRET", WEBHOOK_SECRET)
    engine = db.make_engine(pg_url)
    db.upgrade(engine)
    [event_id] = add_events(pg_url, subjects=1, per_subject=1)
    # a dispatcher on "host-a" leases the delivery and dies before sending it
    with db.session_scope(engine) as s:
        [(claimed, _)] = repo.claim_deliveries(
            s, connector="erp", limit=5, token="host-a#1-dead", lease=1.0, postgres=True
        )
        assert claimed.claimed_by == "host-a#1-dead"
    other = dispatcher(pg_url, webhook_receiver, "host-b")
    assert other.run_once() == 0  # still leased: not sent twice concurrently
    time.sleep(1.1)
    assert other.run_once() == 1  # the lease ran out: host-b takes over
    assert [r.headers["webhook-id"] for r in webhook_receiver.accepted()] == [event_id]
    other.close()

    # a restarted dispatcher drops its own stale leases at once instead of waiting them out
    [second] = add_events(pg_url, subjects=1, per_subject=1)
    with db.session_scope(engine) as s:
        repo.claim_deliveries(s, connector="erp", limit=5, token="host-a#1-dead", lease=600, postgres=True)
    stranger = dispatcher(pg_url, webhook_receiver, "host-c")
    assert stranger.run_once() == 0
    stranger.close()
    restarted = dispatcher(pg_url, webhook_receiver, "host-a")
    assert restarted.run_once() == 1
    assert [r.headers["webhook-id"] for r in webhook_receiver.accepted()] == [event_id, second]
    restarted.close()


def test_a_result_from_a_lost_lease_is_not_recorded(pg_url, webhook_receiver, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A dispatcher whose lease ran out mid-send (and was taken over) must not overwrite the
    new holder's bookkeeping; the receiver de-duplicates the repeat by webhook-id."""
    monkeypatch.setenv("T_SECRET", WEBHOOK_SECRET)
    engine = db.make_engine(pg_url)
    db.upgrade(engine)
    add_events(pg_url, subjects=1, per_subject=1)
    slow = dispatcher(pg_url, webhook_receiver, "host-a", lease=0.3)
    webhook_receiver.responses = [(200, {})]
    original = slow.connectors["erp"].deliver

    started, release = threading.Event(), threading.Event()

    def late(event_id, payload):  # type: ignore[no-untyped-def]
        started.set()
        release.wait(10)  # held past its lease until the other dispatcher has delivered
        return original(event_id, payload)

    slow.connectors["erp"].deliver = late  # type: ignore[method-assign]
    thread = threading.Thread(target=slow.run_once)
    thread.start()
    assert started.wait(10)  # claimed and sending
    time.sleep(0.5)  # its 0.3 s lease has run out (however slow the machine was to get here)
    fast = dispatcher(pg_url, webhook_receiver, "host-b")
    assert fast.run_once() == 1  # took over the expired lease and delivered
    release.set()
    thread.join(10)
    with db.session_scope(engine) as s:
        [delivery] = s.exec(select(tables.Delivery)).all()
        attempts = s.exec(select(tables.DeliveryAttempt)).all()
    assert delivery.status == "delivered" and len(attempts) == 1  # the late result was dropped
    assert len({r.headers["webhook-id"] for r in webhook_receiver.accepted()}) == 1
    slow.close()
    fast.close()


def test_kill_9_during_delivery_then_restart_delivers_each_event_once_per_endpoint(
    make_daemon, pg_url
) -> None:  # type: ignore[no-untyped-def]
    """The real daemon on PostgreSQL is killed while a webhook request is in flight (the receiver
    holds it); after the restart the daemon takes its own lease back at once (not after 30 s),
    sends that event again with the same webhook-id, and every event ends up delivered once
    per endpoint (the receiver de-duplicates by webhook-id)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from tests.conftest import FIXTURES

    seen: list[tuple[str, str]] = []  # (webhook-id, type), every request including repeats
    hold = threading.Event()
    lock = threading.Lock()

    class Slow(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            with lock:
                first = not seen
                seen.append((self.headers["webhook-id"], body["type"]))
            if first:
                hold.set()
                time.sleep(4)  # the daemon is killed meanwhile: this answer goes nowhere
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        daemon = make_daemon(
            f"http://127.0.0.1:{server.server_address[1]}/hook", extra=f'\n[storage]\nurl = "{pg_url}"\n'
        )
        daemon.start()
        ubl = FIXTURES / "einvoice" / "xrechnung-testsuite__business-cases__standard__01.01a-INVOICE_ubl.xml"
        (daemon.drop / ubl.name).write_bytes(ubl.read_bytes())
        assert hold.wait(30), daemon.log()
        daemon.kill()
        with lock:
            killed_id = seen[0][0]
            before = {webhook_id for webhook_id, _ in seen}  # sent before the kill: may repeat once
        restarted = time.monotonic()
        daemon.start()
        stats = daemon.wait_processed(
            lambda s: s["deliveries"] and set(s["deliveries"]) == {"delivered"}, timeout=30
        )
        assert time.monotonic() - restarted < 20  # its own stale lease was dropped, not waited out
        delivered = stats["deliveries"]["delivered"]
        time.sleep(1)  # time for any wrongful repeat to show up
        with lock:
            unique = {webhook_id for webhook_id, _ in seen}
            counts = {w: [x for x, _ in seen].count(w) for w in unique}
        assert len(unique) == delivered  # every event reached the endpoint (once, de-duplicated)
        assert counts[killed_id] == 2  # the interrupted one again, with the same webhook-id
        assert all(n == 1 for w, n in counts.items() if w not in before)  # nothing else repeated
        assert all(n <= 2 for n in counts.values())  # in flight at the kill: at most once more
        assert {t for _, t in seen} >= {"document.received", "invoice.extracted"}
        assert daemon.stop() == 0
    finally:
        server.shutdown()
        server.server_close()
