"""SQLModel tables. Alembic migrations (storage/migrations) are the source of the schema in
databases; these classes must match the newest migration (a test checks it).

Times are timezone-aware UTC. Ids are prefixed, sortable strings (``msg_``, ``doc_``, ``inv_``,
``evt_``, ``dlv_``); events also carry an integer ``seq`` that orders the outbox.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    TypeDecorator,
    UniqueConstraint,
)
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite hands back naive datetimes otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def _ts(**kw: Any) -> Any:
    return Field(default_factory=utcnow, sa_type=UTCDateTime, **kw)


class Message(SQLModel, table=True):
    """The ledger: one row per message received from any source, raw bytes kept as a blob.

    ``status``: received → processing → processed | failed; ``duplicate`` when the same raw
    bytes (sha256) or the same (source, mailbox, uidvalidity, uid) were seen before.
    """

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("source", "mailbox", "uidvalidity", "uid", name="uq_messages_source_uid"),
    )

    id: str = Field(primary_key=True, max_length=40)
    source: str = Field(max_length=20, index=True)  # smtp | drop | imap | api | cli
    mailbox: str | None = Field(default=None, max_length=200)
    uidvalidity: int | None = Field(default=None, sa_type=BigInteger)
    uid: int | None = Field(default=None, sa_type=BigInteger)
    message_id: str | None = Field(default=None, max_length=998, index=True)
    sha256: str = Field(max_length=64, index=True)
    size: int = 0
    filename: str | None = Field(default=None, max_length=500)  # set when the "message" is a lone file
    envelope_from: str | None = Field(default=None, max_length=500)
    from_addr: str | None = Field(default=None, max_length=500)
    subject: str | None = Field(default=None, max_length=2000)
    status: str = Field(default="received", max_length=20, index=True)
    duplicate_of: str | None = Field(default=None, max_length=40)
    attempts: int = 0
    claim_token: str | None = Field(default=None, max_length=80)
    claimed_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    error: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    links: list[dict[str, str]] | None = Field(
        default=None, sa_column=Column(JSON)
    )  # invoice links in the body
    received_at: datetime = _ts(index=True)
    processed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class Blob(SQLModel, table=True):
    """Original bytes when ``storage.documents = "database"`` (content-addressed)."""

    __tablename__ = "blobs"

    sha256: str = Field(primary_key=True, max_length=64)
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class Document(SQLModel, table=True):
    """A file taken out of a message, with the recorded outcome of its extraction."""

    __tablename__ = "documents"

    id: str = Field(primary_key=True, max_length=40)
    message_id: str = Field(foreign_key="messages.id", index=True, max_length=40)
    path: str = Field(max_length=200)
    filename: str | None = Field(default=None, max_length=500)
    content_type: str | None = Field(default=None, max_length=200)
    kind: str | None = Field(default=None, max_length=20)
    size: int = 0
    sha256: str = Field(max_length=64, index=True)
    status: str = Field(default="pending", max_length=20)  # extracted | no_invoice | failed
    extractor: str | None = Field(default=None, max_length=50)
    error_type: str | None = Field(default=None, max_length=100)
    error_title: str | None = Field(default=None, max_length=200)
    error_detail: str | None = Field(default=None, max_length=4000)
    duration_ms: float | None = None
    created_at: datetime = _ts()


class Invoice(SQLModel, table=True):
    """The canonical invoice (``data``) plus the columns people filter and sort by."""

    __tablename__ = "invoices"
    __table_args__ = (
        # the list's keyset order (created_at, id), alone and behind a status filter (migration 0008)
        Index("ix_invoices_status_created_id", "status", "created_at", "id"),
        Index("ix_invoices_created_id", "created_at", "id"),
    )

    id: str = Field(primary_key=True, max_length=40)
    document_id: str = Field(foreign_key="documents.id", index=True, max_length=40)
    message_id: str = Field(foreign_key="messages.id", index=True, max_length=40)
    number: str | None = Field(default=None, max_length=200, index=True)
    number_key: str | None = Field(default=None, max_length=200, index=True)  # for duplicate checks
    type: str = Field(default="invoice", max_length=20)
    seller_name: str | None = Field(default=None, max_length=500, index=True)
    seller_vat_id: str | None = Field(default=None, max_length=50, index=True)
    issue_date: str | None = Field(default=None, max_length=10, index=True)
    currency: str | None = Field(default=None, max_length=3)
    amount_due: Decimal | None = Field(default=None, sa_type=Numeric(18, 4))
    status: str = Field(default="extracted", max_length=20, index=True)
    valid: bool | None = None
    duplicate_of: str | None = Field(default=None, max_length=40)
    vendor_id: str | None = Field(default=None, max_length=40, index=True)  # vendors.id (tables_vendors)
    data: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = _ts(index=True)
    updated_at: datetime = _ts()


class Event(SQLModel, table=True):
    """The transactional outbox: written in the same transaction as the change it reports."""

    __tablename__ = "events"

    seq: int | None = Field(default=None, primary_key=True, sa_type=Integer)
    id: str = Field(max_length=40, unique=True)
    type: str = Field(max_length=60, index=True)
    subject_id: str | None = Field(default=None, max_length=40, index=True)  # invoice / document id
    payload: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = _ts()


class Delivery(SQLModel, table=True):
    """One event owed to one connector; the dispatcher drives it to delivered or dead."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("event_id", "connector", name="uq_deliveries_event_connector"),
        # the dispatcher's questions: what is due for a connector, and is an earlier event about
        # the same subject still pending for it (order per invoice)
        Index("ix_deliveries_due", "connector", "status", "event_seq"),
        Index("ix_deliveries_subject_order", "connector", "subject_id", "event_seq"),
    )

    id: str = Field(primary_key=True, max_length=40)
    event_id: str = Field(foreign_key="events.id", index=True, max_length=40)
    event_seq: int = Field(index=True)
    subject_id: str | None = Field(default=None, max_length=40)
    connector: str = Field(max_length=100, index=True)
    status: str = Field(default="pending", max_length=20, index=True)  # pending | delivered | dead
    attempts: int = 0
    next_attempt_at: datetime = _ts(index=True)
    last_error: str | None = Field(default=None, max_length=2000)
    delivered_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = _ts()
    # the lease: which dispatcher is sending it now, until when (expired leases are up for grabs)
    claimed_by: str | None = Field(default=None, max_length=120)
    claimed_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    replays: int = 0  # manual replays; ``attempts`` counts the attempts since the last one


