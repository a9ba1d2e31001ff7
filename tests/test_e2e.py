"""End to end: the real daemon in a subprocess, real SMTP, real HTTP webhook receiver, real files."""

from __future__ import annotations

import smtplib
import socket
import time
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import pytest

from mailingest.connectors.webhook import verify
from tests.conftest import FIXTURES, WEBHOOK_SECRET, Received, free_port, start_receiver

pytestmark = pytest.mark.e2e

UBL = FIXTURES / "einvoice" / "xrechnung-testsuite__business-cases__standard__01.01a-INVOICE_ubl.xml"
PDF = FIXTURES / "pdf" / "de-buerobedarf.pdf"


def invoice_mail(*attachments: tuple[str, bytes, str], subject: str = "Invoices March") -> bytes:
    msg = EmailMessage()
    msg["From"] = "Billing <billing@vendor.example>"
    msg["To"] = "ap@buyer.example"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{time.time_ns()}@vendor.example>"
    msg.set_content("Please find our invoices attached.")
    for name, data, ctype in attachments:
        maintype, subtype = ctype.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg.as_bytes(policy=SMTP)


def send(port: int, raw: bytes) -> str:
    """Deliver over SMTP; returns the ledger id from the 250 reply ("queued as msg_...")."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo()
        smtp.mail("billing@vendor.example")
        smtp.rcpt("ap@buyer.example")
        code, reply = smtp.data(raw)
    assert code == 250, reply
    return reply.decode().rsplit(" ", 1)[-1]


def types(got: list[Received]) -> list[str]:
    return [r.json["type"] for r in got]


def both_invoices() -> bytes:
    return invoice_mail(
        (UBL.name, UBL.read_bytes(), "application/xml"),
        (PDF.name, PDF.read_bytes(), "application/pdf"),
    )


def test_mail_over_smtp_reaches_the_signed_webhook(make_daemon, webhook_receiver) -> None:  # type: ignore[no-untyped-def]
    daemon = make_daemon(webhook_receiver.url)
    daemon.start()
    msg_id = send(daemon.smtp_port, both_invoices())
    got = webhook_receiver.wait_for(lambda g: types(g).count("invoice.extracted") == 2)
    for request in got:
        assert verify(WEBHOOK_SECRET, request.headers, request.body)
        assert request.headers["webhook-id"].startswith("evt_")
    invoices = {
        r.json["data"]["source"]["format"]: r.json["data"]
        for r in got
        if r.json["type"] == "invoice.extracted"
    }
    assert set(invoices) == {"ubl", "pdf_text"}
    ubl = invoices["ubl"]
    assert ubl["number"] and ubl["id"].startswith("inv_")
    assert isinstance(ubl["totals"]["amount_due"], str)
    assert ubl["source"]["channel"] == "smtp" and ubl["source"]["file"]["name"] == UBL.name
    assert ubl["source"]["subject"] == "Invoices March"

    message = daemon.get(f"/v1/messages/{msg_id}")
    assert message["status"] == "processed"
    assert sorted(d["status"] for d in message["documents"]) == ["extracted", "extracted"]
    stored = daemon.get(f"/v1/invoices/{ubl['id']}")
    assert stored["number"] == ubl["number"]
    assert daemon.stop() == 0


def test_drop_directory_ingests_and_files_move_on(make_daemon, webhook_receiver) -> None:  # type: ignore[no-untyped-def]
    daemon = make_daemon(webhook_receiver.url)
    daemon.start()
    (daemon.drop / "mail.eml").write_bytes(both_invoices())
    (daemon.drop / UBL.name).write_bytes(UBL.read_bytes())
    (daemon.drop / "broken.pdf").write_bytes(b"this is not a pdf at all")
    got = webhook_receiver.wait_for(
        lambda g: types(g).count("invoice.extracted") == 3 and "invoice.duplicate_detected" in types(g)
    )
    for request in got:
        assert verify(WEBHOOK_SECRET, request.headers, request.body)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done = sorted(p.name for p in (daemon.drop / "done").iterdir())
        failed = sorted(p.name for p in (daemon.drop / "failed").iterdir())
        if len(done) == 2 and failed:
            break
        time.sleep(0.1)
    assert done == sorted(["mail.eml", UBL.name])
    assert failed == ["broken.pdf"]
    # the dropped UBL is the same file as the mail's attachment: flagged, never dropped silently
    dups = [r.json["data"] for r in got if r.json["type"] == "invoice.duplicate_detected"]
    assert len(dups) == 1 and dups[0]["status"] == "needs_review"


def test_kill_between_store_and_delivery_delivers_exactly_once(make_daemon) -> None:  # type: ignore[no-untyped-def]
    hook_port = free_port()  # nothing listens yet: deliveries fail and wait for a retry
    daemon = make_daemon(f"http://127.0.0.1:{hook_port}/hook")
    daemon.start()
    send(daemon.smtp_port, both_invoices())
    daemon.wait_processed(
        lambda s: sum(s["invoices"].values()) == 2 and s["deliveries"].get("pending", 0) > 0
    )
    daemon.kill()

    receiver, server = start_receiver(hook_port)
    try:
        daemon.start()
        got = receiver.wait_for(lambda g: types(g).count("invoice.extracted") == 2)
        time.sleep(2)  # time enough for any wrongful repeat to show up
        got = receiver.accepted()
        ids = [r.headers["webhook-id"] for r in got]
        assert len(ids) == len(set(ids)), "an event was delivered twice"
        stats = daemon.get("/v1/stats")
        assert sum(stats["invoices"].values()) == 2
        assert stats["deliveries"] == {"delivered": len(ids)}
    finally:
        server.shutdown()
        server.server_close()


def test_kill_right_after_smtp_accept_processes_once(make_daemon, webhook_receiver) -> None:  # type: ignore[no-untyped-def]
    daemon = make_daemon(webhook_receiver.url)
    daemon.start()
    send(daemon.smtp_port, both_invoices())
    daemon.kill()  # the mail is committed (250 was answered); processing may or may not have begun
    daemon.start()
    webhook_receiver.wait_for(lambda g: types(g).count("invoice.extracted") == 2)
    time.sleep(1.5)
    extracted = [r for r in webhook_receiver.accepted() if r.json["type"] == "invoice.extracted"]
    assert len({r.json["data"]["id"] for r in extracted}) == 2
    assert sum(daemon.get("/v1/stats")["invoices"].values()) == 2


def test_bad_input_is_recorded_and_the_daemon_keeps_serving(make_daemon, webhook_receiver) -> None:  # type: ignore[no-untyped-def]
    daemon = make_daemon(webhook_receiver.url)
    daemon.start()
    raw = invoice_mail(
        ("empty.pdf", b"", "application/pdf"),
        ("fake.pdf", b"<html>not a pdf</html>" * 10, "application/pdf"),
        (UBL.name, UBL.read_bytes(), "application/xml"),
    )
    msg_id = send(daemon.smtp_port, raw)
    noise = bytes(range(256)) * 40
    garbage_id = send(daemon.smtp_port, b"\r\n".join(noise[i : i + 64] for i in range(0, len(noise), 64)))
    webhook_receiver.wait_for(
        lambda g: "invoice.extracted" in types(g) and types(g).count("document.rejected") >= 2
    )
    message = daemon.get(f"/v1/messages/{msg_id}")
    by_name = {d["filename"]: d for d in message["documents"]}
    assert by_name[UBL.name]["status"] == "extracted"
    assert by_name["empty.pdf"]["status"] == "failed"
    assert "empty" in by_name["empty.pdf"]["error"]["detail"]
    assert by_name["fake.pdf"]["status"] in ("failed", "skipped")
    daemon.wait_processed(lambda s: "received" not in s["messages"] and "processing" not in s["messages"])
    garbage = daemon.get(f"/v1/messages/{garbage_id}")
    assert garbage["status"] in ("processed", "failed")

    # a message over the size limit is refused at SMTP time, and the daemon still serves
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=30) as smtp:
        smtp.ehlo()
        smtp.mail("x@vendor.example")
        smtp.rcpt("ap@buyer.example")
        code, _ = smtp.data(b"Subject: big\r\n\r\n" + (b"A" * 76 + b"\r\n") * 68_000)
    assert code == 552
    assert daemon.get("/healthz")["status"] == "ok"
    assert send(daemon.smtp_port, invoice_mail((UBL.name, UBL.read_bytes(), "text/xml")))


def test_systemd_notify_ready_and_graceful_stop(make_daemon, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(30)
    daemon = make_daemon(None)
    daemon.env.update({"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"})
    daemon.start()
    seen = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not ("READY=1" in " ".join(seen) and "WATCHDOG=1" in seen):
        seen.append(sock.recv(4096).decode())
    assert any("READY=1" in s for s in seen)
    assert "WATCHDOG=1" in seen
    assert daemon.stop() == 0
    while True:
        message = sock.recv(4096).decode()
        if "STOPPING=1" in message:
            break
    assert "mailingest stopped" in daemon.log()
    sock.close()


def test_extra_worker_processes_store_each_message_once(make_daemon, webhook_receiver) -> None:  # type: ignore[no-untyped-def]
    daemon = make_daemon(webhook_receiver.url, extra='\n[pipeline]\nworkers = 3\npoll_interval = "0.2s"\n')
    daemon.start()
    deadline = time.monotonic() + 60  # the extra processes boot while the daemon already serves
    while daemon.log().count("worker process started") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    ids = [
        send(
            daemon.smtp_port,
            invoice_mail((UBL.name, UBL.read_bytes(), "application/xml"), subject=f"Invoice {n}"),
        )
        for n in range(24)
    ]
    daemon.wait_processed(lambda s: s["messages"].get("processed", 0) == 24, timeout=60)
    stats = daemon.get("/v1/stats")
    assert sum(stats["invoices"].values()) == 24  # one per message: no message stored twice
    webhook_receiver.wait_for(lambda g: types(g).count("invoice.extracted") == 24)
    extracted = [
        r.json["data"]["source"]["message_id"]
        for r in webhook_receiver.accepted()
        if r.json["type"] == "invoice.extracted"
    ]
    assert len(set(extracted)) == 24
    log = (daemon.workdir / "daemon.log").read_text()
    assert log.count("worker process started") == 2 and len(ids) == 24
    assert daemon.stop() == 0
    assert (daemon.workdir / "daemon.log").read_text().count("worker process stopped") == 2
