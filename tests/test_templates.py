"""invoice2data YAML templates (``[extraction] templates_dir``, ``mailingest extract --templates``):
matched and run by invoice2data on our own PDF text; their fields override the heuristics."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from reportlab.pdfgen import canvas

from mailingest.config import ConfigError, load_config
from mailingest.pipeline.analyse import analyse
from mailingest.pipeline.extractors.templates import load_templates

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "fixtures" / "templates"
HARBOUR = ROOT / "fixtures" / "pdf" / "en-harbour-supplies.pdf"


def kestrel_pdf(number: str = "KW/26/0815", *, storno: bool = False) -> bytes:
    """A German invoice with labels the heuristics do not know (kestrel-werkzeuge.yml reads it)."""
    buf = io.BytesIO()
    c = canvas.Canvas(buf)
    c.setFont("Helvetica-Bold", 14)
    c.drawString(60, 790, "Kestrel Werkzeuge KG")
    c.setFont("Helvetica", 9)
    c.drawString(60, 776, "Hafenweg 3, 20457 Hamburg  USt-IdNr. DE123456789")
    if storno:
        c.drawString(400, 790, "STORNO")
    rows = [("Belegkennung", number), ("Ausgestellt am", "14.03.2026")]
    for i, (label, value) in enumerate(rows):
        c.drawString(330, 740 - 14 * i, label)
        c.drawString(440, 740 - 14 * i, value)
    c.drawString(60, 680, "Pos")
    c.drawString(90, 680, "Artikel")
    c.drawString(330, 680, "Menge")
    c.drawString(440, 680, "Betrag")
    items = [("1", "Ringschluessel 13 mm", "4", "51,60"), ("2", "Drehmomentschluessel", "1", "1.189,00")]
    for i, (pos, name, qty, amount) in enumerate(items):
        y = 664 - 14 * i
        c.drawString(60, y, pos)
        c.drawString(90, y, name)
        c.drawRightString(350, y, qty)
        c.drawRightString(490, y, amount)
    c.drawString(330, 610, "Zu begleichen")
    c.drawRightString(490, 610, "1.240,60")
    c.save()
    return buf.getvalue()


def extract_cli(*args: str) -> tuple[int, list[dict[str, Any]], str]:
    run = subprocess.run(
        [sys.executable, "-m", "mailingest", "extract", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return run.returncode, [json.loads(line) for line in run.stdout.splitlines()], run.stderr


def test_extract_applies_a_template_to_a_fixture_pdf() -> None:
    code, [record], _ = extract_cli("--templates", str(TEMPLATES), str(HARBOUR))
    assert code == 0
    [invoice] = record["invoices"]
    truth = json.loads(HARBOUR.with_name(HARBOUR.name + ".truth.json").read_text())
    assert invoice["number"] == truth["number"]
    assert invoice["issue_date"] == truth["issue_date"] and invoice["due_date"] == truth["due_date"]
    assert invoice["currency"] == "GBP"
    assert (
        invoice["seller"]["name"] == "Harbour Supplies Ltd" and invoice["seller"]["vat_id"] == "GB123456727"
    )
    totals = truth["totals"]
    assert invoice["totals"]["amount_due"] == totals["amount_due"]
    assert invoice["totals"]["tax_exclusive"] == totals["tax_exclusive"]
    assert invoice["totals"]["tax_total"] == totals["tax_total"]
    assert invoice["payment"]["credit_transfers"][0]["iban"] == truth["payment"]["iban"]
    assert [(ln["quantity"], ln["net_amount"]) for ln in invoice["lines"]] == [
        ("4", "756.00"),
        ("1", "449.56"),
        ("1", "29.00"),
    ]
    extraction = invoice["extraction"]
    assert extraction["extractor"] == "template:harbour-supplies.yml"
    fields = extraction["fields"]
    for pointer in ("/number", "/issue_date", "/totals/amount_due", "/seller/vat_id", "/lines/2/net_amount"):
        assert fields[pointer]["confidence"] == 0.95, pointer
    assert fields["/number"]["raw"] == "HS-2024-0042"
    # The template yields no PO number and no buyer: those stay as the heuristics read them.
    assert invoice["purchase_order"] == "PO-7781" and fields["/purchase_order"]["confidence"] < 0.95
    assert invoice["buyer"]["name"] == truth["buyer"]["name"]


def test_without_templates_or_without_a_match_the_heuristics_answer(tmp_path: Path) -> None:
    code, [plain], _ = extract_cli(str(HARBOUR))
    assert code == 0 and plain["invoices"][0]["extraction"]["extractor"] == "pdf_text"
    other = ROOT / "fixtures" / "pdf" / "de-buerobedarf.pdf"
    code, [record], _ = extract_cli("--templates", str(TEMPLATES), str(other))
    assert code == 0
    [invoice] = record["invoices"]
    assert invoice["extraction"]["extractor"] == "pdf_text"
    truth = json.loads(other.with_name(other.name + ".truth.json").read_text())
    assert invoice["number"] == truth["number"]


def test_a_generated_layout_the_heuristics_miss_is_read_by_its_template() -> None:
    data = kestrel_pdf()
    before = analyse(data, filename="kestrel.pdf").invoices
    assert not before or before[0].number != "KW/26/0815"  # the heuristics do not know "Belegkennung"
    context = {"channel": "cli", "templates_dir": str(TEMPLATES)}
    [invoice] = analyse(data, filename="kestrel.pdf", context=context).invoices
    assert invoice.number == "KW/26/0815"
    assert invoice.issue_date == "2026-03-14"
    assert invoice.totals.amount_due == Decimal("1240.60")
    assert invoice.currency == "EUR"
    assert invoice.seller is not None and invoice.seller.vat_id == "DE123456789"
    assert invoice.seller.name == "Kestrel Werkzeuge KG"
    assert [(ln.quantity, ln.net_amount) for ln in invoice.lines] == [
        (Decimal(4), Decimal("51.60")),
        (Decimal(1), Decimal("1189.00")),
    ]
    assert invoice.extraction is not None and invoice.extraction.extractor == "template:kestrel-werkzeuge.yml"
    # exclude_keywords: a cancellation with the same layout is left to the heuristics.
    storno = analyse(kestrel_pdf("KW/26/0816", storno=True), filename="s.pdf", context=context).invoices
    assert all(inv.extraction is not None and inv.extraction.extractor == "pdf_text" for inv in storno)
    assert "KW/26/0816" not in [inv.number for inv in storno]


def test_ingest_with_templates_dir_in_the_config(tmp_path: Path) -> None:
    """The daemon's path: ``[extraction] templates_dir`` reaches the runner's analysis."""
    pdf = tmp_path / "kestrel.pdf"
    pdf.write_bytes(kestrel_pdf("KW/26/0999"))
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n[extraction]\ntemplates_dir = "{TEMPLATES}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILINGEST_")}
    run = subprocess.run(
        [sys.executable, "-m", "mailingest", "ingest", "--config", str(cfg), str(pdf)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    [record] = [json.loads(line) for line in run.stdout.splitlines()]
    assert [i["number"] for i in record["invoices"]] == ["KW/26/0999"]


def test_a_template_with_a_bad_regex_is_refused_at_load(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(TEMPLATES / "harbour-supplies.yml", bad)
    (bad / "broken.yml").write_text(
        "issuer: Broken\nkeywords: [Broken]\nfields:\n  invoice_number:\n    parser: regex\n"
        "    regex: 'Invoice (No[:\\s+(\\d+)'\n"
    )
    code, records, stderr = extract_cli("--templates", str(bad), str(HARBOUR))
    assert code == 2 and records == []
    assert (
        "broken.yml" in stderr and "fields.invoice_number.regex" in stderr and "regular expression" in stderr
    )
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[extraction]\ntemplates_dir = "{bad}"\n')
    with pytest.raises(ConfigError, match=r"extraction\.templates_dir.*broken\.yml"):
        load_config(cfg, environ={})


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("fields: {}\n", "'keywords'"),
        ("keywords: [X]\nfields:\n  amount:\n    parser: magic\n", "unknown parser 'magic'"),
        ("keywords: [X]\nfields:\n  lines:\n    parser: lines\n    start: a\n", "has no 'line'"),
        ("keywords: [X]\nfields:\n  date: '(unclosed'\n", "fields.date"),
        ("keywords: [X\n", "cannot be read"),
    ],
)
def test_broken_templates_name_file_and_key(tmp_path: Path, text: str, complaint: str) -> None:
    (tmp_path / "t.yml").write_text(text)
    with pytest.raises(ConfigError, match=r"t\.yml") as caught:
        load_templates(tmp_path)
    assert complaint in caught.value.detail


def test_templates_dir_without_invoice2data_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "invoice2data.extract.loader", None)  # import fails as if absent
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[extraction]\ntemplates_dir = "{TEMPLATES}"\n')
    with pytest.raises(ConfigError, match=r"templates.*extra"):
        load_config(cfg, environ={})
    cfg.write_text('[extraction]\ntemplates_dir = "/nonexistent/templates"\n')
    monkeypatch.delitem(sys.modules, "invoice2data.extract.loader")
    with pytest.raises(ConfigError, match="not a directory"):
        load_config(cfg, environ={})


def test_templates_read_the_ocr_text_of_a_scan() -> None:
    """A scan of the generated invoice: the template runs on Tesseract's lines, laid out the same way;
    its confidences are scaled by Tesseract's like every OCR field."""
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument(kestrel_pdf("KW/26/0421"))
    image = pdf[0].render(scale=300 / 72, grayscale=True).to_pil().convert("L")
    pdf.close()
    png = io.BytesIO()
    image.save(png, "PNG")
    context = {"templates_dir": str(TEMPLATES), "ocr_languages": "deu"}
    result = analyse(png.getvalue(), filename="scan.png", context=context)
    assert result.documents[0].extractor == "ocr"
    [invoice] = result.invoices
    assert invoice.number == "KW/26/0421"
    assert invoice.totals.amount_due == Decimal("1240.60")
    assert invoice.seller is not None and invoice.seller.vat_id == "DE123456789"
    assert invoice.extraction is not None
    assert 0.8 < invoice.extraction.fields["/number"].confidence <= 0.95