class DeliveryAttempt(SQLModel, table=True):
    """Every try, successful or not: what was sent where and what came back."""

    __tablename__ = "delivery_attempts"

    id: int | None = Field(default=None, primary_key=True)
    delivery_id: str = Field(foreign_key="deliveries.id", index=True, max_length=40)
    number: int
    started_at: datetime = _ts()
    duration_ms: float = 0
    status_code: int | None = None
    outcome: str = Field(max_length=20)  # delivered | retry | failed | dead
    error: str | None = Field(default=None, max_length=2000)
    response_excerpt: str | None = Field(default=None, max_length=1000)


class AuditLog(SQLModel, table=True):
    """Who did what to which object, for people and programs alike."""

    __tablename__ = "audit_log"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = _ts(index=True)
    actor: str = Field(max_length=200)  # "system", "cli", "api:<key id>"
    action: str = Field(max_length=100)
    subject_type: str | None = Field(default=None, max_length=40)
    subject_id: str | None = Field(default=None, max_length=40, index=True)
    detail: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))


class ConnectorState(SQLModel, table=True):
    """Run-time state of a configured connector that must survive restarts (e.g. disabled by 410)."""

    __tablename__ = "connector_state"

    name: str = Field(primary_key=True, max_length=100)
    disabled_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    disabled_reason: str | None = Field(default=None, max_length=500)
    # circuit breaker: consecutive failed attempts, and until when the circuit is open
    consecutive_failures: int = 0
    circuit_open_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_failure_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_success_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class ApiKey(SQLModel, table=True):
    """A scoped credential for the REST API. Only the SHA-256 of the secret is stored: a leaked
    database does not leak working keys. ``prefix`` (the key's first 8 characters) is kept so
    people can tell their keys apart in ``mailingest api-key list``."""

    __tablename__ = "api_keys"

    id: str = Field(primary_key=True, max_length=40)  # key_...
    name: str = Field(max_length=200)
    prefix: str = Field(max_length=8)
    key_hash: str = Field(max_length=64, unique=True)  # sha256 hex of the whole key
    scopes: list[str] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = _ts()
    expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    vendor: str | None = Field(default=None, max_length=50)  # vendor-portal key: VAT id or ven_ id


class IdempotencyRecord(SQLModel, table=True):
    """The stored response of a POST made with an ``Idempotency-Key`` (kept 24 h), per API key.

    Written in the same transaction as the change it answers, so a retry either finds it and
    replays the response or finds nothing changed; ``fingerprint`` (method, path, body hash)
    catches a key reused for a different request."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("actor", "key", name="uq_idempotency_keys_actor_key"),)

    id: int | None = Field(default=None, primary_key=True)
    actor: str = Field(max_length=200)
    key: str = Field(max_length=200)
    fingerprint: str = Field(max_length=64)
    status_code: int
    body: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = _ts(index=True)


from mailingest.storage import tables_api as _tables_api  # noqa: E402,F401 - API tables
from mailingest.storage import tables_auth as _tables_auth  # noqa: E402,F401 - OAuth2 clients
from mailingest.storage import tables_endpoints as _tables_endpoints  # noqa: E402,F401 - API webhook endpoints
from mailingest.storage import tables_vendors as _tables_vendors  # noqa: E402,F401 - vendor tables
