"""Backfill: the IMAP source reading a folder that already holds thousands of messages.

The folder is filled by writing files straight into Dovecot's Maildir before anyone connects
(``fill_maildir``): APPENDing thousands of messages one by one would take longer than the test
itself, and Dovecot indexes files it finds in ``cur/`` on the first SELECT exactly as it would
mail delivered by an MDA. The pipeline is deliberately not run (``after_processing = none``):
this is about the source — every message lands in the ledger exactly once, a restart fetches
nothing again, and memory does not grow with the size of the folder.

2,000 messages here, 10,000 in ``bench/imap_backfill.py``: with tracemalloc on (it slows
Python's allocations) and a commit per message, 2,000 take ~18 s on the 2-core machine, so 10,000
would take ~90 s and dominate the suite; 2,000 already exceed the default ``batch_size`` (50)
forty times over, which is what bounded memory is about.
"""

from __future__ import annotations

import os
import pwd
import time
import tracemalloc
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import func, select

from mailingest.config import ImapSourceConfig
from mailingest.ledger import Ledger
from mailingest.sources.imap import ImapSource
from mailingest.storage import db, tables
from mailingest.storage.blobs import BlobStore
from tests.dovecot import Dovecot

MESSAGES = 2_000
BODY_PADDING = 8_000  # bytes of text per mail: ~9 KB each, ~18 MB for the whole folder
# Peak Python memory (tracemalloc) allocated while the source backfills. Measured: ~4 MiB — one
# batch of bodies (50 mails, ~350 KB), SEARCH answers, SQLAlchemy and logging, and the in-flight
# map (UID → message id, ~150 bytes a message). 10 MiB is 2.5 times that, while a source that
# kept every fetched body (the whole ~18 MB folder) would clearly cross it.
PEAK_LIMIT = 10 * 2**20


def backfill_mail(n: int, padding: int = BODY_PADDING) -> bytes:
    """A small invoice mail with a tiny XML attachment; ``n`` makes it unique (content hash)."""
    msg = EmailMessage()
    msg["From"] = "Billing <billing@vendor.example>"
    msg["To"] = "ap@buyer.example"
    msg["Subject"] = f"Invoice INV-{n:06d}"
    msg["Message-ID"] = f"<backfill.{n}@vendor.example>"
    msg["Date"] = "Thu, 26 Nov 2026 09:00:00 +0000"
    msg.set_content("Please find our invoice attached.\n" + ("lorem ipsum " * (padding // 12 + 1))[:padding])
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Invoice><ID>INV-{n:06d}</ID><IssueDate>2026-11-26</IssueDate>"
        f"<Amount currency='EUR'>{100 + n % 900}.00</Amount></Invoice>\n"
    )
    msg.add_attachment(xml.encode(), maintype="application", subtype="xml", filename=f"INV-{n:06d}.xml")
    return msg.as_bytes(policy=SMTP)


def fill_maildir(server: Dovecot, count: int, make: Callable[[int], bytes] = backfill_mail) -> int:
    """Write ``count`` unseen messages into the user's INBOX (Maildir ``cur/``); returns bytes.

    Must run before the first login (``mail_location = maildir:<root>/mail/%u``: INBOX is the
    Maildir root). Filenames follow the Maildir convention ``<time>.M<n>P<pid>.<host>,S=<size>:2,``
    (``S=`` spares Dovecot a stat per file, ``:2,`` without letters means no flags); Dovecot
    assigns UIDs in filename order on its first SELECT. As root, Dovecot's mail processes run as
    ``nobody`` and must own the tree to write their index and uidlist files."""
    inbox = server.root / "mail" / server.user
    for sub in ("cur", "new", "tmp"):
        (inbox / sub).mkdir(parents=True, exist_ok=True)
    stamp = int(time.time())
    total = 0
    for n in range(count):
        raw = make(n).replace(b"\r\n", b"\n")  # Maildir stores LF; Dovecot sends CRLF
        (inbox / "cur" / f"{stamp}.M{n:06d}P{os.getpid()}.bench,S={len(raw)}:2,").write_bytes(raw)
        total += len(raw)
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        for path in [inbox, *inbox.rglob("*")]:
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
    return total


def ledger_count(engine: Any) -> int:
    with db.session_scope(engine) as session:
        return int(session.exec(select(func.count()).select_from(tables.Message)).one())


def distinct_uids(engine: Any) -> int:
    with db.session_scope(engine) as session:
        query = select(func.count(func.distinct(tables.Message.uid))).where(
            tables.Message.status != "duplicate"
        )
        return int(session.exec(query).one())


@pytest.fixture
def filled() -> Iterator[tuple[Dovecot, int]]:
    server = Dovecot()
    size = fill_maildir(server, MESSAGES)
    server.start()
    yield server, size
    server.cleanup()


def test_backfill_lands_every_message_once_with_bounded_memory(
    filled: tuple[Dovecot, int], tmp_path: Path
) -> None:
    server, folder_bytes = filled
    # Holding every body on top of the ~4 MiB the source needs anyway must cross the limit.
    assert folder_bytes > PEAK_LIMIT + 4 * 2**20
    engine = db.make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    db.upgrade(engine)
    ledger = Ledger(engine, BlobStore(tmp_path / "blobs"))
    handed: list[int] = []

    def sink(raw: bytes, **kw: Any) -> str:
        handed.append(kw["uid"])
        return ledger.accept(raw, **kw)

    (tmp_path / "pw").write_text(server.password)
    config = ImapSourceConfig.model_validate(
        {"name": "ap", "host": server.host, "port": server.port, "security": "none",
         "username": server.user, "password": {"file": str(tmp_path / "pw")},
         "after_processing": {"action": "none"}, "poll_interval": "2s"}
    )  # fmt: skip

    def backfill(expected: int, timeout: float) -> None:
        source = ImapSource(config, ledger)
        source.start(sink)
        try:
            deadline = time.monotonic() + timeout
            # In IDLE means the watcher's last SEARCH found nothing new: the backfill is over.
            while not (len(handed) >= expected and server.idling() == 1):
                assert time.monotonic() < deadline, f"{len(handed)} of {expected} fetched"
                time.sleep(0.1)
        finally:
            source.stop()

    tracemalloc.start()
    try:
        started = time.monotonic()
        backfill(MESSAGES, timeout=120)
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"backfill: {MESSAGES} messages in {elapsed:.1f} s, peak traced {peak / 2**20:.1f} MiB")
    assert len(handed) == MESSAGES
    assert sorted(handed) == list(range(1, MESSAGES + 1))  # each UID exactly once
    assert ledger_count(engine) == MESSAGES
    assert distinct_uids(engine) == MESSAGES  # no duplicates by content hash either
    assert peak < PEAK_LIMIT, f"peak traced memory {peak / 2**20:.1f} MiB"

    backfill(MESSAGES, timeout=30)  # a restart: resumes after the ledger's last UID
    assert len(handed) == MESSAGES
    assert ledger_count(engine) == MESSAGES
    engine.dispose()
