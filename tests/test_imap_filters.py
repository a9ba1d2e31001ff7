"""Per-account IMAP filters: ``decide`` on its own, BODYSTRUCTURE parsing on what a real Dovecot
answers for mails built with the stdlib, config validation, and one run of the source against
Dovecot showing that a filtered-out mail is never downloaded."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from email.message import EmailMessage
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import SMTP
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient

from mailingest.config import ImapSourceConfig, load_config
from mailingest.errors import ConfigError
from mailingest.ledger import Ledger
from mailingest.pipeline.runner import Runtime
from mailingest.sources.filters import Attachment, Decision, Summary, attachments, decide, summarise
from mailingest.sources.imap_session import HEADER_ITEMS
from mailingest.storage import db
from mailingest.storage.blobs import BlobStore
from tests.dovecot import Dovecot
from tests.test_imap import UBL, Store, account, running, wait_for

PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
LONG_NAME = "Rechnung März 2026 für Bestellung 4711, Lieferung Süd — mit Umbruch.pdf"


# -- real BODYSTRUCTUREs ---------------------------------------------------------------------------


def _mail(sender: str = "Billing <billing@vendor.example>", subject: str = "Invoice 4711") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "ap@buyer.example"
    msg["Subject"] = subject
    msg.set_content("Please find our invoice attached.")
    return msg


def _forwarded_invoice() -> bytes:
    """Body in text + HTML, a PDF with a long non-ASCII name (the stdlib writes RFC 2231), and a
    forwarded mail that itself forwards a mail with a zip: attachments at three depths."""
    msg = _mail(
        sender="=?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <Juergen@Vendor.EXAMPLE>", subject="Fwd: Rechnung"
    )
    msg.add_alternative("<p>Please find our invoice attached.</p>", subtype="html")
    msg.add_attachment(PDF, maintype="application", subtype="pdf", filename=LONG_NAME)
    inner = _mail(sender="orig@supplier.example", subject="Rechnung")
    inner.add_attachment(b"<Invoice/>", maintype="application", subtype="xml", filename="inv.xml")
    innermost = _mail(sender="first@supplier.example", subject="Archiv")
    innermost.add_attachment(
        b"PK\x05\x06" + bytes(18), maintype="application", subtype="zip", filename="a.zip"
    )
    inner.add_attachment(innermost)
    msg.add_attachment(inner)
    return msg.as_bytes(policy=SMTP)


def _outlook_style() -> bytes:
    """RFC 2047 in a file name (invalid there, common in practice), PDF as octet-stream, and an
    ISO-8859-1 encoded subject."""
    msg = MIMEMultipart()
    msg["From"] = "buchhaltung@lieferant.example"
    msg["Subject"] = "=?iso-8859-1?q?Facture_=E9t=E9?="
    msg.attach(MIMEText("Anbei.", "plain", "utf-8"))
    part = MIMEApplication(PDF, "octet-stream")
    part.add_header("Content-Disposition", "attachment", filename="=?utf-8?b?w5xiZXJ3ZWlzdW5nLnBkZg==?=")
    msg.attach(part)
    return msg.as_bytes()


def _continued_name() -> bytes:
    """RFC 2231 continuations (``filename*0*`` / ``filename*1``), written out by hand because the
    stdlib only ever writes a single ``filename*``."""
    return (
        b"From: billing@vendor.example\r\nSubject: split name\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n"
        b"--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
        b"Content-Disposition: attachment;\r\n filename*0*=utf-8''R%C3%A9sum%C3%A9%20;\r\n"
        b" filename*1=invoice.pdf\r\n\r\nJVBERi0=\r\n--b--\r\n"
    )


def _html_with_logo() -> bytes:
    """An HTML mail whose only image is a logo referenced by Content-ID: no attachment."""
    msg = _mail(subject="Newsletter")
    msg.add_alternative('<p>News</p><img src="cid:logo@x">', subtype="html")
    html = msg.get_payload()[1]
    html.add_related(b"\x89PNG\r\n\x1a\n", maintype="image", subtype="png", cid="<logo@x>")
    return msg.as_bytes(policy=SMTP)


def _single_part_scan() -> bytes:
    """Not multipart at all: the whole message is a PDF, named by Content-Type's ``name``."""
    return (
        b"From: Scanner <scanner@office.example>\r\nSubject: Scan\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: application/pdf; name="scan_0001.PDF"\r\nContent-Transfer-Encoding: base64\r\n'
        b"\r\nJVBERi0=\r\n"
    )


