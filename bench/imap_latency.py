#!/usr/bin/env python3
"""Benchmark: IMAP push latency against a real Dovecot (started like the tests do).

Prints p50/p95/max of
  1. APPEND (by another client) → message committed to the ledger, the IMAP source in-process;
  2. APPEND → signed ``invoice.extracted`` webhook received, through the real daemon.
Each mail is appended while the source waits in IDLE (read from Dovecot's process titles), so
the figures are the steady-state push path. Not a test: it asserts nothing but completeness.

    .venv/bin/python bench/imap_latency.py [--tries 10]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from email.message import EmailMessage
from email.policy import SMTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from sqlmodel import func, select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mailingest.config import ImapSourceConfig  # noqa: E402
from mailingest.ledger import Ledger  # noqa: E402
from mailingest.sources.imap import ImapSource  # noqa: E402
from mailingest.storage import db, tables  # noqa: E402
from mailingest.storage.blobs import BlobStore  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.dovecot import Dovecot  # noqa: E402

UBL = ROOT / "fixtures" / "einvoice" / "xrechnung-testsuite__business-cases__standard__01.01a-INVOICE_ubl.xml"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def mail(n: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = "billing@vendor.example"
    msg["To"] = "ap@buyer.example"
    msg["Subject"] = f"Invoice {n}"
    msg["Message-ID"] = f"<{time.time_ns()}.{n}@vendor.example>"
    msg.set_content("Invoice attached.")
    msg.add_attachment(UBL.read_bytes(), maintype="application", subtype="xml", filename=UBL.name)
    return msg.as_bytes(policy=SMTP)


def wait(probe: Callable[[], Any], timeout: float = 30.0, step: float = 0.005) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting")
        time.sleep(step)


def summary(name: str, seconds: list[float]) -> None:
    ms = sorted(s * 1000 for s in seconds)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    print(f"{name}: n={len(ms)} p50={statistics.median(ms):.0f} ms p95={p95:.0f} ms max={ms[-1]:.0f} ms")


def to_ledger(server: Dovecot, work: Path, tries: int) -> list[float]:
    engine = db.make_engine(f"sqlite:///{work / 'bench.db'}")
    db.upgrade(engine)
    ledger = Ledger(engine, BlobStore(work / "blobs"))
    (work / "pw").write_text(server.password)
    config = ImapSourceConfig.model_validate(
        {"name": "bench", "host": server.host, "port": server.port, "security": "none",
         "username": server.user, "password": {"file": str(work / "pw")}}
    )  # fmt: skip

    def count() -> int:
        with db.session_scope(engine) as session:
            return int(session.exec(select(func.count()).select_from(tables.Message)).one())

    source = ImapSource(config, ledger)
    source.start(ledger.accept)
    latencies = []
    try:
        for n in range(tries):
            wait(lambda: server.idling() == 1)
            started = time.monotonic()
            server.append("INBOX", mail(n))
            wait(lambda n=n: count() == n + 1)  # type: ignore[misc]
            latencies.append(time.monotonic() - started)
    finally:
        source.stop()
        engine.dispose()
    return latencies


def to_webhook(server: Dovecot, work: Path, tries: int) -> list[float]:
    arrivals: list[float] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            if json.loads(body)["type"] == "invoice.extracted":
                arrivals.append(time.monotonic())
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    api = free_port()
    (work / "pw").write_text(server.password)
    (work / "config.toml").write_text(
        f"""
data_dir = "{work / "data"}"
[log]
format = "json"
[api]
listen = "127.0.0.1:{api}"
[sources.smtp]
enabled = false
[sources.drop]
enabled = false
[outbox]
poll_interval = "0.2s"
[[sources.imap]]
name = "bench"
host = "{server.host}"
port = {server.port}
security = "none"
username = "{server.user}"
password = {{ file = "{work / "pw"}" }}
[[connectors.webhook]]
name = "bench"
url = "http://127.0.0.1:{hook.server_address[1]}/hook"
secret = {{ env = "BENCH_SECRET" }}
events = ["invoice.extracted"]
allow_private_network = true
"""
    )
    env = {**os.environ, "BENCH_SECRET": SECRET}
    log = open(work / "daemon.log", "wb")  # noqa: SIM115 - kept open for the process
    daemon = subprocess.Popen(
        [sys.executable, "-m", "mailingest", "serve", "--config", str(work / "config.toml")],
        cwd=ROOT, env=env, stdout=log, stderr=log,
    )  # fmt: skip
    latencies = []
    try:
        wait(lambda: _healthy(api), step=0.1)
        for n in range(tries):
            wait(lambda: server.idling() == 1)
            started = time.monotonic()
            server.append("INBOX", mail(n))
            wait(lambda n=n: len(arrivals) == n + 1)  # type: ignore[misc]
            latencies.append(arrivals[n] - started)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
        hook.shutdown()
    return latencies


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=10)
    args = parser.parse_args()
    for name, run in (("APPEND → ledger (source in-process)", to_ledger),
                      ("APPEND → webhook (real daemon)", to_webhook)):  # fmt: skip
        server = Dovecot()
        server.start()
        try:
            with tempfile.TemporaryDirectory() as work:
                summary(name, run(server, Path(work), args.tries))
        finally:
            server.cleanup()


if __name__ == "__main__":
    main()
