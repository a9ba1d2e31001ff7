"""Plugin connectors and extractors (docs/plugins.md), and originals in database mode.

The plugin is the complete example printed in docs/plugins.md, written at test time into a folder
with a ``*.dist-info/entry_points.txt`` — how ``importlib.metadata`` finds entry points — and put
on ``sys.path`` (in-process) or ``PYTHONPATH`` (the daemon subprocess).
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from mailingest.cli import main
from mailingest.config import load_config
from mailingest.connectors.registry import build_connectors
from mailingest.errors import ConfigError
from mailingest.ingest import ingest_files
from mailingest.pipeline import extractors

ROOT = Path(__file__).parent.parent
FIXTURES = ROOT / "fixtures"
DOCS = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
MODULE = "mi_example_plugin"

INV = {
    "no": "PLG-2024-17",
    "date": "2024-05-02",
    "currency": "EUR",
    "from": "Plugin Supplies GmbH",
    "to": "Buyer AG",
    "totals": {"net": "100.00", "vat": "19.00", "gross": "119.00"},
}


def _block(lang: str) -> str:
    [code] = re.findall(rf"^```{lang}\n(.*?)^```", DOCS, re.MULTILINE | re.DOTALL)
    return str(code)


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The docs' example plugin, importable and discoverable through its entry points."""
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / f"{MODULE}.py").write_text(_block("python"))
    info = folder / f"{MODULE}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mi-example-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(_block("ini"))
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    sys.modules.pop(MODULE, None)
    extractors.configure(None)  # the next test in this process starts with no plugin


def _config(tmp_path: Path, extra: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(f'data_dir = "{tmp_path / "data"}"\n[sources.smtp]\nenabled = false\n{extra}')
    return path


def _inv_file(tmp_path: Path, name: str = "march.inv.json", **changes: Any) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({**INV, **changes}))
    return path


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


JSONL = """
[[connectors.jsonl]]
name = "events-log"
path = "{path}"
signing_key = {{ env = "JSONL_KEY" }}
"""

# --------------------------------------------------------------------------------- configuration


def test_plugin_connector_kind_is_validated_by_its_own_model(tmp_path: Path, plugin_dir: Path) -> None:
    good = _config(tmp_path, JSONL.format(path=tmp_path / "ev.jsonl"))
    config = load_config(good, environ={"JSONL_KEY": "k-supersecret"})
    [(_, entry)] = [(k, e) for k, e in config.connectors.entries() if k == "jsonl"]
    assert type(entry).__name__ == "JsonlConfig" and entry.name == "events-log"
    assert entry.events == ["*"] and entry.circuit_failures == 5  # the shared ConnectorEntry base
    assert "k-supersecret" not in repr(entry) and "Secret(env=JSONL_KEY)" in repr(entry)

    cases = {
        "missing field": ('[[connectors.jsonl]]\nname = "x"\n', "connectors.jsonl.0.path"),
        "unknown key": (
            '[[connectors.jsonl]]\nname = "x"\npath = "/tmp/x"\npth = 1\n',
            "connectors.jsonl.0.pth",
        ),
        "inline secret": (
            '[[connectors.jsonl]]\nname = "x"\npath = "/tmp/x"\nsigning_key = "plain"\n',
            "connectors.jsonl.0.signing_key",
        ),
        "bad name (base model)": (
            '[[connectors.jsonl]]\nname = "Bad Name"\npath = "/x"\n',
            "connectors.jsonl.0.name",
        ),
        "not a list": ('[connectors.jsonl]\nname = "x"\npath = "/x"\n', "[[connectors.jsonl]]"),
        "no such plugin": ('[[connectors.telex]]\nname = "x"\n', "unknown connector kind 'telex'"),
        "name clash across kinds": (
            JSONL.format(path="/tmp/x") + '[[connectors.files]]\nname = "events-log"\npath = "/tmp/out"\n',
            "connector names must be unique: events-log",
        ),
    }
    for case, (text, expected) in cases.items():
        with pytest.raises(ConfigError) as err:
            load_config(_config(tmp_path, text, "bad.toml"), environ={})
        assert expected in err.value.detail, (case, err.value.detail)


