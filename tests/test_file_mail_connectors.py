"""The files and mail connectors against real directories, the project's own SMTP receiver, an
aiosmtpd server that refuses recipients, and the real outbox dispatcher."""

from __future__ import annotations

import csv
import email
import email.policy
import json
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlmodel import Session, select

from mailingest.config import FilesConfig, MailConfig, SmtpSourceConfig, load_config
from mailingest.connectors.dispatcher import Dispatcher
from mailingest.connectors.files import FilesConnector
from mailingest.connectors.mail import MailConnector
from mailingest.connectors.registry import build_connectors
from mailingest.errors import ConfigError, DeliveryError, PermanentDeliveryError
from mailingest.sources.smtp import SmtpSource
from mailingest.storage import db, repo, tables
from mailingest.storage.blobs import BlobStore
from tests.conftest import free_port

PDF = b"%PDF-1.4\n% an original invoice document\n%%EOF\n"


def invoice_payload(blobs: Path, *, number: str = "INV-2024-001", event: str = "invoice.validated") -> dict:
    with Session() as session:  # disk blobs need no database
        sha256 = BlobStore(blobs).put(session, PDF)
    invoice = {
        "id": f"inv_{number}",
        "type": "invoice",
        "number": number,
        "issue_date": "2024-03-01",
        "due_date": "2024-03-31",
        "currency": "EUR",
        "seller": {"name": "ACME Büro GmbH / Berlin", "vat_id": "DE123456789"},
        "buyer": {"name": '=HYPERLINK("x")', "vat_id": "DE987654321"},
        "totals": {
            "tax_exclusive": "100.00",
            "tax_total": "19.00",
            "tax_inclusive": "119.00",
            "amount_due": "119.00",
        },
        "source": {
            "file": {"name": "a.pdf", "sha256": sha256, "content_type": "application/pdf", "size": len(PDF)}
        },
        "validation": {
            "valid": True,
            "messages": [{"rule": "BR-CO-15", "severity": "warning", "text": "check"}],
        },
        "status": "validated",
    }
    return {"type": event, "timestamp": "2024-03-02T10:00:00Z", "data": invoice}


# ---------------------------------------------------------------------------------------- files


def test_json_per_invoice_with_template_name_and_original(tmp_path: Path) -> None:
    out, blobs = tmp_path / "out", tmp_path / "blobs"
    files = FilesConnector(FilesConfig(name="f", path=out, include_originals=True, blobs_path=blobs))
    payload = invoice_payload(blobs)
    attempt = files.deliver("evt_1", payload)
    name = "2024-03-01_ACME_B_ro_GmbH_Berlin_INV-2024-001.json"
    assert json.loads((out / name).read_text()) == payload["data"]
    assert (out / "2024-03-01_ACME_B_ro_GmbH_Berlin_INV-2024-001_a.pdf").read_bytes() == PDF
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [name, name.replace(".json", "_a.pdf")]
    )  # no temps
    assert attempt.response_excerpt and name in attempt.response_excerpt
    files.deliver("evt_1", payload)  # a repeat replaces, never adds
    assert len(list(out.iterdir())) == 2


def test_daily_csv_header_once_one_row_per_invoice_and_repeats_ignored(tmp_path: Path) -> None:
    out, blobs = tmp_path / "out", tmp_path / "blobs"
    files = FilesConnector(FilesConfig(name="f", path=out, format="csv", csv_mode="daily"))
    files.deliver("evt_1", invoice_payload(blobs, number="A-1"))
    files.deliver("evt_2", invoice_payload(blobs, number="A-2"))
    files.deliver("evt_1", invoice_payload(blobs, number="A-1"))  # redelivery: no second row
    with (out / "invoices-2024-03-02.csv").open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == [
        "id", "number", "issue_date", "due_date", "seller_name", "seller_vat_id", "buyer_name",
        "currency", "net", "tax", "gross", "amount_due", "status",
    ]  # fmt: skip
    assert [r[1] for r in rows[1:]] == ["A-1", "A-2"]
    assert rows[1][6] == '\'=HYPERLINK("x")'  # formula defused
    assert rows[1][8:12] == ["100.00", "19.00", "119.00", "119.00"]


def test_unwritable_directory_is_a_retryable_delivery_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    files = FilesConnector(FilesConfig(name="f", path=blocker / "out"))
    with pytest.raises(DeliveryError) as info:
        files.deliver("evt_1", invoice_payload(tmp_path / "blobs"))
    assert not isinstance(info.value, PermanentDeliveryError) and "cannot write" in info.value.detail


