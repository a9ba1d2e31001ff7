"""Storage behaviour on both SQLite and the machine's PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel, select

from mailingest.storage import db, repo, tables
from mailingest.storage.blobs import BlobStore
from mailingest.storage.tables import utcnow

MAIL = (
    b"Message-ID: <a@example.com>\r\nFrom: Vendor <billing@vendor.example>\r\n"
    b"Subject: Invoice 42\r\n\r\nhi\r\n"
)


def _engine(url: str):  # type: ignore[no-untyped-def]
    engine = db.make_engine(url)
    db.upgrade(engine)
    return engine


def test_migrations_build_exactly_the_models(db_url: str) -> None:
    engine = _engine(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), SQLModel.metadata
        )
    assert diff == []
    assert db.current_revision(engine) is not None
    db.upgrade(engine)  # idempotent


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    engine = _engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_ledger_records_headers_and_recognises_repeats(db_url: str) -> None:
    engine = _engine(db_url)
    with db.session_scope(engine) as s:
        first = repo.record_message(s, source="imap", mailbox="INBOX", uidvalidity=7, uid=1, raw=MAIL)
    with db.session_scope(engine) as s:
        again = repo.record_message(s, source="imap", mailbox="INBOX", uidvalidity=7, uid=1, raw=MAIL)
        copy = repo.record_message(s, source="smtp", raw=MAIL)
    assert again.id == first.id
    assert first.message_id == "<a@example.com>" and first.subject == "Invoice 42"
    assert copy.status == "duplicate" and copy.duplicate_of == first.id


def test_claims_are_leased_and_expire(db_url: str) -> None:
    engine = _engine(db_url)
    postgres = db.is_postgres(engine)
    with db.session_scope(engine) as s:
        msg = repo.record_message(s, source="smtp", raw=MAIL)
    with db.session_scope(engine) as s:
        claimed = repo.claim_next_message(s, lease=60, worker="w1", postgres=postgres)
        assert claimed is not None and claimed.id == msg.id and claimed.attempts == 1
    with db.session_scope(engine) as s:
        assert repo.claim_next_message(s, lease=60, worker="w2", postgres=postgres) is None
        row = s.get(tables.Message, msg.id)
        assert row is not None
        row.claimed_until = utcnow() - timedelta(seconds=1)
    with db.session_scope(engine) as s:
        reclaimed = repo.claim_next_message(s, lease=60, worker="w2", postgres=postgres)
        assert reclaimed is not None and reclaimed.attempts == 2


def test_outbox_fans_out_by_subscription_and_keeps_order_per_subject(db_url: str) -> None:
    engine = _engine(db_url)
    connectors = [("all", ["*"]), ("review", ["invoice.needs_review"])]
    with db.session_scope(engine) as s:
        repo.add_event(s, type="invoice.extracted", subject_id="inv_1", data={"n": 1}, connectors=connectors)
        repo.add_event(
            s, type="invoice.needs_review", subject_id="inv_1", data={"n": 2}, connectors=connectors
        )
        repo.add_event(s, type="invoice.extracted", subject_id="inv_2", data={"n": 3}, connectors=connectors)
    with db.session_scope(engine) as s:
        due = repo.due_deliveries(s, connectors=["all", "review"], limit=10)
        got = sorted((d.connector, e.payload["data"]["n"]) for d, e in due)
        # inv_1's second event waits for its first on "all"; "review" only subscribed to needs_review
        assert got == [("all", 1), ("all", 3), ("review", 2)]
        first = next(d for d, e in due if d.connector == "all" and e.payload["data"]["n"] == 1)
        repo.record_attempt(
            s,
            first,
            outcome="delivered",
            started_at=utcnow(),
            duration_ms=1,
            status_code=200,
            error=None,
            response_excerpt="ok",
            next_attempt_at=None,
        )
    with db.session_scope(engine) as s:
        due = repo.due_deliveries(s, connectors=["all"], limit=10)
        assert sorted(e.payload["data"]["n"] for _, e in due) == [2, 3]
        attempts = s.exec(select(tables.DeliveryAttempt)).all()
        assert [(a.outcome, a.status_code) for a in attempts] == [("delivered", 200)]


def test_event_payload_has_the_webhook_envelope(db_url: str) -> None:
    engine = _engine(db_url)
    with db.session_scope(engine) as s:
        event = repo.add_event(
            s, type="invoice.extracted", subject_id="inv_1", data={"id": "inv_1"}, connectors=[]
        )
    assert event.payload["type"] == "invoice.extracted"
    assert event.payload["data"] == {"id": "inv_1"}
    assert event.payload["timestamp"].endswith("Z")


def test_blobs_round_trip_on_disk_and_in_database(db_url: str, tmp_path: Path) -> None:
    engine = _engine(db_url)
    for store in (BlobStore(tmp_path / "blobs"), BlobStore(tmp_path / "unused", in_database=True)):
        with db.session_scope(engine) as s:
            sha = store.put(s, b"%PDF-1.4 bytes")
        with db.session_scope(engine) as s:
            assert store.get(s, sha) == b"%PDF-1.4 bytes"
