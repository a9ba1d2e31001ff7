"""mailingest.mime: real mails against their answer keys, generated invoice mails, hostile input."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import json
import random
import tracemalloc
import zipfile
from email import message_from_bytes, policy
from email.headerregistry import BaseHeader, HeaderRegistry
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailingest.errors import MimeError
from mailingest.mime import looks_like_message, unpack_message, wrap_file
from tests.conftest import SHARED_CORPUS

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures" / "email"
GENERATED = FIXTURES / "generated"
PAYLOAD = (FIXTURES / "payload-ubl.xml").read_bytes()
SHARED_EMAIL = SHARED_CORPUS / "email"  # LGPL samples: read there, never copied

CORPUS_MAILS = sorted(FIXTURES.glob("*.eml"))
TNEF_SAMPLES = sorted(SHARED_EMAIL.glob("*.tnef"))


def _mail(*parts: EmailMessage | tuple[bytes, str, str, str | None], subject: str = "Invoice") -> bytes:
    """A multipart/mixed mail with a text body and the given parts (or (data, maintype, subtype, name))."""
    msg = EmailMessage()
    msg["From"] = "Vendor <billing@vendor.example>"
    msg["To"] = "ap@company.example"
    msg["Subject"] = subject
    msg["Message-ID"] = "<test@vendor.example>"
    msg.set_content("see attachment\n")
    for part in parts:
        if isinstance(part, EmailMessage):
            msg.add_attachment(part)
        else:
            data, maintype, subtype, name = part
            msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg.as_bytes()


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- real mails against the corpus answer keys ------------------------------------------------


def test_fixture_set_is_there() -> None:
    assert 10 <= len(CORPUS_MAILS) <= 15
    assert all(Path(f"{mail}.truth.json").exists() for mail in CORPUS_MAILS)


@pytest.mark.parametrize("mail", CORPUS_MAILS, ids=lambda p: p.stem)
def test_corpus_mail_matches_truth(mail: Path) -> None:
    truth = json.loads(Path(f"{mail}.truth.json").read_text())
    unpacked = unpack_message(mail.read_bytes())

    for key, attribute in (("message_id", "message_id"), ("from", "from_"), ("subject", "subject")):
        if key in truth:
            assert getattr(unpacked.meta, attribute) == truth[key], key
    got = {(d.filename, d.size, d.sha256) for d in unpacked.documents}
    wanted = {
        (a["filename"], a["size"], a["sha256"])
        for a in truth["attachments"]
        if a.get("content_type") != "message/rfc822"
    }
    assert wanted <= got


@pytest.mark.parametrize("mail", CORPUS_MAILS, ids=lambda p: p.stem)
def test_forwarded_parts_are_descended(mail: Path) -> None:
    """The truth lists a message/rfc822 part once; unpack must yield what is inside it too.

    The oracle is the truth's own rule (filename or Content-Disposition attachment) applied by
    the stdlib walker, which descends into attached messages.
    """
    truth = json.loads(Path(f"{mail}.truth.json").read_text())
    msg = message_from_bytes(mail.read_bytes(), policy=policy.default)
    nested = {
        (p.get_filename(), _digest(p.get_payload(decode=True)))  # type: ignore[arg-type]  # leaves: bytes
        for p in msg.walk()
        if not p.is_multipart() and (p.get_filename() or p.get_content_disposition() == "attachment")
    }
    got = {(d.filename, d.sha256) for d in unpack_message(mail.read_bytes()).documents}
    assert nested <= got
    if any(a.get("content_type") == "message/rfc822" for a in truth["attachments"]):
        assert msg.is_multipart()  # the forwarded part was walked, not kept as a blob
        assert not any(
            d.content_type == "message/rfc822" for d in unpack_message(mail.read_bytes()).documents
        )


def test_corpus_headers_are_decoded() -> None:
    forwarded = unpack_message((FIXTURES / "imap_tools__forwarded_message.eml").read_bytes())
    assert forwarded.meta.subject == "статус"
    assert forwarded.meta.date is not None and forwarded.meta.date.startswith("20")
    japanese = unpack_message((FIXTURES / "imap_tools__multi_charset__japanese_attachment.eml").read_bytes())
    assert [d.filename for d in japanese.documents] == ["てすと.txt"]
    bad_date = unpack_message((FIXTURES / "imap_tools__error_emails__bad_date_header.eml").read_bytes())
    assert bad_date.meta.message_id is None


def test_octet_stream_pdf_is_taken_whole() -> None:
    unpacked = unpack_message((FIXTURES / "mail-parser__mail_test_10.eml").read_bytes())
    (pdf,) = unpacked.documents
    assert pdf.content_type == "application/octet-stream"
    assert pdf.data.startswith(b"%PDF-")


# --- generated invoice mails ------------------------------------------------------------------


GENERATED_EXPECTED = {
    "01_plain": ("2", "INV-2026-0042.xml"),
    "02_octet_stream": ("2", "INV-2026-0042.xml"),
    "03_rfc2231_name": ("2", "Rechnung_Müller_Söhne_Überweisung.xml"),
    "04_forwarded": ("2.2", "INV-2026-0042.xml"),
    "05_forwarded_twice": ("2.2.2", "INV-2026-0042.xml"),
    "06_zip": ("2/INV-2026-0042.xml", "INV-2026-0042.xml"),
    "07_xml_wrong_charset": ("2", "INV-2026-0042.xml"),
    "08_terms_and_logo": ("2", "INV-2026-0042.xml"),
    "09_no_filename": ("2", "attachment-2.xml"),
}


@pytest.mark.parametrize("shape", sorted(GENERATED_EXPECTED))
def test_generated_mail_yields_the_payload(shape: str) -> None:
    unpacked = unpack_message((GENERATED / f"{shape}.eml").read_bytes())
    payloads = [d for d in unpacked.documents if d.data == PAYLOAD]
    assert len(payloads) == 1
    assert (payloads[0].path, payloads[0].filename) == GENERATED_EXPECTED[shape]
    assert unpacked.problems == []
    if shape == "08_terms_and_logo":  # the terms PDF is a document, the Content-ID logo is not
        assert [d.filename for d in unpacked.documents] == ["INV-2026-0042.xml", "AGB_terms.pdf"]
        assert unpacked.body_text == "Invoice and our terms attached.\n"
    else:
        assert len(unpacked.documents) == 1


def test_generated_files_are_current() -> None:
    """Re-running the generator must reproduce the committed files byte for byte."""
    spec = importlib.util.spec_from_file_location("generate_emails", ROOT / "fixtures" / "generate_emails.py")
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert sorted(generator.SHAPES) == sorted(GENERATED_EXPECTED)
    for name, build in generator.SHAPES.items():
        assert build(PAYLOAD).as_bytes() == (GENERATED / f"{name}.eml").read_bytes(), name


def test_wrong_charset_is_reported_not_applied() -> None:
    (doc,) = unpack_message((GENERATED / "07_xml_wrong_charset.eml").read_bytes()).documents
    assert doc.charset == "iso-8859-1"
    assert "Müller".encode() in doc.data


def test_meta_of_generated_mail() -> None:
    meta = unpack_message((GENERATED / "03_rfc2231_name.eml").read_bytes()).meta
    assert meta.subject == "Rechnung Müller & Söhne"
    assert meta.from_ == "Vendor Billing <billing@vendor.example>"
    assert meta.to == ["ap@company.example"]
    assert meta.date == "2026-03-03T09:15:00+01:00"
    assert meta.message_id == "<rfc2231@vendor.example>"


# --- what is and is not a message -------------------------------------------------------------


def test_looks_like_message() -> None:
    assert all(looks_like_message(mail.read_bytes()) for mail in CORPUS_MAILS)
    assert looks_like_message(
        b"\xef\xbb\xbf\r\nFrom MAILER-DAEMON Tue Mar  3 09:15:00 2026\nSubject: x\n\nbody"
    )
    for data in (b"", b"   \n", PAYLOAD, b"%PDF-1.7\n", _zip({"a.xml": b"<a/>"}), b"Note: hello\n\nworld"):
        assert not looks_like_message(data)


@pytest.mark.parametrize("raw", [b"", b"\r\n \n", PAYLOAD, b"%PDF-1.4\n%%EOF"])
def test_no_header_block_is_a_mime_error(raw: bytes) -> None:
    with pytest.raises(MimeError):
        unpack_message(raw)


def test_random_binary_never_raises_anything_else() -> None:
    rng = random.Random(20260303)
    for size in (1, 7, 100, 4096, 65536):
        for _ in range(20):
            try:
                unpacked = unpack_message(rng.randbytes(size))
            except MimeError:
                continue
            assert unpacked.documents == []


def test_wrap_file_keeps_a_lone_document() -> None:
    unpacked = wrap_file(b"%PDF-1.4\n...", "Rechnung März.pdf")
    (doc,) = unpacked.documents
    assert (doc.filename, doc.content_type, doc.path) == ("Rechnung März.pdf", "application/pdf", "1")
    assert unpacked.meta.message_id is None and unpacked.meta.to == []


def test_unreadable_outlook_msg_is_a_problem_not_a_crash() -> None:
    """.msg files are opened for their attachments (tests/test_msg.py); a broken one is recorded."""
    ole = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504)
    alone = wrap_file(ole, "invoice.msg")
    assert alone.documents == [] and [p["path"] for p in alone.problems] == ["1"]
    attached = unpack_message(_mail((ole, "application", "vnd.ms-outlook", "fw.msg")))
    assert attached.documents == [] and len(attached.problems) == 1


# --- forwarded mail ---------------------------------------------------------------------------


def test_forward_depth_is_bounded() -> None:
    unpacked = unpack_message((GENERATED / "05_forwarded_twice.eml").read_bytes(), max_depth=1)
    assert unpacked.documents == []
    assert [(p["type"], p["path"]) for p in unpacked.problems] == [("hostile_document", "2.2")]


def test_eml_attachment_sent_as_octet_stream_is_descended() -> None:
    inner = (GENERATED / "01_plain.eml").read_bytes()
    unpacked = unpack_message(_mail((inner, "application", "octet-stream", "Fwd invoice.eml")))
    assert [(d.path, d.data == PAYLOAD) for d in unpacked.documents] == [("2.2", True)]


def test_base64_encoded_rfc822_is_descended() -> None:
    """RFC 2046 forbids it, Exchange does it: the stdlib then sees a headerless blob of base64."""
    inner = base64.encodebytes((GENERATED / "01_plain.eml").read_bytes())
    raw = (
        b"From: a@b.example\nSubject: fwd\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=XX\n\n"
        b"--XX\nContent-Type: text/plain\n\nsee below\n"
        b"--XX\nContent-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\n" + inner + b"\n--XX--\n"
    )
    assert [(d.path, d.data == PAYLOAD) for d in unpack_message(raw).documents] == [("2.2", True)]


# --- archives ---------------------------------------------------------------------------------


def test_zip_bomb_is_refused_fast_and_small() -> None:
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open("invoice.xml", "w") as fh,
    ):
        zeros = bytes(1 << 20)
        for _ in range(100):  # 100 MiB of zeros, about 100 kB compressed
            fh.write(zeros)
    raw = _mail(
        (buffer.getvalue(), "application", "zip", "invoices.zip"), (PAYLOAD, "application", "xml", "a.xml")
    )
    tracemalloc.start()
    try:
        unpacked = unpack_message(raw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [d.filename for d in unpacked.documents] == ["a.xml"]
    assert [(p["type"], p["path"]) for p in unpacked.problems] == [("hostile_document", "2/invoice.xml")]
    assert peak < 20 * 2**20


def test_zip_member_lying_about_its_size_is_refused() -> None:
    data = bytearray(_zip({"big.xml": bytes(5 << 20), "ok.xml": PAYLOAD}))
    real = (5 << 20).to_bytes(4, "little")
    for offset in [i for i in range(len(data)) if data[i : i + 4] == real]:
        data[offset : offset + 4] = (100).to_bytes(4, "little")  # local and central size fields
    unpacked = wrap_file(bytes(data), "bundle.zip")
    assert [d.filename for d in unpacked.documents] == ["ok.xml"]
    assert [(p["type"], p["path"]) for p in unpacked.problems] == [("malformed_document", "1/big.xml")]


def test_zip_members_paths_and_guards() -> None:
    inner = _zip({"deep.xml": b"<deep/>", "innermost.zip": _zip({"x.xml": b"<x/>"})})
    archive = _zip(
        {
            "invoices/INV-1.xml": PAYLOAD,
            "../../evil.xml": b"<evil/>",
            "__MACOSX/invoices/._INV-1.xml": b"junk",
            "empty/": b"",
            "inner.zip": inner,
        }
    )
    unpacked = unpack_message(_mail((archive, "application", "zip", "bundle.zip")))
    assert [(d.path, d.filename) for d in unpacked.documents] == [
        ("2/invoices/INV-1.xml", "INV-1.xml"),
        ("2/evil.xml", "evil.xml"),
        ("2/inner.zip/deep.xml", "deep.xml"),
    ]
    assert [(p["type"], p["path"]) for p in unpacked.problems] == [
        ("hostile_document", "2/inner.zip/innermost.zip")
    ]


def test_too_many_zip_members_are_refused() -> None:
    archive = _zip({f"{i}.txt": b"" for i in range(1001)}, zipfile.ZIP_STORED)
    unpacked = wrap_file(archive, "many.zip")
    assert unpacked.documents == []
    assert [p["type"] for p in unpacked.problems] == ["hostile_document"]


def test_encrypted_zip_member_is_a_problem_and_siblings_survive() -> None:
    data = bytearray(_zip({"secret.pdf": b"%PDF-1.4 secret", "open.xml": PAYLOAD}, zipfile.ZIP_STORED))
    for signature, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        first = data.find(signature)  # secret.pdf comes first in both headers
        data[first + flag_at] |= 0x1
    unpacked = wrap_file(bytes(data), "bundle.zip")
    assert [d.filename for d in unpacked.documents] == ["open.xml"]
    assert [(p["type"], p["path"]) for p in unpacked.problems] == [("encrypted_document", "1/secret.pdf")]


def test_bad_zip_is_a_problem_not_an_exception() -> None:
    raw = _mail(
        (b"PK\x03\x04 this is no zip", "application", "zip", "x.zip"),
        (PAYLOAD, "application", "xml", "a.xml"),
    )
    unpacked = unpack_message(raw)
    assert [d.filename for d in unpacked.documents] == ["a.xml"]
    assert [(p["type"], p["path"]) for p in unpacked.problems] == [("malformed_document", "2")]


def test_office_files_are_not_opened_as_archives() -> None:
    docx = _zip({"[Content_Types].xml": b"<Types/>", "word/document.xml": b"<w:document/>"})
    (doc,) = wrap_file(docx, "Rechnung.docx").documents
    assert doc.filename == "Rechnung.docx"


@pytest.mark.parametrize("sample", TNEF_SAMPLES, ids=lambda p: p.stem)
def test_winmail_dat_attachments_match_truth(sample: Path) -> None:
    truth = json.loads(Path(f"{sample}.truth.json").read_text())
    raw = _mail((sample.read_bytes(), "application", "ms-tnef", "winmail.dat"))
    unpacked = unpack_message(raw)
    assert sorted((d.filename, d.size, d.sha256) for d in unpacked.documents) == sorted(
        (a["filename"], a["size"], a["sha256"]) for a in truth["attachments"]
    )
    assert all(d.path.startswith("2/") for d in unpacked.documents)
    assert len({d.path for d in unpacked.documents}) == len(unpacked.documents)


def test_tnef_samples_are_present() -> None:
    assert len(TNEF_SAMPLES) >= 3, f"expected the LGPL TNEF samples in {SHARED_EMAIL}"


def test_damaged_winmail_dat_is_a_problem_and_keeps_what_it_can() -> None:
    sample = SHARED_EMAIL / "tnefparse__unicode-mapi-attr-name.tnef"
    truncated = wrap_file(sample.read_bytes()[:-5], "winmail.dat")
    assert len(truncated.documents) == 4
    assert [(p["type"], p["path"]) for p in truncated.problems] == [("malformed_document", "1")]
    garbage = wrap_file(b"\x78\x9f\x3e\x22\x01\x00" + b"\xff" * 40, "winmail.dat")
    assert garbage.documents == []
    assert [p["type"] for p in garbage.problems] == ["malformed_document"]


# --- hostile and broken MIME ------------------------------------------------------------------


def test_path_traversal_names_are_sanitised() -> None:
    raw = _mail(
        (b"%PDF-1.4 a", "application", "pdf", "../../etc/passwd"),
        (b"%PDF-1.4 b", "application", "pdf", "..\\..\\Windows\\evil.pdf"),
        (b"%PDF-1.4 c", "application", "pdf", "invoice\u202egpj.pdf"),
        (b"%PDF-1.4 d", "application", "pdf", ".."),
    )
    names = [d.filename for d in unpack_message(raw).documents]
    assert names == ["passwd", "evil.pdf", "invoicegpj.pdf", "attachment-5.pdf"]


def test_broken_base64_part_does_not_cost_its_sibling() -> None:
    raw = _mail(
        (b"%PDF-1.4 broken", "application", "pdf", "broken.pdf"), (PAYLOAD, "application", "xml", "a.xml")
    )
    head, marker, tail = raw.partition(b'filename="broken.pdf"\nMIME-Version: 1.0\n\n')
    body_end = tail.index(b"\n\n")
    raw = head + marker + b"!!!! this is %%%% not ### base64 @@@@ at all ****\n" * 5 + tail[body_end:]
    unpacked = unpack_message(raw)
    assert [d.data for d in unpacked.documents] == [PAYLOAD]
    assert [(p["type"], p["path"]) for p in unpacked.problems] == [("malformed_document", "2")]


def test_base64_with_garbage_padding_is_recovered() -> None:
    raw = _mail((PAYLOAD, "application", "xml", "a.xml"))
    head, marker, tail = raw.partition(b'filename="a.xml"\nMIME-Version: 1.0\n\n')
    body, end, rest = tail.partition(b"\n\n")
    garbled = body.rstrip(b"=") + b"Q"  # padding stripped, one stray character added
    (doc,) = unpack_message(head + marker + garbled + end + rest).documents
    assert doc.data == PAYLOAD


def test_transfer_encoding_with_junk_is_still_decoded() -> None:
    raw = _mail((PAYLOAD, "application", "xml", "a.xml")).replace(
        b"Content-Transfer-Encoding: base64", b"Content-Transfer-Encoding:  Base64;"
    )
    assert [d.data for d in unpack_message(raw).documents] == [PAYLOAD]


def test_zero_byte_attachment_is_a_document() -> None:
    (doc,) = unpack_message(_mail((b"", "application", "pdf", "empty.pdf"))).documents
    assert (doc.filename, doc.size) == ("empty.pdf", 0)


def test_unknown_and_hostile_charsets_never_raise() -> None:
    for charset in ("x-unknown", "base64", "punycode", "undefined", "utf-8\x00"):
        raw = (
            b"From: a@b.example\nSubject: =?" + charset.encode() + b"?q?R=E9chnung?=\n"
            b'Content-Type: text/plain; charset="' + charset.encode() + b'"\n\nInvoice 42 \xe9\n'
        )
        unpacked = unpack_message(raw)
        assert "Invoice 42" in unpacked.body_text


def test_html_only_body_becomes_text() -> None:
    raw = (
        b"From: a@b.example\nSubject: x\nContent-Type: text/html; charset=utf-8\n\n"
        b"<html><head><style>p{}</style></head><body><p>Invoice&nbsp;INV-7</p><script>x()</script>"
        b"<![if !supportLists]><p>Total 119,00 &euro;</p><![endif]></body></html>"
    )
    assert unpack_message(raw).body_text == "Invoice INV-7\nTotal 119,00 €"


def test_missing_boundary_and_garbage_keep_the_headers() -> None:
    raw = (
        b"From: Vendor <v@x.example>\nSubject: broken\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/mixed; boundary="nowhere"\n\n\x00\xff\xfe garbage \x80\n--elsewhere\n'
    )
    unpacked = unpack_message(raw)
    assert unpacked.meta.subject == "broken"
    assert unpacked.documents == []
    assert any("Boundary" in d for d in unpacked.meta.defects)


def test_deep_multipart_nesting_is_refused_with_headers_kept() -> None:
    body = b"Content-Type: text/plain\n\nhello\n"
    for level in range(3000):
        body = b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n%s\n--b%d--\n" % (
            level,
            level,
            body,
            level,
        )
    unpacked = unpack_message(b"From: a@b.example\nSubject: nested\nMIME-Version: 1.0\n" + body)
    assert unpacked.meta.subject == "nested"
    assert [p["type"] for p in unpacked.problems] == ["hostile_document"]


def test_part_and_size_budgets() -> None:
    many = _mail(*[(b"%%PDF-1.4 %d" % i, "application", "pdf", f"{i}.pdf") for i in range(10)])
    limited = unpack_message(many, max_parts=5)
    assert [d.filename for d in limited.documents] == ["0.pdf", "1.pdf", "2.pdf", "3.pdf"]
    assert [(p["type"], p["path"]) for p in limited.problems] == [("hostile_document", "6")]
    small = unpack_message(_mail((PAYLOAD, "application", "xml", "a.xml")), max_total_bytes=100)
    assert small.documents == []
    assert [p["type"] for p in small.problems] == ["document_too_large"]


def test_oversized_headers_are_cut_not_parsed_for_minutes() -> None:
    params = b"; ".join(b"p%d=v" % i for i in range(50_000))
    raw = (
        b"From: a@b.example\nSubject: " + b"word " * 200_000 + b"\nMIME-Version: 1.0\n"
        b"Content-Type: multipart/mixed; boundary=XX\n\n--XX\nContent-Type: application/pdf; "
        + params
        + b"\n"
        b"Content-Disposition: attachment; filename=a.pdf\n\n%PDF-1.4\n--XX--\n"
    )
    unpacked = unpack_message(raw)  # policy.default alone needs minutes here (quadratic)
    assert [d.data for d in unpacked.documents] == [b"%PDF-1.4"]
    assert unpacked.meta.subject is not None and len(unpacked.meta.subject) <= 8192


def test_each_header_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """policy.default parses a header afresh on every read, and the stdlib parser and the document
    rules read each part's Content-Type a dozen times: that was most of the time spent per mail."""
    raw = _mail((PAYLOAD, "application", "xml", "a.xml"))
    parsed: list[tuple[str, str]] = []
    parse = HeaderRegistry.__call__

    def counting(self: HeaderRegistry, name: str, value: str) -> BaseHeader:
        parsed.append((name, value))
        return parse(self, name, value)

    monkeypatch.setattr(HeaderRegistry, "__call__", counting)
    assert [d.data for d in unpack_message(raw).documents] == [PAYLOAD]
    assert parsed and len(parsed) == len(set(parsed))


