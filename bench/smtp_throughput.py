#!/usr/bin/env python3
"""Benchmark: N generated mails with a UBL attachment through the real daemon over SMTP.

Prints messages/s (first SMTP accept → last webhook), p50/p95/max latency from "SMTP 250
received by the sender" to "invoice.extracted webhook received", and the daemon's peak RSS.
Not a test: it asserts nothing but completeness, and prints figures.

    .venv/bin/python bench/smtp_throughput.py [--mails 1000] [--senders 4] [--postgres URL]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from email.message import EmailMessage
from email.policy import SMTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

UBL = """<?xml version="1.0" encoding="UTF-8"?>
<Invoice xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"
 xmlns:cac="urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2"
 xmlns:cbc="urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2">
 <cbc:CustomizationID>urn:cen.eu:en16931:2017</cbc:CustomizationID>
 <cbc:ID>BENCH-{n:06d}</cbc:ID>
 <cbc:IssueDate>2026-03-01</cbc:IssueDate>
 <cbc:DueDate>2026-03-31</cbc:DueDate>
 <cbc:InvoiceTypeCode>380</cbc:InvoiceTypeCode>
 <cbc:DocumentCurrencyCode>EUR</cbc:DocumentCurrencyCode>
 <cac:AccountingSupplierParty><cac:Party>
  <cac:PostalAddress><cbc:CityName>Berlin</cbc:CityName><cbc:PostalZone>10115</cbc:PostalZone>
   <cac:Country><cbc:IdentificationCode>DE</cbc:IdentificationCode></cac:Country></cac:PostalAddress>
  <cac:PartyTaxScheme><cbc:CompanyID>DE811907980</cbc:CompanyID><cac:TaxScheme><cbc:ID>VAT</cbc:ID></cac:TaxScheme></cac:PartyTaxScheme>
  <cac:PartyLegalEntity><cbc:RegistrationName>Bench Supplies GmbH</cbc:RegistrationName></cac:PartyLegalEntity>
 </cac:Party></cac:AccountingSupplierParty>
 <cac:AccountingCustomerParty><cac:Party>
  <cac:PostalAddress><cbc:CityName>Hamburg</cbc:CityName><cac:Country><cbc:IdentificationCode>DE</cbc:IdentificationCode></cac:Country></cac:PostalAddress>
  <cac:PartyLegalEntity><cbc:RegistrationName>Buyer AG</cbc:RegistrationName></cac:PartyLegalEntity>
 </cac:Party></cac:AccountingCustomerParty>
 <cac:TaxTotal><cbc:TaxAmount currencyID="EUR">{tax}</cbc:TaxAmount>
  <cac:TaxSubtotal><cbc:TaxableAmount currencyID="EUR">{net}</cbc:TaxableAmount><cbc:TaxAmount currencyID="EUR">{tax}</cbc:TaxAmount>
   <cac:TaxCategory><cbc:ID>S</cbc:ID><cbc:Percent>19</cbc:Percent><cac:TaxScheme><cbc:ID>VAT</cbc:ID></cac:TaxScheme></cac:TaxCategory>
  </cac:TaxSubtotal></cac:TaxTotal>
 <cac:LegalMonetaryTotal>
  <cbc:LineExtensionAmount currencyID="EUR">{net}</cbc:LineExtensionAmount>
  <cbc:TaxExclusiveAmount currencyID="EUR">{net}</cbc:TaxExclusiveAmount>
  <cbc:TaxInclusiveAmount currencyID="EUR">{gross}</cbc:TaxInclusiveAmount>
  <cbc:PayableAmount currencyID="EUR">{gross}</cbc:PayableAmount>
 </cac:LegalMonetaryTotal>
 <cac:InvoiceLine><cbc:ID>1</cbc:ID><cbc:InvoicedQuantity unitCode="C62">1</cbc:InvoicedQuantity>
  <cbc:LineExtensionAmount currencyID="EUR">{net}</cbc:LineExtensionAmount>
  <cac:Item><cbc:Name>Service {n}</cbc:Name><cac:ClassifiedTaxCategory><cbc:ID>S</cbc:ID><cbc:Percent>19</cbc:Percent>
   <cac:TaxScheme><cbc:ID>VAT</cbc:ID></cac:TaxScheme></cac:ClassifiedTaxCategory></cac:Item>
  <cac:Price><cbc:PriceAmount currencyID="EUR">{net}</cbc:PriceAmount></cac:Price>
 </cac:InvoiceLine>
