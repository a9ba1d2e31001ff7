#!/usr/bin/env python3
"""Benchmark: the delivery engine alone — outbox events through the dispatcher to 4 webhook
endpoints on loopback, and to 4 NATS JetStream connectors (127.0.0.1:4222).

Two runs per transport:

* **burst**: N events committed first, then the dispatcher starts; deliveries/s (events × 4
  endpoints) from start until the last acknowledgement.
* **paced**: events committed at ``--rate`` per second while the dispatcher runs (woken at each
  commit, as the pipeline does); latency from the event's commit to the destination's
  acknowledgement (webhook 2xx received / JetStream PubAck), p50 and p95 over all deliveries.

Each event has its own invoice, so ordering per invoice does not serialise the run. Not a test:
it asserts completeness and prints figures (also written to bench/results/).

    .venv/bin/python bench/delivery_throughput.py [--events 2000] [--rate 100] [--postgres URL]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailingest import logs
from mailingest.config import NatsConfig, Secret, WebhookConfig
from mailingest.connectors.base import Connector
from mailingest.connectors.dispatcher import Dispatcher
from mailingest.connectors.nats import NatsConnector
from mailingest.connectors.webhook import WebhookConnector
from mailingest.storage import db, repo

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ENDPOINTS = 4
INVOICE = {
    "id": "inv_x",
    "number": "BENCH-1",
    "type": "invoice",
    "status": "validated",
    "currency": "EUR",
    "seller": {"name": "Bench Supplies GmbH", "vat_id": "DE811907980"},
    "buyer": {"name": "Buyer AG"},
    "totals": {"net": "100.00", "tax": "19.00", "gross": "119.00", "amount_due": "119.00"},
    "lines": [{"id": str(n), "name": f"Item {n}", "quantity": "1", "net_amount": "10.00"} for n in range(10)],
}


class Quiet(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver would

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *_args: Any) -> None:
        pass


def serve_receivers(ports: Any) -> None:
    """Child process: the 4 receivers (out of the dispatcher's process, so they do not share
    its GIL, as real receivers would not)."""
    servers = []
    for _ in range(ENDPOINTS):
        server = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    ports.put([s.server_address[1] for s in servers])
    threading.Event().wait()


def receivers() -> tuple[list[int], multiprocessing.Process]:
    ports: Any = multiprocessing.Queue()
    child = multiprocessing.Process(target=serve_receivers, args=(ports,), daemon=True)
    child.start()
    return ports.get(timeout=30), child


def webhook_connectors(ports: list[int]) -> dict[str, Connector]:
    os.environ["BENCH_SECRET"] = SECRET
    return {
        f"hook{i}": WebhookConnector(
            WebhookConfig(
                name=f"hook{i}",
                url=f"http://127.0.0.1:{port}/hook",
                secret=Secret(env="BENCH_SECRET"),
                allow_private_network=True,
            )
        )
        for i, port in enumerate(ports)
    }


def nats_connectors(url: str, run: str) -> dict[str, Connector]:
    return {
        f"bus{i}": NatsConnector(
            NatsConfig(name=f"bus{i}", url=url, subject=f"bench{run}x{i}.{{type}}", stream=f"BENCH_{run}_{i}")
        )
        for i in range(ENDPOINTS)
    }


def drop_nats_streams(url: str, run: str) -> None:
    import asyncio

    import nats

    async def go() -> None:
        nc = await nats.connect(url)
        js = nc.jetstream()
        for i in range(ENDPOINTS):
            with contextlib.suppress(Exception):  # cleanup is best effort
                await js.delete_stream(f"BENCH_{run}_{i}")
        await nc.close()

    asyncio.run(go())


class Clock:
    """Commit times per event and acknowledgement times per (connector, event)."""

    def __init__(self) -> None:
        self.committed: dict[str, float] = {}
        self.acked: dict[tuple[str, str], float] = {}
        self.lock = threading.Lock()

    def wrap(self, name: str, connector: Connector) -> None:
        original = connector.deliver

        def deliver(event_id: str, payload: dict[str, Any]) -> Any:
            done = original(event_id, payload)
            with self.lock:
                self.acked[(name, event_id)] = time.perf_counter()
            return done

        connector.deliver = deliver  # type: ignore[method-assign]


def commit(engine: Any, names: list[str], n: int, clock: Clock) -> None:
    with db.session_scope(engine) as session:
        event = repo.add_event(
            session,
            type="invoice.validated",
            subject_id=f"inv_{n}",
            data={**INVOICE, "id": f"inv_{n}"},
            connectors=[(name, ["*"]) for name in names],
        )
        event_id = event.id
    clock.committed[event_id] = time.perf_counter()


def wait_all(clock: Clock, expected: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with clock.lock:
            if len(clock.acked) >= expected:
                return
        time.sleep(0.01)
    raise SystemExit(f"only {len(clock.acked)} of {expected} deliveries acknowledged in {timeout}s")


def run(
    label: str, url: str, make: Callable[[], dict[str, Connector]], events: int, rate: float, concurrency: int
) -> dict[str, Any]:
    out: dict[str, Any] = {"transport": label, "endpoints": ENDPOINTS, "events": events}
    for mode in ("burst", "paced"):
        engine = db.make_engine(url)
        db.upgrade(engine)
        connectors = make()
        names = list(connectors)
        clock = Clock()
        for name, connector in connectors.items():
            clock.wrap(name, connector)
        dispatcher = Dispatcher(
            engine, connectors, schedule=[0, 1, 5], concurrency=concurrency, poll_interval=0.2
        )
        # warm-up: connections (HTTP keep-alive, NATS connect + stream) outside the measurement
        commit(engine, names, -1, clock)
        dispatcher.run_once()
        clock.acked.clear()
        clock.committed.clear()
        thread = threading.Thread(target=dispatcher.run_forever, daemon=True)
        if mode == "burst":
            for n in range(events):
                commit(engine, names, n, clock)
            started = time.perf_counter()
            thread.start()
            wait_all(clock, events * ENDPOINTS, 600)
            elapsed = max(clock.acked.values()) - started
            out["burst_deliveries_per_s"] = round(events * ENDPOINTS / elapsed, 1)
            out["burst_events_per_s"] = round(events / elapsed, 1)
        else:
            thread.start()
            started = time.perf_counter()
            for n in range(events):
                target = started + n / rate
                pause = target - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                commit(engine, names, n, clock)
                dispatcher.wake.set()
            wait_all(clock, events * ENDPOINTS, 600)
            latencies = sorted(
                (acked - clock.committed[event_id]) * 1000 for (_, event_id), acked in clock.acked.items()
            )
            q = statistics.quantiles(latencies, n=100)
            out["paced_rate"] = rate
            out["paced_events_per_s"] = round(events / (max(clock.acked.values()) - started), 1)
            out["latency_ms_p50"] = round(q[49], 1)
            out["latency_ms_p95"] = round(q[94], 1)
            out["latency_ms_max"] = round(latencies[-1], 1)
        dispatcher.stop()
        thread.join(30)
        dispatcher.close()
        engine.dispose()
    return out


SCRATCH: list[str] = []


def fresh_postgres(url: str) -> str:
    import psycopg

    base = url.replace("postgresql+psycopg://", "postgresql://")
    name = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    SCRATCH.append(name)
    return url.rsplit("/", 1)[0] + "/" + name


def drop_scratch(url: str) -> None:
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        for name in SCRATCH:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=100.0, help="events/s offered in the paced run")
    parser.add_argument("--concurrency", type=int, default=8, help="[outbox] concurrency (per connector)")
    parser.add_argument("--postgres", metavar="URL", help="an existing database to create a scratch one from")
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    parser.add_argument("--skip-nats", action="store_true")
    args = parser.parse_args()
    logs.configure("error", "json")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        counter = iter(range(100))

        def url() -> str:
            if args.postgres:
                return fresh_postgres(args.postgres)
            return f"sqlite:///{tmp}/bench{next(counter)}.db"

        ports, child = receivers()
        try:
            results.append(
                run(
                    "webhook",
                    url(),
                    lambda: webhook_connectors(ports),
                    args.events,
                    args.rate,
                    args.concurrency,
                )
            )
        finally:
            child.terminate()
        if not args.skip_nats:
            runs = []

            def make_nats() -> dict[str, Connector]:
                runs.append(uuid.uuid4().hex[:6])
                return nats_connectors(args.nats, runs[-1])

            try:
                results.append(run("nats", url(), make_nats, args.events, args.rate, args.concurrency))
            finally:
                for run_id in runs:
                    drop_nats_streams(args.nats, run_id)
    if args.postgres:
        drop_scratch(args.postgres)
    database = "postgresql" if args.postgres else "sqlite"
    for r in results:
        r["database"] = database
        print(
            f"{r['transport']:8} {database:10} burst {r['burst_events_per_s']:7.1f} events/s "
            f"({r['burst_deliveries_per_s']:.1f} deliveries/s to {ENDPOINTS} endpoints) | paced {r['paced_rate']:g}/s: "
            f"commit→ack p50 {r['latency_ms_p50']} ms, p95 {r['latency_ms_p95']} ms, max {r['latency_ms_max']} ms"
        )
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / f"delivery_throughput-{int(time.time())}.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