SAMPLES = {
    "forwarded": _forwarded_invoice,
    "outlook": _outlook_style,
    "continued": _continued_name,
    "logo": _html_with_logo,
    "scan": _single_part_scan,
    "plain": lambda: _mail(subject="Just text").as_bytes(policy=SMTP),
}


@pytest.fixture(scope="module")
def fetched() -> Iterator[dict[str, dict[bytes, Any]]]:
    """The samples as Dovecot describes them: FETCH ENVELOPE BODYSTRUCTURE RFC822.SIZE FLAGS."""
    server = Dovecot()
    server.start()
    try:
        uids = {name: server.append("INBOX", build()) for name, build in SAMPLES.items()}
        with server.client("INBOX") as imap:
            got = imap.fetch(list(uids.values()), HEADER_ITEMS)
        yield {name: got[uid] for name, uid in uids.items()}
    finally:
        server.cleanup()


@pytest.mark.parametrize(
    ("sample", "sender", "subject", "expected"),
    [
        (
            "forwarded",
            "juergen@vendor.example",
            "Fwd: Rechnung",
            [(LONG_NAME, "application/pdf"), ("inv.xml", "application/xml"), ("a.zip", "application/zip")],
        ),
        (
            "outlook",
            "buchhaltung@lieferant.example",
            "Facture été",
            [("Überweisung.pdf", "application/octet-stream")],
        ),
        ("continued", "billing@vendor.example", "split name", [("Résumé invoice.pdf", "application/pdf")]),
        ("logo", "billing@vendor.example", "Newsletter", []),
        ("scan", "scanner@office.example", "Scan", [("scan_0001.PDF", "application/pdf")]),
        ("plain", "billing@vendor.example", "Just text", []),
    ],
)
def test_summary_from_a_real_bodystructure(
    fetched: dict[str, dict[bytes, Any]], sample: str, sender: str, subject: str, expected: list[Any]
) -> None:
    summary = summarise(fetched[sample])
    assert (summary.sender, summary.subject, summary.attachments) == (sender, subject, expected)
    assert summary.size > 0 and isinstance(summary.flags, tuple)


def test_forwarded_invoice_passes_attachment_filters_on_its_inner_attachment(
    fetched: dict[str, dict[bytes, Any]],
) -> None:
    summary = summarise(fetched["forwarded"])
    config = _config(attachment_names=["*.xml"], attachment_types=["application/xml"])
    decision = _decide(summary, config)
    assert decision.take and "inv.xml" in decision.reason


def test_odd_structures_yield_no_attachments_instead_of_errors() -> None:
    for odd in [None, (), (b"text",), ([], b"mixed"), ((None, 3),), ([(b"application",)], b"mixed"), 7]:
        assert attachments(odd) == []


# -- decide ---------------------------------------------------------------------------------------


def _config(**filters: Any) -> ImapSourceConfig:
    extra = {key: filters.pop(key) for key in ("only_unseen", "max_message_bytes") if key in filters}
    return ImapSourceConfig.model_validate(
        {"name": "ap", "host": "h", "username": "u", "password": {"env": "P"}, "filters": filters, **extra}
    )


def _decide(summary: Summary, config: ImapSourceConfig) -> Decision:
    return decide(summary.sender, summary.subject, summary.attachments, summary.size, summary.flags, config)


PDF_ATTACHMENT = Attachment("Invoice-4711.PDF", "application/pdf")
LOGO = Attachment("logo.png", "image/png")


