"""The shipped rules/ end to end: the real daemon, mail over SMTP, statuses/approvers/tags/GL as
the rules say; hot reload on file change and on SIGHUP with the last good rules kept."""

from __future__ import annotations

import shutil
import signal
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import DaemonProcess

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent
MakeDaemon = Callable[..., DaemonProcess]


def ubl(
    number: str,
    amount: str,
    *,
    seller: str = "ACME Office GmbH",
    po: str | None = None,
    lines: tuple[tuple[str, str], ...] = (),
    type_code: str = "380",
    currency: str = "EUR",
) -> bytes:
    """A small valid EN 16931 UBL invoice (zero-rated, so the sums are easy)."""
    lines = lines or (("Paper A4", amount),)
    po_xml = f"<cac:OrderReference><cbc:ID>{po}</cbc:ID></cac:OrderReference>" if po else ""
    tax = "<cac:TaxScheme><cbc:ID>VAT</cbc:ID></cac:TaxScheme>"
    cur = f'currencyID="{currency}"'
    line_xml = "".join(
        f"<cac:InvoiceLine><cbc:ID>{i + 1}</cbc:ID>"
        '<cbc:InvoicedQuantity unitCode="C62">1</cbc:InvoicedQuantity>'
        f"<cbc:LineExtensionAmount {cur}>{net}</cbc:LineExtensionAmount><cac:Item><cbc:Name>{name}</cbc:Name>"
        f"<cac:ClassifiedTaxCategory><cbc:ID>Z</cbc:ID><cbc:Percent>0</cbc:Percent>{tax}</cac:ClassifiedTaxCategory>"
        f"</cac:Item><cac:Price><cbc:PriceAmount {cur}>{net}</cbc:PriceAmount></cac:Price></cac:InvoiceLine>"
        for i, (name, net) in enumerate(lines)
    )
    party = (
        "<cac:Party><cac:PostalAddress><cbc:CityName>{city}</cbc:CityName><cac:Country><cbc:IdentificationCode>DE"
        "</cbc:IdentificationCode></cac:Country></cac:PostalAddress>{vat}<cac:PartyLegalEntity><cbc:RegistrationName>"
        "{name}</cbc:RegistrationName></cac:PartyLegalEntity></cac:Party>"
    )
    vat = f"<cac:PartyTaxScheme><cbc:CompanyID>DE811907980</cbc:CompanyID>{tax}</cac:PartyTaxScheme>"
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Invoice xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"
 xmlns:cac="urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2"
 xmlns:cbc="urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2">