def test_missing_original_is_retried_not_skipped(tmp_path: Path) -> None:
    payload = invoice_payload(tmp_path / "blobs")
    files = FilesConnector(
        FilesConfig(name="f", path=tmp_path / "out", include_originals=True, blobs_path=tmp_path / "wrong")
    )
    with pytest.raises(DeliveryError, match="original document"):
        files.deliver("evt_1", payload)


@pytest.mark.parametrize("fmt", ["ubl", "cii"])
def test_xml_formats_write_schema_valid_einvoices(tmp_path: Path, fmt: str) -> None:
    from mailingest.pipeline.analyse import analyse
    from mailingest.render import validate_schema

    fixtures = Path(__file__).parent.parent / "fixtures" / "einvoice"
    fixture = fixtures / "en16931__testfiles__Invoice-Max_content.xml"
    invoice = analyse(fixture.read_bytes(), filename=fixture.name).invoices[0]
    config = tmp_path / "c.toml"
    config.write_text(f'[[connectors.files]]\nname = "xml"\npath = "{tmp_path / "out"}"\nformat = "{fmt}"\n')
    files = build_connectors(load_config(config, environ={}))["xml"]
    payload = {"type": "invoice.validated", "timestamp": "2024-03-02T10:00Z", "data": invoice.to_json_dict()}
    attempt = files.deliver("evt_1", payload)
    [written] = list((tmp_path / "out").iterdir())
    assert written.suffix == ".xml" and attempt.response_excerpt == written.name  # default name, .xml
    assert validate_schema(written.read_bytes(), fmt) == []  # type: ignore[arg-type]
    back = analyse(written.read_bytes(), filename=written.name).invoices[0]
    assert (back.number, back.totals, back.lines) == (invoice.number, invoice.totals, invoice.lines)


def test_xml_format_of_an_invoice_that_is_not_canonical_is_permanent(tmp_path: Path) -> None:
    config = FilesConfig(name="f", path=tmp_path / "out", format="ubl", filename="{number}.xml")
    files = FilesConnector(config)
    payload = invoice_payload(tmp_path / "blobs")
    payload["data"]["totals"]["amount_due"] = "one hundred"
    with pytest.raises(PermanentDeliveryError, match="UBL XML"):
        files.deliver("evt_1", payload)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_config_rejects_bad_format_placeholders_and_separators(tmp_path: Path) -> None:
    cases = [
        ('format = "pdf"', "format"),
        ('filename = "{nummer}.json"', "unknown placeholder {nummer}"),
        ('filename = "../{number}.json"', "may not contain /"),
    ]
    for line, message in cases:
        config = tmp_path / "c.toml"
        config.write_text(f'[[connectors.files]]\nname = "f"\npath = "out"\n{line}\n')
        with pytest.raises(ConfigError, match=message):
            load_config(config, environ={})


def test_registry_builds_both_kinds(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        '[[connectors.files]]\nname = "archive"\npath = "out"\n'
        '[[connectors.mail]]\nname = "accounting"\nto = ["ap@example.com"]\nfrom = "mi@example.com"\n'
        'host = "127.0.0.1"\n'
    )
    built = build_connectors(load_config(config, environ={}))
    assert isinstance(built["archive"], FilesConnector) and isinstance(built["accounting"], MailConnector)


def test_dispatcher_delivers_an_outbox_event_to_files(db_url: str, tmp_path: Path) -> None:
    engine = db.make_engine(db_url)
    db.upgrade(engine)
    out, blobs = tmp_path / "out", tmp_path / "blobs"
    files = FilesConnector(FilesConfig(name="archive", path=out, include_originals=True, blobs_path=blobs))
    payload = invoice_payload(blobs)
    with db.session_scope(engine) as s:
        event = repo.add_event(
            s, type="invoice.validated", subject_id="inv_1", data=payload["data"],
            connectors=[("archive", files.events)],
        )  # fmt: skip
        event_id = event.id
    dispatcher = Dispatcher(engine, {"archive": files}, schedule=[0])
    assert dispatcher.run_once() == 1
    [written] = out.glob("*.json")
    assert json.loads(written.read_text())["number"] == "INV-2024-001"
    assert len(list(out.glob("*_a.pdf"))) == 1
    with db.session_scope(engine) as s:
        delivery = s.exec(select(tables.Delivery)).one()
        assert (delivery.event_id, delivery.status) == (event_id, "delivered")
    dispatcher.close()