def _summary(
    sender: str = "billing@vendor.example",
    subject: str = "Invoice 4711",
    attachments: tuple[Attachment, ...] = (PDF_ATTACHMENT,),
    size: int = 10_000,
    flags: tuple[bytes, ...] = (),
) -> Summary:
    return Summary(sender, subject, list(attachments), size, flags)


FILTERS = {
    "allow_senders": ["*@vendor.example", "Billing@ACME.example"],
    "deny_senders": ["offers@vendor.example"],
    "subject_patterns": ["(?i)invoice|rechnung", "^Fwd:"],
    "attachment_names": ["*.pdf", "*.xml"],
    "attachment_types": ["application/pdf", "application/xml", "text/xml"],
}


@pytest.mark.parametrize(
    ("summary", "verdict", "reason"),
    [
        (_summary(), "take", "sender billing@vendor.example matches allow_senders '*@vendor.example'"),
        (_summary(sender="BILLING@acme.EXAMPLE"), "take", "billing@acme.example"),  # case-insensitive
        (_summary(sender="offers@vendor.example"), "skip", "matches deny_senders 'offers@vendor.example'"),
        (_summary(sender="x@elsewhere.example"), "skip", "matches no allow_senders pattern"),
        (_summary(sender=""), "skip", "sender (no address)"),
        (_summary(subject="RECHNUNG 12"), "take", "subject matches '(?i)invoice|rechnung'"),
        (_summary(subject="Fwd: stuff"), "take", "subject matches '^Fwd:'"),
        (_summary(subject="Our newsletter"), "skip", "subject 'Our newsletter' matches no subject_patterns"),
        (_summary(attachments=()), "skip", "no attachment"),
        (_summary(attachments=(LOGO,)), "skip", "no attachment matches attachment_names/types: logo.png"),
        (
            _summary(attachments=(LOGO, PDF_ATTACHMENT)),
            "take",
            "attachment Invoice-4711.PDF (application/pdf)",
        ),
        # name and type must hold for the same attachment
        (_summary(attachments=(Attachment("x.pdf", "application/octet-stream"),)), "skip", "no attachment"),
        (_summary(size=10**9), "fail", "too large: 1000000000 bytes > max_message_bytes 26214400"),
        (_summary(sender="offers@vendor.example", size=10**9), "skip", "deny_senders"),  # filters first
    ],
)
def test_decide(summary: Summary, verdict: str, reason: str) -> None:
    decision = _decide(summary, _config(**FILTERS))
    assert decision.verdict == verdict and decision.take == (verdict == "take")
    assert reason in decision.reason


def test_decide_without_filters_takes_everything_that_fits() -> None:
    config = _config()
    assert _decide(_summary(sender="", subject="", attachments=()), config) == Decision(
        True, "no filter refuses it"
    )
    assert _decide(_summary(flags=(b"\\Seen",)), config).take


def test_decide_require_attachment_counts_any_attachment() -> None:
    config = _config(require_attachment=True)
    assert _decide(_summary(attachments=(LOGO,)), config).take
    assert _decide(_summary(attachments=()), config).reason == "no attachment"


def test_decide_only_unseen_skips_mail_read_meanwhile() -> None:
    decision = _decide(_summary(flags=(b"\\Seen",)), _config(only_unseen=True))
    assert (decision.verdict, decision.reason) == ("skip", "already seen (only_unseen)")


def test_decide_reason_lists_a_few_attachments_and_counts_the_rest() -> None:
    many = tuple(Attachment(f"p{n}.png", "image/png") for n in range(8))
    decision = _decide(_summary(attachments=many), _config(attachment_types=["application/pdf"]))
    assert decision.reason.endswith("p4.png (image/png) and 3 more")