</Invoice>
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_mail(n: int) -> tuple[str, bytes]:
    net = 100 + n
    tax = round(net * 0.19, 2)
    xml = UBL.format(n=n, net=f"{net:.2f}", tax=f"{tax:.2f}", gross=f"{net + tax:.2f}")
    msg = EmailMessage()
    msg_id = f"<bench-{n}-{time.time_ns()}@bench.example>"
    msg["From"], msg["To"], msg["Subject"], msg["Message-ID"] = (
        "billing@bench.example",
        "ap@buyer.example",
        f"Invoice BENCH-{n:06d}",
        msg_id,
    )
    msg.set_content("Invoice attached.")
    msg.add_attachment(xml.encode(), maintype="application", subtype="xml", filename=f"BENCH-{n:06d}.xml")
    return msg_id, msg.as_bytes(policy=SMTP)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mails", type=int, default=1000)
    parser.add_argument("--senders", type=int, default=4, help="parallel SMTP client connections")
    parser.add_argument("--postgres", metavar="URL", help="use this PostgreSQL database instead of SQLite")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="offered load in mails/s (paced); 0 = as fast as SMTP accepts (a burst)",
    )
    parser.add_argument("--workers", type=int, default=1, help="[pipeline] workers for the daemon")
    args = parser.parse_args()

    received: dict[str, float] = {}
    lock = threading.Lock()

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            now = time.monotonic()
            event = json.loads(body)
            if event["type"] == "invoice.extracted":
                with lock:
                    received.setdefault(event["data"]["source"]["message_id"], now)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_a: object) -> None:
            pass

    hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()

    work = Path(tempfile.mkdtemp(prefix="mailingest-bench-"))
    api, smtp_port = free_port(), free_port()
    storage = f'\n[storage]\nurl = "{args.postgres}"\n' if args.postgres else ""
    (work / "config.toml").write_text(f"""
data_dir = "{work / "data"}"
[log]
level = "warning"
format = "json"
[api]
listen = "127.0.0.1:{api}"
[sources.smtp]
listen = "127.0.0.1:{smtp_port}"
[sources.drop]
enabled = false
[pipeline]
workers = {args.workers}
{storage}
[[connectors.webhook]]
name = "bench"
url = "http://127.0.0.1:{hook.server_address[1]}/hook"
secret = {{ env = "BENCH_SECRET" }}
events = ["invoice.extracted"]
allow_private_network = true
""")
    env = {**os.environ, "BENCH_SECRET": SECRET}
    log = open(work / "daemon.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailingest", "serve", "--config", str(work / "config.toml")],
        cwd=work,
        env=env,
        stdout=log,
        stderr=log,
    )
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{api}/healthz").status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    print(
        f"daemon up (pid {proc.pid}, {'PostgreSQL' if args.postgres else 'SQLite'}); generating {args.mails} mails"
    )
    mails = [make_mail(n) for n in range(args.mails)]
    accepted: dict[str, float] = {}
    errors: list[str] = []

    interval = args.senders / args.rate if args.rate else 0.0

    def sender(chunk: list[tuple[str, bytes]]) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", smtp_port, timeout=60) as smtp:
                next_at = time.monotonic()
                for msg_id, raw in chunk:
                    if interval:
                        time.sleep(max(0.0, next_at - time.monotonic()))
                        next_at += interval
                    smtp.sendmail("billing@bench.example", ["ap@buyer.example"], raw)
                    accepted[msg_id] = time.monotonic()
        except (OSError, smtplib.SMTPException) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    t0 = time.monotonic()
    threads = [threading.Thread(target=sender, args=(mails[i :: args.senders],)) for i in range(args.senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    t_sent = time.monotonic()
    if errors:
        print("sending failed:", *errors, sep="\n  ")
        proc.terminate()
        return 1
    print(f"{len(accepted)} mails accepted over SMTP in {t_sent - t0:.1f}s; waiting for webhooks", flush=True)
    deadline = time.monotonic() + 600
    last_report = 0.0
    while len(received) < args.mails and time.monotonic() < deadline:
        time.sleep(0.2)
        if time.monotonic() - last_report > 5:
            print(f"  ... {len(received)}/{args.mails} webhooks received", flush=True)
            last_report = time.monotonic()
    t_end = max(received.values()) if received else time.monotonic()
    rss = peak_rss_mb(proc.pid)
    worker_rss = sum(peak_rss_mb(c) for c in children(proc.pid))
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    hook.shutdown()

    latencies = sorted((received[m] - accepted[m]) * 1000 for m in received if m in accepted)
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    result = {
        "mails": args.mails,
        "senders": args.senders,
        "offered_rate_per_s": args.rate or "burst",
        "workers": args.workers,
        "database": "postgresql" if args.postgres else "sqlite",
        "webhooks_received": len(received),
        "smtp_accept_rate_per_s": round(args.mails / (t_sent - t0), 1),
        "end_to_end_messages_per_s": round(len(received) / (t_end - t0), 1),
        "latency_ms_p50": round(q[49], 1),
        "latency_ms_p95": round(q[94], 1),
        "latency_ms_max": round(latencies[-1], 1) if latencies else None,
        "daemon_peak_rss_mb": round(rss, 1),
        "child_processes_peak_rss_mb": round(worker_rss, 1),
    }
    print(json.dumps(result, indent=2))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    load = f"{args.rate:g}ps" if args.rate else "burst"
    (out / f"smtp_throughput-{result['database']}-w{args.workers}-{load}.json").write_text(
        json.dumps(result, indent=2)
    )
    return 0 if len(received) == args.mails else 1


if __name__ == "__main__":
    raise SystemExit(main())
