"""The ledger as sources see it: accept raw bytes durably, tell what became of them."""

from __future__ import annotations

import threading

import structlog
from sqlalchemy.engine import Engine
from sqlmodel import func, select

from mailingest.storage import repo, tables
from mailingest.storage.blobs import BlobStore
from mailingest.storage.db import session_scope

log = structlog.get_logger("mailingest.ledger")


class Ledger:
    def __init__(self, engine: Engine, blobs: BlobStore, wake: threading.Event | None = None) -> None:
        self.engine = engine
        self.blobs = blobs
        self.wake = wake or threading.Event()

    def accept(
        self,
        raw: bytes,
        *,
        source: str,
        mailbox: str | None = None,
        uidvalidity: int | None = None,
        uid: int | None = None,
        envelope_from: str | None = None,
        filename: str | None = None,
    ) -> str:
        """Commit the message (bytes first, then the row) and wake the pipeline; returns its id."""
        with session_scope(self.engine) as session:
            self.blobs.put(session, raw)
            msg = repo.record_message(
                session,
                source=source,
                raw=raw,
                mailbox=mailbox,
                uidvalidity=uidvalidity,
                uid=uid,
                envelope_from=envelope_from,
                filename=filename,
            )
            msg_id, status, dup = msg.id, msg.status, msg.duplicate_of
        if status == "duplicate":
            log.info("message already seen; not processed again", message=msg_id, duplicate_of=dup)
        else:
            self.wake.set()
        return msg_id

    def status(self, msg_id: str) -> str | None:
        with session_scope(self.engine) as session:
            msg = session.get(tables.Message, msg_id)
            return msg.status if msg else None

    def yielded_invoices(self, msg_id: str) -> bool:
        """Did the message produce at least one invoice? (Drop files without one go to failed/.)"""
        with session_scope(self.engine) as session:
            count = session.exec(
                select(func.count()).select_from(tables.Invoice).where(tables.Invoice.message_id == msg_id)
            ).one()
            return bool(count)