<cbc:CustomizationID>urn:cen.eu:en16931:2017</cbc:CustomizationID>
<cbc:ID>{number}</cbc:ID><cbc:IssueDate>2026-11-01</cbc:IssueDate><cbc:DueDate>2026-12-01</cbc:DueDate>
<cbc:InvoiceTypeCode>{type_code}</cbc:InvoiceTypeCode><cbc:DocumentCurrencyCode>{currency}</cbc:DocumentCurrencyCode>
<cbc:BuyerReference>BR-1</cbc:BuyerReference>{po_xml}
<cac:AccountingSupplierParty>{party.format(city="Berlin", vat=vat, name=seller)}
</cac:AccountingSupplierParty>
<cac:AccountingCustomerParty>{party.format(city="Hamburg", vat="", name="Buyer AG")}
</cac:AccountingCustomerParty>
<cac:TaxTotal><cbc:TaxAmount {cur}>0</cbc:TaxAmount><cac:TaxSubtotal>
<cbc:TaxableAmount {cur}>{amount}</cbc:TaxableAmount><cbc:TaxAmount {cur}>0</cbc:TaxAmount>
<cac:TaxCategory><cbc:ID>Z</cbc:ID><cbc:Percent>0</cbc:Percent>{tax}</cac:TaxCategory>
</cac:TaxSubtotal></cac:TaxTotal>
<cac:LegalMonetaryTotal><cbc:LineExtensionAmount {cur}>{amount}</cbc:LineExtensionAmount>
<cbc:TaxExclusiveAmount {cur}>{amount}</cbc:TaxExclusiveAmount>
<cbc:TaxInclusiveAmount {cur}>{amount}</cbc:TaxInclusiveAmount>
<cbc:PayableAmount {cur}>{amount}</cbc:PayableAmount></cac:LegalMonetaryTotal>
{line_xml}
</Invoice>""".encode()


def mail(*files: tuple[str, bytes], subject: str = "Invoices") -> bytes:
    msg = EmailMessage()
    msg["From"] = "Billing <billing@vendor.example>"
    msg["To"] = "ap@buyer.example"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{time.time_ns()}@vendor.example>"
    msg.set_content("Invoices attached.")
    for name, data in files:
        msg.add_attachment(data, maintype="application", subtype="xml", filename=name)
    return msg.as_bytes(policy=SMTP)


def send(port: int, raw: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.sendmail("billing@vendor.example", ["ap@buyer.example"], raw)


def invoices_by_number(daemon: DaemonProcess, count: int, timeout: float = 30.0) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    found: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        found = {i["number"]: i for i in daemon.get("/v1/invoices?limit=100")["data"]}
        if len(found) >= count:
            return found
        time.sleep(0.2)
    raise AssertionError(f"only {sorted(found)} after {timeout}s\n{daemon.log()}")


def test_shipped_rules_route_mail_end_to_end(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon(extra=f'\n[rules]\npath = "{ROOT / "rules"}"\n')
    daemon.start()
    send(
        daemon.smtp_port,
        mail(
            ("small.xml", ubl("S-1", "120", po="PO-1", lines=(("Toner black", "100"), ("Delivery", "20")))),
            ("nopo.xml", ubl("N-1", "2500", lines=(("Managed hosting November", "2500"),))),
            ("big.xml", ubl("B-1", "12000", po="PO-2", seller="Hetzner Online GmbH")),
            ("credit.xml", ubl("C-1", "80", type_code="381")),
            ("usd.xml", ubl("U-1", "1500", po="PO-3", currency="USD")),
        ),
    )
    got = invoices_by_number(daemon, 5)
    small, nopo, big, credit, usd = (got[n] for n in ("S-1", "N-1", "B-1", "C-1", "U-1"))

    assert small["status"] == "validated" and small["approvers"] == ["team-lead@example.com"]
    assert [line["coding"]["gl_account"] for line in small["lines"]] == ["6815", "6000"]
    assert nopo["status"] == "needs_review" and nopo["tags"] == ["no-po"]
    assert nopo["approvers"] == ["team-lead@example.com", "head-of-finance@example.com"]
    assert nopo["lines"][0]["coding"]["gl_account"] == "6810"
    assert big["status"] == "needs_review" and set(big["tags"]) == {"cloud", "large"}
    assert big["approvers"][-1] == "cfo@example.com" and big["lines"][0]["coding"]["gl_account"] == "6815"
    assert credit["type"] == "credit_note" and credit["deliver_to"] == ["erp"]
    assert credit["approvers"] == ["accounting@example.com"] and "credit-note" in credit["tags"]
    assert usd["status"] == "needs_review" and "fx" in usd["tags"]
    firing = next(f for f in nopo["firings"] if f["rule"] == "missing-purchase-order")
    assert firing["file"].endswith("rules/20-review.toml") and firing["line"] == 3
    assert daemon.stop() == 0


def test_daemon_reloads_rules_on_change_keeping_the_last_good_set(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    rules = tmp_path / "myrules"
    rules.mkdir()
    (rules / "a.toml").write_text('[[rule]]\nname = "first"\nthen = { tags = ["v1"] }\n')
    daemon = make_daemon(extra=f'\n[rules]\npath = "{rules}"\nreload = "0.2s"\n')
    daemon.start()
    send(daemon.smtp_port, mail(("one.xml", ubl("R-1", "10", po="P"))))
    assert invoices_by_number(daemon, 1)["R-1"]["tags"] == ["v1"]

    (rules / "a.toml").write_text('[[rule]]\nname = "second"\nthen = { tags = ["v2"] }\n')
    time.sleep(1.0)  # a few polls
    send(daemon.smtp_port, mail(("two.xml", ubl("R-2", "10", po="P"))))
    assert invoices_by_number(daemon, 2)["R-2"]["tags"] == ["v2"]

    (rules / "b.toml").write_text('[[rule]]\nname = "broken"\nthen = { status = "paid" }\n')
    time.sleep(1.0)
    send(daemon.smtp_port, mail(("three.xml", ubl("R-3", "10", po="P"))))
    assert invoices_by_number(daemon, 3)["R-3"]["tags"] == ["v2"]  # last good rules stay active
    assert f"{rules / 'b.toml'}:1:" in daemon.log() and "not reloaded" in daemon.log()
    assert daemon.proc is not None and daemon.proc.poll() is None
    health = httpx.get(f"{daemon.api}/healthz", timeout=10).json()["rules"]
    assert health["ok"] is False and health["rules"] == 1 and f"{rules / 'b.toml'}:1:" in health["error"]

    (rules / "b.toml").unlink()
    shutil.copy(ROOT / "rules" / "40-credit-notes.toml", rules / "c.toml")
    time.sleep(1.0)
    send(daemon.smtp_port, mail(("four.xml", ubl("R-4", "10", po="P", type_code="381"))))
    four = invoices_by_number(daemon, 4)["R-4"]
    assert four["deliver_to"] == ["erp"] and "v2" in four["tags"]
    health = httpx.get(f"{daemon.api}/healthz", timeout=10).json()["rules"]
    assert health["ok"] is True and health["error"] is None and health["rules"] == 2
    assert daemon.stop() == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_reloads_when_polling_is_off(make_daemon: MakeDaemon, tmp_path: Path, workers: int) -> None:
    """SIGHUP reaches the daemon's own rules and, forwarded, those of every worker process."""
    rules = tmp_path / "hup"
    rules.mkdir()
    (rules / "a.toml").write_text('[[rule]]\nname = "old"\nthen = { tags = ["old"] }\n')
    daemon = make_daemon(
        extra=f'\n[rules]\npath = "{rules}"\nreload = "0s"\n\n[pipeline]\nworkers = {workers}\n'
    )
    daemon.start()
    deadline = time.monotonic() + 60  # extra workers boot slowly on a busy machine
    while daemon.log().count("worker process started") < workers - 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    (rules / "a.toml").write_text('[[rule]]\nname = "new"\nthen = { tags = ["new"] }\n')
    time.sleep(0.5)
    send(daemon.smtp_port, mail(("one.xml", ubl("H-1", "10", po="P"))))
    assert invoices_by_number(daemon, 1)["H-1"]["tags"] == ["old"]  # no polling: not noticed
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 15
    while daemon.log().count("routing rules reloaded") < workers and time.monotonic() < deadline:
        time.sleep(0.1)
    assert daemon.log().count("routing rules reloaded") == workers  # each process reloaded once
    for i in range(2, 6):  # several mails: with two processes either may take each one
        send(daemon.smtp_port, mail((f"n{i}.xml", ubl(f"H-{i}", "10", po="P"))))
    found = invoices_by_number(daemon, 5)
    assert {number: found[number]["tags"] for number in found if number != "H-1"} == {
        f"H-{i}": ["new"] for i in range(2, 6)
    }
    assert daemon.stop() == 0