# -- configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ('subject_patterns = ["ok", "(unclosed"]', r"\.filters\.subject_patterns\.1: invalid regular expr"),
        ('allow_senders = ["vendor.example"]', r"\.filters\.allow_senders\.0: .*matches whole addresses"),
        ('deny_senders = ["*@spam.example", "spam"]', r"\.filters\.deny_senders\.1: "),
        ('attachment_types = ["pdf"]', r"\.filters\.attachment_types\.0: 'pdf' is not a content type"),
        ('attachment_names = [""]', r"\.filters\.attachment_names\.0: an empty pattern"),
        ('allow_sender = ["*@x.example"]', r"\.filters\.allow_sender: Extra inputs are not permitted"),
        ('skipped_action = "delete"', r"\.filters\.skipped_action: "),
        ('skipped_flag = "two words"', r"\.filters\.skipped_flag: "),
        (
            'skipped_action = "move"\nskipped_folder = "INBOX"',
            ": cannot move messages into a watched folder: INBOX",
        ),
    ],
)
def test_config_rejects_bad_filters_naming_the_key(tmp_path: Path, filters: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[[sources.imap]]\nname = "ap"\nhost = "h"\nusername = "u"\npassword = { env = "P" }\n'
        f"[sources.imap.filters]\n{filters}\n"
    )
    with pytest.raises(ConfigError, match=rf"sources\.imap\.0{message}"):
        load_config(path, environ={})


def test_config_example_filters_load() -> None:
    (imap,) = load_config(Path(__file__).parent.parent / "config.example.toml", environ={}).sources.imap
    assert imap.filters.deny_senders and imap.filters.skipped_action == "none"
    assert imap.filters.allow_senders == [p.lower() for p in imap.filters.allow_senders]


# -- against Dovecot ------------------------------------------------------------------------------


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    server = Dovecot()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    db.upgrade(engine)
    blobs = BlobStore(tmp_path / "blobs")
    yield Store(engine, Ledger(engine, blobs), Runtime(engine=engine, blobs=blobs, connectors=[]))
    engine.dispose()


def test_filtered_mail_is_never_downloaded_and_gets_the_skipped_action(
    dovecot: Dovecot, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetches: list[tuple[list[int], list[Any]]] = []
    real_fetch = IMAPClient.fetch

    def spy(self: IMAPClient, messages: Any, data: Any, modifiers: Any = None) -> Any:
        if threading.current_thread().name.startswith("imap:"):  # the source's, not the test's own
            fetches.append((list(messages), list(data)))
        return real_fetch(self, messages, data, modifiers)

    taken = _mail()
    taken.add_attachment(UBL.read_bytes(), maintype="application", subtype="xml", filename="invoice-4711.xml")
    denied = _mail(sender="Offers <offers@vendor.example>")
    denied.add_attachment(PDF, maintype="application", subtype="pdf", filename="catalogue.pdf")
    bare = _mail(subject="Invoice 4712 (attachment forgotten)")
    first, second, third = (dovecot.append("INBOX", m.as_bytes(policy=SMTP)) for m in (taken, denied, bare))

    config = account(
        dovecot,
        tmp_path,
        filters={
            "allow_senders": ["*@vendor.example"],
            "deny_senders": ["offers@vendor.example"],
            "require_attachment": True,
            "skipped_action": "flag",
        },
    )
    monkeypatch.setattr(IMAPClient, "fetch", spy)
    with running(config, store):
        (row,) = wait_for(store.rows, what="the allowed mail in the ledger")
        assert row.uid == first

        def skipped() -> bool:
            flags = dovecot.flags("INBOX")
            return all("$MailingestSkipped" in flags[uid] for uid in (second, third))

        wait_for(skipped, what="skipped keyword on the refused mails")
        assert "$MailingestSkipped" not in dovecot.flags("INBOX")[first]
        assert store.process_all() == 1 and store.invoices() == 1
        wait_for(lambda: "\\Seen" in dovecot.flags("INBOX")[first], what="taken mail marked seen")
    downloads = [(uids, items) for uids, items in fetches if items != HEADER_ITEMS]
    assert downloads == [([first], [b"BODY.PEEK[]"])]
    assert [uids for uids, _ in fetches] == [[first, second, third], [first]]  # headers, then one body
    assert [r.uid for r in store.rows()] == [first]
    flags = dovecot.flags("INBOX")
    assert "\\Seen" not in flags[second] | flags[third]  # skipped mail is left unread for people
