"""SMTP receiver hardening against the real ``SmtpSource`` and a real ``Ledger`` on SQLite:
recipient allow-list, STARTTLS, AUTH, the size limit, and a burst under a small commit limit
where every ``250`` must be a stored message."""

from __future__ import annotations

import smtplib
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlmodel import select

from mailingest.config import SmtpSourceConfig
from mailingest.ledger import Ledger
from mailingest.sources.base import Sink
from mailingest.sources.smtp import SmtpSource
from mailingest.storage import db, tables
from mailingest.storage.blobs import BlobStore

MAIL = b"From: billing@vendor.example\r\nTo: ap@buyer.example\r\nSubject: invoice\r\n\r\nhello\r\n"

StartSmtp = Callable[..., int]


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    db.upgrade(engine)
    return Ledger(engine, BlobStore(tmp_path / "blobs"))


@pytest.fixture
def start_smtp(ledger: Ledger) -> Iterator[StartSmtp]:
    """Start an ``SmtpSource`` on a free loopback port with the given config keys; returns the port."""
    started: list[SmtpSource] = []

    def start(sink: Sink = ledger.accept, **config: Any) -> int:
        source = SmtpSource(SmtpSourceConfig(listen="127.0.0.1:0", **config))
        source.start(sink)
        started.append(source)
        return source.port

    yield start
    for source in started:
        source.stop()


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for localhost."""
    root = tmp_path_factory.mktemp("tls")
    cert, key = root / "cert.pem", root / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
         "-days", "1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def stored(ledger: Ledger) -> list[tables.Message]:
    with db.session_scope(ledger.engine) as session:
        return list(session.exec(select(tables.Message)).all())


def client_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the test certificate is self-signed
    return context


def test_allow_list_accepts_listed_addresses_and_domains_and_refuses_others(
    start_smtp: StartSmtp, ledger: Ledger
) -> None:
    port = start_smtp(allowed_recipients=["AP@buyer.example", "*@invoices.example"])
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.ehlo()
        smtp.mail("billing@vendor.example")
        assert smtp.rcpt("ap@BUYER.example")[0] == 250
        assert smtp.rcpt("anyone@Invoices.Example")[0] == 250
        code, reply = smtp.rcpt("ceo@buyer.example")
        assert (code, reply) == (550, b"5.1.1 recipient not accepted here")
        assert smtp.rcpt("x@sub.invoices.example")[0] == 550
        assert smtp.data(MAIL)[0] == 250
    [message] = stored(ledger)
    assert message.source == "smtp"


def test_allow_list_entries_must_be_addresses_or_domain_globs() -> None:
    with pytest.raises(ValidationError, match="not an address"):
        SmtpSourceConfig(allowed_recipients=["buyer.example"])
    with pytest.raises(ValidationError, match="not an address"):
        SmtpSourceConfig(allowed_recipients=["ap*@buyer.example"])


def test_starttls_is_offered_and_required_before_mail(
    start_smtp: StartSmtp, ledger: Ledger, cert: tuple[Path, Path]
) -> None:
    port = start_smtp(tls_cert=cert[0], tls_key=cert[1], require_tls=True)
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls")
        assert smtp.mail("billing@vendor.example")[0] == 530
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.starttls(context=client_tls())
        smtp.ehlo()
        smtp.mail("billing@vendor.example")
        smtp.rcpt("ap@buyer.example")
        assert smtp.data(MAIL)[0] == 250
    assert len(stored(ledger)) == 1


def test_tls_settings_that_could_never_work_are_refused(cert: tuple[Path, Path]) -> None:
    with pytest.raises(ValidationError, match="together"):
        SmtpSourceConfig(tls_cert=cert[0])
    with pytest.raises(ValidationError, match="require_tls needs"):
        SmtpSourceConfig(require_tls=True)
    with pytest.raises(ValidationError, match="auth_users needs TLS"):
        SmtpSourceConfig(auth_users={"alice": {"env": "X"}})
    with pytest.raises(ValidationError, match="inline"):
        SmtpSourceConfig(auth_users={"alice": "secret"}, allow_auth_without_tls=True)


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
def test_auth_is_required_and_checked(
    start_smtp: StartSmtp, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMTP_ALICE_PASSWORD", "s3cret-pw")
    port = start_smtp(auth_users={"alice": {"env": "SMTP_ALICE_PASSWORD"}}, allow_auth_without_tls=True)
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.ehlo()
        assert smtp.mail("billing@vendor.example")[0] == 530
        with pytest.raises(smtplib.SMTPAuthenticationError) as wrong:
            smtp.login("alice", "wrong")
        assert wrong.value.smtp_code == 535
        with pytest.raises(smtplib.SMTPAuthenticationError) as unknown:
            smtp.login("mallory", "s3cret-pw")
        assert unknown.value.smtp_code == 535
    assert stored(ledger) == []
    for mechanism in ("PLAIN", "LOGIN"):
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp.ehlo()
            smtp.user, smtp.password = "alice", "s3cret-pw"
            method = smtp.auth_plain if mechanism == "PLAIN" else smtp.auth_login
            assert smtp.auth(mechanism, method)[0] == 235
            smtp.mail("billing@vendor.example")
            smtp.rcpt("ap@buyer.example")
            code, reply = smtp.data(MAIL + mechanism.encode())
            assert code == 250, reply
    assert len(stored(ledger)) == 2


def test_auth_over_plain_text_is_refused_unless_allowed(
    start_smtp: StartSmtp, cert: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMTP_ALICE_PASSWORD", "s3cret-pw")
    port = start_smtp(auth_users={"alice": {"env": "SMTP_ALICE_PASSWORD"}}, tls_cert=cert[0], tls_key=cert[1])
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.ehlo()
        assert smtp.docmd("AUTH", "PLAIN AGFsaWNlAHMzY3JldC1wdw==")[0] == 538
        smtp.starttls(context=client_tls())
        smtp.ehlo()
        assert smtp.login("alice", "s3cret-pw")[0] == 235


def test_oversized_mail_gets_552_and_size_is_advertised(start_smtp: StartSmtp, ledger: Ledger) -> None:
    port = start_smtp(max_message_bytes=10_000)
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.ehlo()
        assert smtp.esmtp_features["size"] == "10000"
        smtp.mail("billing@vendor.example")
        smtp.rcpt("ap@buyer.example")
        code, _ = smtp.data(MAIL + (b"A" * 76 + b"\r\n") * 200)
        assert code == 552
    assert stored(ledger) == []


def test_a_burst_beyond_max_concurrent_waits_and_every_accepted_mail_is_stored(
    start_smtp: StartSmtp, ledger: Ledger
) -> None:
    in_flight, most_in_flight, lock = 0, 0, threading.Lock()

    def counting_sink(raw: bytes, **kwargs: Any) -> str:
        nonlocal in_flight, most_in_flight
        with lock:
            in_flight += 1
            most_in_flight = max(most_in_flight, in_flight)
        try:
            time.sleep(0.01)  # a slow disk: makes senders pile up behind the two slots
            return ledger.accept(raw, **kwargs)
        finally:
            with lock:
                in_flight -= 1

    port = start_smtp(sink=counting_sink, max_concurrent=2)

    def send(n: int) -> str:
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
            smtp.ehlo()
            smtp.mail("billing@vendor.example")
            smtp.rcpt("ap@buyer.example")
            code, reply = smtp.data(MAIL + f"mail {n}\r\n".encode())
        assert code == 250, reply
        return reply.decode().rsplit(" ", 1)[-1]

    with ThreadPoolExecutor(max_workers=40) as senders:
        ids = list(senders.map(send, range(40)))
    assert most_in_flight <= 2
    assert len(set(ids)) == 40
    assert {m.id for m in stored(ledger)} == set(ids)


def _raw_session(port: int, data: bytes) -> bytes:
    """Speak SMTP over a plain socket (smtplib would fix the line ends for us)."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        reader = sock.makefile("rb")

        def command(line: bytes) -> bytes:
            sock.sendall(line)
            reply = reader.readline()
            while reply[3:4] == b"-":
                reply = reader.readline()
            return reply

        assert reader.readline().startswith(b"220")
        assert command(b"EHLO client.example\r\n").startswith(b"250")
        assert command(b"MAIL FROM:<billing@vendor.example>\r\n").startswith(b"250")
        assert command(b"RCPT TO:<ap@buyer.example>\r\n").startswith(b"250")
        assert command(b"DATA\r\n").startswith(b"354")
        reply = command(data)
        command(b"QUIT\r\n")
        return reply