def test_shipped_auto_approval_of_a_trusted_recurring_vendor(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon(extra=f'\n[rules]\npath = "{ROOT / "rules"}"\n')
    daemon.start()
    create = ["api-key", "create", "--config", str(daemon.config_path), "--name", "ap-lead"]
    key = subprocess.run(
        [sys.executable, "-m", "mailingest", *create, "--scopes", "invoices:read,invoices:write"],
        env=daemon.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    seller = "Spotless Cleaning GmbH"
    for i, amount in enumerate(("1000", "1050", "980")):
        send(daemon.smtp_port, mail((f"c{i}.xml", ubl(f"CL-{i}", amount, po="PO-9", seller=seller))))
        invoices_by_number(daemon, i + 1)
    history = invoices_by_number(daemon, 3)
    assert {i["status"] for i in history.values()} == {"validated"}  # not trusted yet: the approval chain
    vendor_id = history["CL-0"]["vendor_id"]
    assert vendor_id and {i["vendor_id"] for i in history.values()} == {vendor_id}

    current = httpx.get(f"{daemon.api}/v1/vendors/{vendor_id}", timeout=10)
    trusted = httpx.patch(
        f"{daemon.api}/v1/vendors/{vendor_id}",
        json={"trusted": True},
        headers={"Authorization": f"Bearer {key}", "If-Match": current.headers["etag"]},
        timeout=10,
    )
    assert trusted.status_code == 200, trusted.text

    send(daemon.smtp_port, mail(("usual.xml", ubl("CL-3", "1020", po="PO-9", seller=seller))))
    usual = invoices_by_number(daemon, 4)["CL-3"]
    assert usual["status"] == "approved" and usual["tags"] == ["auto-approved"] and usual["approvers"] == []
    assert usual["routing"][-1] == "auto-approve-trusted-recurring"

    send(daemon.smtp_port, mail(("unusual.xml", ubl("CL-4", "2400", po="PO-9", seller=seller))))
    unusual = invoices_by_number(daemon, 5)["CL-4"]
    assert unusual["status"] == "validated" and "auto-approve-trusted-recurring" not in unusual["routing"]
    assert unusual["approvers"] == ["team-lead@example.com", "head-of-finance@example.com"]

    send(daemon.smtp_port, mail(("again.xml", ubl("CL-3", "1020", po="PO-9", seller=seller))))
    deadline = time.monotonic() + 30
    copies: list[dict[str, Any]] = []
    while len(copies) < 2 and time.monotonic() < deadline:
        copies = [i for i in daemon.get("/v1/invoices?limit=100")["data"] if i["number"] == "CL-3"]
        time.sleep(0.2)
    again = next(i for i in copies if i["id"] != usual["id"])
    assert again["status"] == "needs_review" and "duplicate?" in again["tags"]
    assert "auto-approve-trusted-recurring" not in again["routing"]
    assert daemon.stop() == 0