# ----------------------------------------------------------------------------------------- mail


@pytest.fixture
def smtp_inbox() -> Iterator[tuple[int, list[bytes]]]:
    """The project's own SMTP receiver on a free port, its sink keeping the raw bytes."""
    received: list[bytes] = []

    def sink(raw: bytes, **_: Any) -> str:
        received.append(raw)
        return f"msg_{len(received)}"

    source = SmtpSource(SmtpSourceConfig(listen="127.0.0.1:0"))
    source.start(sink)
    yield source.port, received
    source.stop()


def mail_config(port: int, **extra: Any) -> MailConfig:
    return MailConfig.model_validate(
        {"name": "m", "to": ["ap@example.com"], "from": "mailingest@example.com", "host": "127.0.0.1",
         "port": port, "security": "none", "timeout": 5, **extra}
    )  # fmt: skip


def test_mail_arrives_with_summary_invoice_json_and_original(tmp_path: Path, smtp_inbox) -> None:  # type: ignore[no-untyped-def]
    port, received = smtp_inbox
    blobs = tmp_path / "blobs"
    mail = MailConnector(mail_config(port, blobs_path=str(blobs)))
    payload = invoice_payload(blobs)
    attempt = mail.deliver("evt_01ABC", payload)
    assert attempt.status_code == 250
    [raw] = received
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    assert msg["Message-ID"] == "<evt_01ABC@mailingest>"
    assert msg["Subject"] == "Invoice INV-2024-001 from ACME Büro GmbH / Berlin"
    assert msg["To"] == "ap@example.com"
    body = msg.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "INV-2024-001" in text and "119.00 EUR" in text and "BR-CO-15" in text and "DE123456789" in text
    attachments = {part.get_filename(): part for part in msg.iter_attachments()}
    assert json.loads(attachments["invoice.json"].get_content()) == payload["data"]
    assert attachments["a.pdf"].get_content_type() == "application/pdf"
    assert attachments["a.pdf"].get_content() == PDF


def test_smtp_server_down_is_retryable(tmp_path: Path) -> None:
    mail = MailConnector(mail_config(free_port(), include_originals=False))
    with pytest.raises(DeliveryError) as info:
        mail.deliver("evt_1", invoice_payload(tmp_path / "blobs"))
    assert not isinstance(info.value, PermanentDeliveryError)


class _RefuseRecipients:
    def __init__(self, reply: str) -> None:
        self.reply = reply

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        return self.reply


@pytest.fixture
def refusing_smtp() -> Iterator[Any]:
    started: list[Controller] = []

    def start(reply: str) -> int:
        port = free_port()
        controller = Controller(_RefuseRecipients(reply), hostname="127.0.0.1", port=port)
        controller.start()
        started.append(controller)
        return port

    yield start
    for controller in started:
        controller.stop()


def test_550_bad_recipient_is_permanent_and_451_is_not(tmp_path: Path, refusing_smtp) -> None:  # type: ignore[no-untyped-def]
    payload = invoice_payload(tmp_path / "blobs")
    permanent = MailConnector(mail_config(refusing_smtp("550 5.1.1 No such user"), include_originals=False))
    with pytest.raises(PermanentDeliveryError, match="550") as info:
        permanent.deliver("evt_1", payload)
    assert info.value.context["status_code"] == 550
    later = MailConnector(mail_config(refusing_smtp("451 4.3.0 Try again"), include_originals=False))
    with pytest.raises(DeliveryError, match="451") as retry:
        later.deliver("evt_1", payload)
    assert not isinstance(retry.value, PermanentDeliveryError)


def test_parallel_daily_deliveries_keep_every_row(tmp_path: Path) -> None:
    files = FilesConnector(FilesConfig(name="f", path=tmp_path / "out", format="csv", csv_mode="daily"))
    payloads = [invoice_payload(tmp_path / "blobs", number=f"N-{i}") for i in range(20)]
    threads = [threading.Thread(target=files.deliver, args=(f"evt_{i}", p)) for i, p in enumerate(payloads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = (tmp_path / "out" / "invoices-2024-03-02.csv").read_text().splitlines()
    assert len(lines) == 21