def test_bare_lf_line_ends_are_accepted_like_postfix_does(start_smtp: StartSmtp, ledger: Ledger) -> None:
    port = start_smtp()
    body = b"".join(b"line %d of a long body written with Unix line ends\n" % i for i in range(200))
    mail = b"From: billing@vendor.example\nTo: ap@buyer.example\nSubject: unix ends\n\n" + body
    reply = _raw_session(port, mail + b".\r\n")
    assert reply.startswith(b"250"), reply
    [message] = stored(ledger)
    assert message.subject == "unix ends"
    with db.session_scope(ledger.engine) as session:
        raw = ledger.blobs.get(session, message.sha256)
    assert b"\r\nline 199 of a long body written with Unix line ends\r\n" in raw
    assert b"\n" not in raw.replace(b"\r\n", b"")


def test_a_bare_lf_dot_line_does_not_end_the_data(start_smtp: StartSmtp, ledger: Ledger) -> None:
    """SMTP smuggling: ``LF . LF`` must not end DATA, or a relay that does not see it as an end
    would let a second, forged message through."""
    port = start_smtp()
    smuggled = (
        b"From: billing@vendor.example\r\nSubject: first\r\n\r\nhello\n.\n"
        b"MAIL FROM:<ceo@buyer.example>\r\nRCPT TO:<ap@buyer.example>\r\nDATA\r\n"
        b"Subject: forged\r\n\r\npay me\r\n.\r\n"
    )
    reply = _raw_session(port, smuggled)
    assert reply.startswith(b"250"), reply
    [message] = stored(ledger)
    assert message.subject == "first"