def test_part_that_crashes_policy_default_is_read_under_compat32() -> None:
    """policy.default raises IndexError on "attachment;0*" (found by fuzzing, CPython 3.11)."""
    raw = (
        b"From: a@b.example\nSubject: x\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=XX\n\n"
        b'--XX\nContent-Type: application/pdf; name="inv.pdf"\nContent-Disposition: attachment;0*\n\n'
        b"%PDF-1.4 a\n--XX\nContent-Type: application/xml\nContent-Disposition: attachment; filename=b.xml\n"
        b"\n<b/>\n--XX--\n"
    )
    unpacked = unpack_message(raw)
    assert [(d.filename, d.data) for d in unpacked.documents] == [
        ("inv.pdf", b"%PDF-1.4 a"),
        ("b.xml", b"<b/>"),
    ]
    assert unpacked.problems == []


def test_inline_logo_without_name_is_not_a_document_but_a_named_image_is() -> None:
    msg = EmailMessage()
    msg["From"] = "a@b.example"
    msg["Subject"] = "logos"
    msg.set_content("text")
    msg.add_alternative('<img src="cid:logo">', subtype="html")
    *_, html_part = msg.iter_parts()
    assert isinstance(html_part, EmailMessage)
    html_part.add_related(b"\x89PNG\r\n\x1a\nlogo", maintype="image", subtype="png", cid="<logo>")
    msg.add_attachment(b"\xff\xd8\xffscan", maintype="image", subtype="jpeg", filename="receipt.jpg")
    assert [d.filename for d in unpack_message(msg.as_bytes()).documents] == ["receipt.jpg"]


def test_non_ascii_address_under_compat32_does_not_escape_as_unicode_error() -> None:
    raw = (
        b"From: a@b.example\nSubject: x\nTo: =?utf-8?q?j=C3=B6rg@example.de?=\nMIME-Version: 1.0\n"
        b"Content-Type: multipart/mixed; boundary=XX\n\n--XX\nContent-Type: attachment;0*\n\nx\n--XX--\n"
    )
    unpacked = unpack_message(raw)
    assert unpacked.meta.to == ["jörg@example.de"]
