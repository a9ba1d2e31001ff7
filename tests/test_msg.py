"""mailingest.mime_msg: Outlook .msg samples against their answer keys, alone and attached to mail."""

from __future__ import annotations

import hashlib
import json
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailingest import mime_msg
from mailingest.mime import unpack_message, wrap_file
from mailingest.mime_msg import parse_msg
from tests.conftest import SHARED_CORPUS

SHARED_EMAIL = SHARED_CORPUS / "email"  # Apache-2.0 msgreader samples: read there, never copied
MSG_SAMPLES = sorted(p for p in SHARED_EMAIL.glob("*.msg") if Path(f"{p}.truth.json").exists())


def _truth(sample: Path) -> dict[str, object]:
    truth: dict[str, object] = json.loads(Path(f"{sample}.truth.json").read_text("utf-8"))
    return truth


def _expected(sample: Path) -> list[tuple[str, int, str]]:
    """(name, size, sha256) of the plain attachments; embedded messages are opened, not kept."""
    attachments = _truth(sample)["attachments"]
    assert isinstance(attachments, list)
    return [(a["filename"], a["size"], a["sha256"]) for a in attachments if "embedded" not in a]


def _mail_with(data: bytes, name: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Vendor <billing@vendor.example>"
    msg["Subject"] = "forwarded"
    msg.set_content("see attachment\n")
    msg.add_attachment(data, maintype="application", subtype="vnd.ms-outlook", filename=name)
    return msg.as_bytes()


def test_corpus_has_the_samples() -> None:
    assert len(MSG_SAMPLES) == 6


@pytest.mark.parametrize("sample", MSG_SAMPLES, ids=lambda p: p.name)
def test_msg_alone_matches_truth(sample: Path) -> None:
    unpacked = wrap_file(sample.read_bytes(), "x.msg")
    assert unpacked.problems == []
    got = [(d.filename, d.size, hashlib.sha256(d.data).hexdigest()) for d in unpacked.documents]
    assert got == _expected(sample)
    assert all(d.path.startswith("1/") for d in unpacked.documents)


@pytest.mark.parametrize("sample", MSG_SAMPLES, ids=lambda p: p.name)
def test_msg_attached_to_mail_matches_truth(sample: Path) -> None:
    unpacked = unpack_message(_mail_with(sample.read_bytes(), "fw.msg"))
    assert unpacked.problems == []
    got = [(d.filename, d.size, hashlib.sha256(d.data).hexdigest()) for d in unpacked.documents]
    assert got == _expected(sample)
    assert all(d.path.startswith("2/") for d in unpacked.documents)


@pytest.mark.parametrize("sample", MSG_SAMPLES, ids=lambda p: p.name)
def test_msg_headers_match_truth(sample: Path) -> None:
    message = parse_msg(sample.read_bytes(), max_bytes=1 << 30)
    truth = _truth(sample)
    assert message.subject == truth.get("subject", "")
    if "message_id" in truth:
        assert message.message_id == truth["message_id"]
    if "from" in truth:
        assert f"<{message.sender}>" == truth["from"]


def test_embedded_message_too_deep_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mime_msg, "MSG_MAX_EMBED_DEPTH", 0)
    unpacked = wrap_file((SHARED_EMAIL / "msgreader__msgInMsg.msg").read_bytes(), "x.msg")
    assert [d.path for d in unpacked.documents] == ["1/green.png"]
    assert [p["path"] for p in unpacked.problems] == ["1/Microsoft Outlook テスト メッセージ.msg"]


@pytest.mark.parametrize("cut", [512, 1536, 4096, 0.5, 0.9])
def test_truncated_msg_is_a_problem_not_an_exception(cut: float) -> None:
    data = (SHARED_EMAIL / "msgreader__attachmentsOrder.msg").read_bytes()
    size = int(len(data) * cut) if isinstance(cut, float) else int(cut)
    for unpacked in (wrap_file(data[:size], "x.msg"), unpack_message(_mail_with(data[:size], "x.msg"))):
        assert unpacked.problems, "a cut .msg must be reported"
        assert all(p["path"].split("/")[0] in ("1", "2") for p in unpacked.problems)


def test_garbage_after_ole_magic_is_one_problem() -> None:
    ole = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504)
    unpacked = wrap_file(ole, "invoice.msg")
    assert unpacked.documents == []
    assert [p["path"] for p in unpacked.problems] == ["1"]
    assert "invoice.msg" in unpacked.problems[0]["detail"]


def test_ole_office_file_stays_whole() -> None:
    """A .doc is OLE2 too; by name, and by its lack of MAPI properties, it is kept as a file."""
    data = (SHARED_EMAIL / "msgreader__Simple.msg").read_bytes()
    assert [d.filename for d in wrap_file(data, "letter.doc").documents] == ["letter.doc"]
