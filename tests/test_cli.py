"""The command line as scripts use it: real subprocesses, real files, exit codes and output shapes."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, ROOT, WEBHOOK_SECRET, write_config

UBL = FIXTURES / "einvoice" / "xrechnung-testsuite__business-cases__standard__01.01a-INVOICE_ubl.xml"
MAIL = FIXTURES / "email" / "generated" / "08_terms_and_logo.eml"


def run(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailingest", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )


def lines(out: str) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_extract_prints_one_json_line_per_file() -> None:
    result = run("extract", str(UBL), str(MAIL), str(FIXTURES / "pdf" / "de-buerobedarf.pdf"))
    assert result.returncode == 0, result.stderr
    records = lines(result.stdout)
    assert [r["file"] for r in records] == [str(UBL), str(MAIL), str(FIXTURES / "pdf" / "de-buerobedarf.pdf")]
    assert all(r["error"] is None for r in records)
    ubl = records[0]["invoices"][0]
    truth = json.loads((UBL.parent / (UBL.name + ".truth.json")).read_text())
    assert ubl["number"] == truth["number"]
    assert Decimal(ubl["totals"]["amount_due"]) == Decimal(truth["totals"]["amount_due"])
    assert ubl["source"]["format"] == "ubl"
    assert ubl["validation"]["valid"] in (True, False)
    # the mail's terms PDF carries no invoice: recorded, not an error
    statuses = sorted(d["status"] for d in records[1]["documents"])
    assert statuses == ["extracted", "no_invoice"]


def test_extract_reports_bad_files_without_traceback(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pdf"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.xml"
    garbage.write_bytes(b"<Invoice><unclosed>")
    result = run(
        "extract",
        str(empty),
        str(garbage),
        str(FIXTURES / "pdf" / "encrypted.pdf"),
        str(tmp_path / "missing.pdf"),
        str(UBL),
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    records = lines(result.stdout)
    assert len(records) == 5
    errors = [r["error"]["type"] if r["error"] else None for r in records]
    assert errors[:4] == ["malformed_document", "malformed_document", "encrypted_document", "file_error"]
    assert errors[4] is None and records[4]["invoices"]
    assert all(r["invoices"] == [] for r in records[:4])


def test_extract_refuses_hostile_xml_without_leaking(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-VALUE")
    xxe = tmp_path / "xxe.xml"
    xxe.write_text(
        f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file://{secret}">]>'
        '<Invoice xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2">&x;</Invoice>'
    )
    result = run("extract", str(xxe))
    assert result.returncode == 1
    assert "TOP-SECRET-VALUE" not in result.stdout + result.stderr
    assert lines(result.stdout)[0]["error"]["type"] == "hostile_document"


def test_usage_errors_exit_2() -> None:
    assert run("extract").returncode == 2
    assert run("no-such-command").returncode == 2


def test_help_and_version() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("serve", "extract", "ingest", "db", "rules"):
        assert command in result.stdout
    assert "examples:" in result.stdout
    assert run("--version").stdout.startswith("mailingest ")


def test_config_errors_exit_2_with_the_key_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[api]\nlisten = 8080\nport = 1\n")
    result = run("config", "--config", str(bad))
    assert result.returncode == 2
    assert "api.port" in result.stderr and "Traceback" not in result.stderr


def test_db_upgrade_and_ingest_store_route_and_deliver(tmp_path: Path, webhook_receiver) -> None:  # type: ignore[no-untyped-def]
    config = write_config(tmp_path, api_port=1, smtp_port=1, webhook_url=webhook_receiver.url)
    env = {"TEST_WEBHOOK_SECRET": WEBHOOK_SECRET, "PATH": "/usr/bin:/bin"}
    upgrade = run("db", "upgrade", "--config", str(config), env=env)
    assert upgrade.returncode == 0, upgrade.stderr
    newest = max(p.name[:4] for p in (ROOT / "mailingest/storage/migrations/versions").glob("0*.py"))
    assert f"schema revision {newest}" in upgrade.stdout

    result = run("ingest", "--config", str(config), str(MAIL), str(UBL), cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    records = lines(result.stdout)
    assert [r["status"] for r in records] == ["processed", "processed"]
    assert len(records[0]["invoices"]) == 1 and len(records[1]["invoices"]) == 1
    types = [r.json["type"] for r in webhook_receiver.accepted()]
    assert types.count("invoice.extracted") == 2

    again = lines(run("ingest", "--config", str(config), str(MAIL), cwd=tmp_path, env=env).stdout)
    assert again[0]["status"] == "duplicate" and again[0]["duplicate_of"] == records[0]["message_id"]


def test_rules_check_and_test(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "a.toml").write_text(
        '[[rule]]\nname = "big"\nwhen = { "totals.amount_due" = { gt = "100" } }\n'
        'then = { status = "needs_review", tags = ["big"] }\n'
    )
    check = run("rules", "check", "--path", str(rules))
    assert check.returncode == 0 and "1 rule(s) OK" in check.stdout
    routed = lines(run("rules", "test", "--path", str(rules), str(UBL)).stdout)
    assert routed[0]["routing"] == ["big"] and routed[0]["tags"] == ["big"]
    (rules / "b.toml").write_text('[[rule]]\nname = "x"\nwhen = { a = { between = 1 } }\n')
    broken = run("rules", "check", "--path", str(rules))
    assert broken.returncode == 2
    assert "b.toml" in broken.stderr and "between" in broken.stderr


@pytest.mark.parametrize("command", ["serve", "extract", "ingest", "db", "rules", "config"])
def test_every_command_has_help(command: str) -> None:
    result = run(command, "--help")
    assert result.returncode == 0 and "usage:" in result.stdout
