"""Password-protected PDFs: the mailbox's ``pdf_passwords`` open them (text, OCR, embedded XML);
without a fitting password the document is a recorded ``encrypted_document`` error, the rest of
the message is still processed, and no password ever shows up in errors or logs."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pypdfium2 as pdfium
import pytest
from pypdf import PdfReader, PdfWriter
from reportlab.lib.pdfencrypt import StandardEncryption
from reportlab.pdfgen import canvas
from sqlmodel import select

from mailingest.config import Config, ConfigError, load_config
from mailingest.config_sources import pdf_passwords_for
from mailingest.ledger import Ledger
from mailingest.pipeline.analyse import analyse
from mailingest.pipeline.runner import document_view, process_next
from mailingest.storage import db, tables
from mailingest.storage.blobs import BlobStore
from mailingest.workers import build_runtime

ROOT = Path(__file__).resolve().parents[1]
RIGHT = "Vendor-PDF-pw-7731"
WRONG = "not-the-password-4410"


def invoice_pdf(number: str, total: str, *, user: str | None = None, owner: str | None = None) -> bytes:
    """A one-page text invoice; encrypted (RC4-128, reportlab) when a password is given."""
    buf = io.BytesIO()
    encrypt = (
        StandardEncryption(user or "", ownerPassword=owner or user, canPrint=1) if user or owner else None
    )
    c = canvas.Canvas(buf, encrypt=encrypt)
    c.setFont("Helvetica-Bold", 16)
    c.drawString(72, 780, "Locked Supplies GmbH")
    c.setFont("Helvetica", 10)
    c.drawString(72, 740, "Invoice No:")
    c.drawString(180, 740, number)
    c.drawString(72, 725, "Invoice Date:")
    c.drawString(180, 725, "2026-03-14")
    c.drawString(72, 680, "Net amount")
    c.drawString(400, 680, "100.00 EUR")
    c.drawString(72, 665, "VAT 19%")
    c.drawString(400, 665, "19.00 EUR")
    c.drawString(72, 650, "Total")
    c.drawString(400, 650, f"{total} EUR")
    c.save()
    return buf.getvalue()


def encrypt(data: bytes, password: str) -> bytes:
    """Any PDF (with its attachments) encrypted with a user password by pypdf (AES-128)."""
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(password, owner_password=password + "-owner", algorithm="AES-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def mail(*attachments: tuple[str, bytes]) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "billing@locked.example", "ap@buyer.example", "Invoices"
    msg["Message-ID"] = f"<{attachments[0][0]}@locked.example>"
    msg.set_content("Attached.")
    for name, data in attachments:
        msg.add_attachment(data, maintype="application", subtype="pdf", filename=name)
    return msg.as_bytes()


def run_pipeline(tmp_path: Path, config_text: str, raw: bytes, source: str, mailbox: str) -> dict[str, Any]:
    """Accept ``raw`` as from (source, mailbox) and process it with the runtime the daemon builds."""
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n' + config_text)
    config = load_config(cfg, environ={})
    engine = db.make_engine(config.storage_url)
    db.upgrade(engine)
    blobs = BlobStore(tmp_path / "blobs")
    msg_id = Ledger(engine, blobs).accept(raw, source=source, mailbox=mailbox)
    assert process_next(build_runtime(config, engine, blobs, "w1"))
    with db.session_scope(engine) as session:
        message = session.get(tables.Message, msg_id)
        assert message is not None
        docs = session.exec(select(tables.Document).where(tables.Document.message_id == msg_id)).all()
        invoices = session.exec(select(tables.Invoice).where(tables.Invoice.message_id == msg_id)).all()
        result = {
            "status": message.status,
            "documents": {d.filename: document_view(d) for d in docs},
            "numbers": sorted(i.number or "" for i in invoices),
        }
    engine.dispose()
    return result


IMAP = """
[[sources.imap]]
name = "vendor"
host = "imap.example"
username = "ap"
password = { env = "IMAP_PW" }
pdf_passwords = [{ env = "PDF_PW_OLD" }, { env = "PDF_PW" }]
"""


def test_the_mailbox_password_opens_an_encrypted_invoice_in_the_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PDF_PW_OLD", WRONG)  # tried first, does not fit: the next one is tried
    monkeypatch.setenv("PDF_PW", RIGHT)
    locked = invoice_pdf("LK-2026-001", "119.00", user=RIGHT)
    with pytest.raises(pdfium.PdfiumError):
        pdfium.PdfDocument(locked)  # really needs the password
    raw = mail(("locked.pdf", locked), ("plain.pdf", invoice_pdf("PL-2026-002", "238.00")))
    result = run_pipeline(tmp_path, IMAP, raw, "imap", "vendor/INBOX")
    assert result["status"] == "processed"
    assert result["numbers"] == ["LK-2026-001", "PL-2026-002"]
    doc = result["documents"]["locked.pdf"]
    assert doc["status"] == "extracted" and doc["extractor"] == "pdf_text"
    assert doc["sha256"] != "" and "error" not in doc
    output = capfd.readouterr()
    assert RIGHT not in output.out + output.err and WRONG not in output.out + output.err


def test_a_wrong_password_is_a_clear_error_and_the_rest_of_the_message_is_processed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PDF_PW_OLD", WRONG)
    monkeypatch.setenv("PDF_PW", WRONG + "2")
    raw = mail(
        ("locked.pdf", invoice_pdf("LK-2026-003", "119.00", user=RIGHT)),
        ("plain.pdf", invoice_pdf("PL-2026-004", "238.00")),
    )
    result = run_pipeline(tmp_path, IMAP, raw, "imap", "vendor/INBOX")
    assert result["numbers"] == ["PL-2026-004"]
    doc = result["documents"]["locked.pdf"]
    assert doc["status"] == "failed"
    assert doc["error"]["type"] == "encrypted_document"
    assert "none of the 2 configured PDF passwords" in doc["error"]["detail"]
    assert result["documents"]["plain.pdf"]["status"] == "extracted"
    everything = json.dumps(result) + "".join(capfd.readouterr())
    assert WRONG not in everything and RIGHT not in everything


def test_no_configured_password_says_so(tmp_path: Path) -> None:
    raw = mail(("locked.pdf", invoice_pdf("LK-2026-005", "119.00", user=RIGHT)))
    result = run_pipeline(tmp_path, "", raw, "smtp", "smtp")
    doc = result["documents"]["locked.pdf"]
    assert doc["error"]["type"] == "encrypted_document"
    assert "needs a password" in doc["error"]["detail"] and "pdf_passwords" in doc["error"]["detail"]


def test_an_unset_password_variable_is_named_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PDF_PW_MISSING", raising=False)
    config = '[extraction]\npdf_passwords = [{ env = "PDF_PW_MISSING" }]\n'
    raw = mail(
        ("locked.pdf", invoice_pdf("LK-2026-006", "119.00", user=RIGHT)),
        ("plain.pdf", invoice_pdf("PL-2026-007", "238.00")),
    )
    result = run_pipeline(tmp_path, config, raw, "drop", str(tmp_path / "inbox"))
    assert result["numbers"] == ["PL-2026-007"]
    error = result["documents"]["locked.pdf"]["error"]
    assert error["type"] == "encrypted_document" and "PDF_PW_MISSING" in error["detail"]


def test_owner_password_only_pdfs_need_no_password() -> None:
    """Restrictions without a user password: readable by anyone, as before."""
    data = invoice_pdf("OW-2026-008", "119.00", owner="owner-only-secret")
    assert b"/Encrypt" in data
    [invoice] = analyse(data, filename="owner.pdf").invoices
    assert invoice.number == "OW-2026-008"


def test_per_source_passwords_override_the_extraction_default() -> None:
    imap = {"host": "h", "username": "u", "password": {"env": "IMAP_PW"}}
    config = Config.model_validate(
        {
            "extraction": {"pdf_passwords": [{"env": "GLOBAL_PW"}]},
            "sources": {
                "smtp": {"pdf_passwords": [{"env": "SMTP_PW"}, {"file": "/run/secrets/pdf"}]},
                "imap": [{"name": "a", **imap, "pdf_passwords": [{"env": "A_PW"}]}, {"name": "b", **imap}],
            },
        }
    )

    def names(channel: str, mailbox: str) -> list[str]:
        chosen = pdf_passwords_for(config.sources, config.extraction, channel, mailbox)
        return [s.env or str(s.file) for s in chosen]

    assert names("smtp", "smtp") == ["SMTP_PW", "/run/secrets/pdf"]
    assert names("imap", "a/INBOX") == ["A_PW"]
    assert names("imap", "b/INBOX") == ["GLOBAL_PW"]
    assert names("drop", "/x") == ["GLOBAL_PW"]
    assert names("cli", "cli") == ["GLOBAL_PW"]


def test_inline_pdf_passwords_are_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[sources.drop]\npdf_passwords = ["hunter2"]\n')
    with pytest.raises(ConfigError, match="inline") as caught:
        load_config(cfg, environ={})
    assert "hunter2" not in str(caught.value)


def test_ingest_cli_uses_the_extraction_default(tmp_path: Path) -> None:
    """``mailingest ingest --config``: files from the command line get ``[extraction]``'s passwords."""
    pdf = tmp_path / "locked.pdf"
    pdf.write_bytes(invoice_pdf("LK-2026-009", "119.00", user=RIGHT))
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[extraction]\npdf_passwords = [{{ env = "INGEST_PDF_PW" }}]\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILINGEST_")}
    run = subprocess.run(
        [sys.executable, "-m", "mailingest", "ingest", "--config", str(cfg), str(pdf)],
        capture_output=True,
        text=True,
        env={**env, "INGEST_PDF_PW": RIGHT},
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    [record] = [json.loads(line) for line in run.stdout.splitlines()]
    assert [i["number"] for i in record["invoices"]] == ["LK-2026-009"]
    assert RIGHT not in run.stdout + run.stderr


def test_embedded_xml_of_an_encrypted_facturx_pdf_is_read_with_the_password() -> None:
    name = (
        "zugferd-corpus__ZUGFeRDv2__correct__Mustangproject__MustangGnuaccountingBeispielRE-20201121_508.pdf"
    )
    source = ROOT / "fixtures/einvoice" / name
    truth = json.loads(source.with_name(source.name + ".truth.json").read_text())
    locked = encrypt(source.read_bytes(), RIGHT)
    refused = analyse(locked, filename="zugferd.pdf").documents[0]
    assert refused.error is not None and refused.error["type"] == "encrypted_document"
    result = analyse(locked, filename="zugferd.pdf", context={"pdf_passwords": [WRONG, RIGHT]})
    [invoice] = result.invoices
    assert result.documents[0].extractor == "einvoice"
    assert invoice.number == truth["number"]
    assert invoice.source is not None and invoice.source.file is not None
    assert invoice.source.file.sha256 == result.documents[0].doc.sha256  # the file as received


def test_an_encrypted_scan_is_ocred_with_the_password() -> None:
    fixture = ROOT / "fixtures/pdf/de-buerobedarf.pdf"
    truth = json.loads(fixture.with_name(fixture.name + ".truth.json").read_text())
    pdf = pdfium.PdfDocument(fixture.read_bytes())
    image = pdf[0].render(scale=300 / 72, grayscale=True).to_pil().convert("L")
    pdf.close()
    scan = io.BytesIO()
    image.save(scan, "PDF", resolution=300)
    context = {"pdf_passwords": [RIGHT], "ocr_languages": "deu"}
    result = analyse(encrypt(scan.getvalue(), RIGHT), filename="scan.pdf", context=context)
    assert result.documents[0].extractor == "ocr"
    [invoice] = result.invoices
    assert invoice.number == truth["number"]