def test_mailingest_config_prints_plugin_entries_with_secrets_redacted(
    tmp_path: Path, plugin_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JSONL_KEY", "k-supersecret")
    path = _config(tmp_path, JSONL.format(path=tmp_path / "ev.jsonl") + "[extraction.plugins.invjson]\n")
    assert main(["config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    shown = json.loads(out)
    assert shown["connectors"]["jsonl"][0]["signing_key"] == {"env": "JSONL_KEY", "file": None}
    assert shown["connectors"]["jsonl"][0]["circuit_cooldown"] == 60.0
    assert shown["extraction"]["plugins"]["invjson"] == {
        "enabled": True, "priority": None, "confidence": 0.95, "also_pdf": False
    }  # fmt: skip
    assert "k-supersecret" not in out


def test_extractor_plugin_config_is_validated(tmp_path: Path, plugin_dir: Path) -> None:
    config = load_config(_config(tmp_path, '[extraction]\nplugins = ["invjson"]\n'), environ={})
    assert type(config.extraction.plugins["invjson"]).__name__ == "InvJsonConfig"
    cases = {
        "[extraction.plugins.invjson]\nconfidence = 2\n": "extraction.plugins.invjson.confidence",
        "[extraction.plugins.invjson]\nconfidance = 0.5\n": "extraction.plugins.invjson.confidance",
        "[extraction.plugins.invjson]\npriority = 0\n": "extraction.plugins.invjson.priority",
        "[extraction.plugins.llm]\n": "unknown extractor plugin 'llm'",
    }
    for text, expected in cases.items():
        with pytest.raises(ConfigError) as err:
            load_config(_config(tmp_path, text, "bad.toml"), environ={})
        assert expected in err.value.detail, err.value.detail


def test_an_installed_plugin_is_off_until_configured(tmp_path: Path, plugin_dir: Path) -> None:
    """Installed but not named in the config: not imported, not run, the document unsupported."""
    config = load_config(_config(tmp_path, ""), environ={})
    [result] = ingest_files(config, [str(_inv_file(tmp_path))])
    assert MODULE not in sys.modules
    assert result["invoices"] == []
    [doc] = result["documents"]
    assert doc["status"] in ("skipped", "unsupported") and doc["extractor"] is None
    assert [e.name for e in extractors.registry()] == ["einvoice", "pdf_text", "ocr"]


# ------------------------------------------------------------------------------------ end to end


def test_ingest_runs_the_plugin_extractor_and_delivers_through_the_plugin_connector(
    tmp_path: Path, plugin_dir: Path
) -> None:
    """``mailingest ingest`` in a subprocess that finds the plugin through PYTHONPATH."""
    events = tmp_path / "events.jsonl"
    path = _config(tmp_path, JSONL.format(path=events) + "[extraction.plugins.invjson]\nconfidence = 0.97\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILINGEST_")}
    env.update(PYTHONPATH=str(plugin_dir), JSONL_KEY="k-1")
    done = subprocess.run(
        [sys.executable, "-m", "mailingest", "ingest", "--config", str(path), str(_inv_file(tmp_path))],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    [result] = [json.loads(line) for line in done.stdout.splitlines()]
    [doc] = result["documents"]
    assert doc["status"] == "extracted" and doc["extractor"] == "invjson"
    assert [i["number"] for i in result["invoices"]] == ["PLG-2024-17"]

    delivered = _lines(events)
    invoice_events = [e for e in delivered if e["type"].startswith("invoice.")]
    assert invoice_events and all(len(e["tag"]) == 64 for e in delivered)
    invoice = invoice_events[-1]["data"]
    assert invoice["number"] == "PLG-2024-17" and invoice["totals"]["amount_due"] == "119.00"
    assert invoice["extraction"]["extractor"] == "invjson"
    assert invoice["extraction"]["fields"]["/number"] == {"confidence": 0.97, "raw": "PLG-2024-17"}
    assert invoice["source"]["format"] == "invjson" and invoice["source"]["file"]["name"] == "march.inv.json"
    assert invoice["status"] == "validated"
    assert len({e["event_id"] for e in delivered}) == len(delivered)


def test_plugin_output_goes_through_the_same_review_rules(tmp_path: Path, plugin_dir: Path) -> None:
    """A plugin unsure of its key fields sends the invoice to review like the PDF extractor."""
    config = load_config(_config(tmp_path, "[extraction.plugins.invjson]\nconfidence = 0.2\n"), environ={})
    [result] = ingest_files(config, [str(_inv_file(tmp_path))])
    assert [i["status"] for i in result["invoices"]] == ["needs_review"]


def test_a_failing_plugin_is_recorded_and_the_next_extractor_runs(tmp_path: Path, plugin_dir: Path) -> None:
    # also_pdf: the plugin (priority 50) claims PDFs before PDF text (100) and fails on them
    text = '[extraction.plugins.invjson]\nalso_pdf = true\n[[connectors.files]]\nname = "out"\n'
    text += f'path = "{tmp_path / "out"}"\nevents = ["invoice.*"]\n'
    config = load_config(_config(tmp_path, text), environ={})
    broken = tmp_path / "broken.inv.json"
    broken.write_text("{not json")
    pdf = FIXTURES / "pdf" / "en-harbour-supplies.pdf"
    by_file = {Path(r["file"]).name: r for r in ingest_files(config, [str(pdf), str(broken)])}

    [pdf_doc] = by_file[pdf.name]["documents"]
    assert pdf_doc["status"] == "extracted" and pdf_doc["extractor"] == "pdf_text"
    [written] = (tmp_path / "out").glob("*.json")
    messages = json.loads(written.read_text())["validation"]["messages"]
    [note] = [m for m in messages if m["rule"] == "extractor_failed"]
    assert note["source"] == "invjson" and "reads only *.inv.json" in note["text"]

    [bad_doc] = by_file["broken.inv.json"]["documents"]  # nothing else reads it: its error stays
    assert bad_doc["status"] == "failed" and bad_doc["error"]["type"] == "malformed_document"
    assert "not an .inv.json document" in bad_doc["error"]["detail"]
    assert by_file["broken.inv.json"]["invoices"] == []


def test_priority_from_the_config_orders_the_plugin(tmp_path: Path, plugin_dir: Path) -> None:
    """After PDF text (priority 150) the plugin never sees a text PDF, so nothing fails."""
    config = load_config(
        _config(tmp_path, "[extraction.plugins.invjson]\nalso_pdf = true\npriority = 150\n"), environ={}
    )
    extractors.configure(config.extraction)
    assert [e.name for e in extractors.registry()] == ["einvoice", "pdf_text", "invjson", "ocr"]
    [result] = ingest_files(config, [str(FIXTURES / "pdf" / "en-harbour-supplies.pdf")])
    [doc] = result["documents"]
    assert doc["extractor"] == "pdf_text" and doc["status"] == "extracted"


def test_daemon_uses_both_plugins(tmp_path: Path, plugin_dir: Path, make_daemon: Any) -> None:
    events = tmp_path / "daemon-events.jsonl"
    daemon = make_daemon(extra=JSONL.format(path=events) + "[extraction.plugins.invjson]\n")
    daemon.env["PYTHONPATH"] = str(plugin_dir)
    daemon.env["JSONL_KEY"] = "k-daemon"
    daemon.start()
    daemon.drop.mkdir(parents=True, exist_ok=True)
    _inv_file(tmp_path, "drop.tmp").rename(daemon.drop / "april.inv.json")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        numbers = [e["data"].get("number") for e in _lines(events) if e["type"].startswith("invoice.")]
        if numbers:
            break
        time.sleep(0.1)
    assert numbers and set(numbers) == {"PLG-2024-17"}, daemon.log()
    [invoice] = daemon.get("/v1/invoices")["data"]
    assert invoice["extraction"]["extractor"] == "invjson"
    assert daemon.stop() == 0
    log = (daemon.workdir / "daemon.log").read_text(errors="replace")
    assert "extractor plugin enabled" in log and "k-daemon" not in log


# --------------------------------------------------------------------- originals, disk or database


@pytest.fixture
def smtp_inbox() -> Iterator[tuple[int, list[bytes]]]:
    from mailingest.config import SmtpSourceConfig
    from mailingest.sources.smtp import SmtpSource

    received: list[bytes] = []

    def sink(raw: bytes, **_: Any) -> str:
        received.append(raw)
        return f"msg_{len(received)}"

    source = SmtpSource(SmtpSourceConfig(listen="127.0.0.1:0"))
    source.start(sink)
    assert source.port is not None
    yield source.port, received
    source.stop()


@pytest.mark.parametrize("documents", ["disk", "database", "database-postgresql"])
def test_files_and_mail_connectors_send_originals_in_both_storage_modes(
    tmp_path: Path, documents: str, smtp_inbox: tuple[int, list[bytes]], request: pytest.FixtureRequest
) -> None:
    port, received = smtp_inbox
    out = tmp_path / "out"
    url = f'url = "{request.getfixturevalue("pg_url")}"' if documents.endswith("postgresql") else ""
    documents = documents.removesuffix("-postgresql")
    text = f"""
[storage]
documents = "{documents}"
{url}

[[connectors.files]]
name = "archive"
path = "{out}"
events = ["invoice.*"]
include_originals = true

[[connectors.mail]]
name = "accounting"
to = ["ap@example.com"]
from = "mailingest@example.com"
host = "127.0.0.1"
port = {port}
security = "none"
events = ["invoice.*"]
"""
    config = load_config(_config(tmp_path, text), environ={})
    assert {type(c).__name__ for c in build_connectors(config).values()} == {
        "FilesConnector",
        "MailConnector",
    }
    original = FIXTURES / "pdf" / "en-harbour-supplies.pdf"
    [result] = ingest_files(config, [str(original)])
    assert result["invoices"], result

    blob_files = [p for p in (tmp_path / "data" / "blobs").rglob("*") if p.is_file()]
    assert bool(blob_files) == (documents == "disk")  # database mode: the bytes are only in the db

    copies = [p for p in out.iterdir() if p.name.endswith("_en-harbour-supplies.pdf")]
    assert copies and all(p.read_bytes() == original.read_bytes() for p in copies)

    assert received
    msg = email.message_from_bytes(received[0], policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    attachments = {part.get_filename(): part for part in msg.iter_attachments()}
    assert attachments["en-harbour-supplies.pdf"].get_content() == original.read_bytes()
    assert "invoice.json" in attachments
