"""``mailingest ingest``: the daemon's whole path, once, for files given on the command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from sqlmodel import col, select

from mailingest.config import Config
from mailingest.connectors.dispatcher import Dispatcher
from mailingest.connectors.registry import build_connectors
from mailingest.ledger import Ledger
from mailingest.pipeline.runner import document_view, process_next
from mailingest.storage import db, tables
from mailingest.storage.blobs import BlobStore
from mailingest.workers import build_runtime


def ingest_files(config: Config, files: list[str]) -> list[dict[str, Any]]:
    """Accept, process and deliver (first attempts only; retries are left to the daemon)."""
    engine = db.make_engine(config.storage_url)
    db.upgrade(engine)
    blobs = BlobStore(config.data_dir / "blobs", in_database=config.storage.documents == "database")
    ledger = Ledger(engine, blobs)
    connectors = build_connectors(config)
    accepted: list[tuple[str, str | None]] = []
    for name in files:
        try:
            raw = Path(name).read_bytes()
        except OSError as exc:
            accepted.append((name, None))
            print(f"mailingest: cannot read {name}: {exc.strerror}", file=sys.stderr)
            continue
        filename = None if name.lower().endswith(".eml") else Path(name).name
        accepted.append((name, ledger.accept(raw, source="cli", mailbox="cli", filename=filename)))
    runtime = build_runtime(config, engine, blobs, "cli")
    while process_next(runtime):
        pass
    dispatcher = Dispatcher(
        engine, connectors, schedule=config.outbox.retry_schedule, concurrency=config.outbox.concurrency
    )
    try:
        while dispatcher.run_once():
            pass
    finally:
        dispatcher.close()
    results: list[dict[str, Any]] = []
    with db.session_scope(engine) as session:
        for name, msg_id in accepted:
            if msg_id is None:
                results.append({"file": name, "status": "unreadable"})
                continue
            msg = session.get(tables.Message, msg_id)
            assert msg is not None
            origin = msg.duplicate_of or msg.id
            docs = session.exec(
                select(tables.Document)
                .where(tables.Document.message_id == origin)
                .order_by(col(tables.Document.path))
            ).all()
            invoices = session.exec(select(tables.Invoice).where(tables.Invoice.message_id == origin)).all()
            results.append(
                {
                    "file": name,
                    "message_id": msg.id,
                    "status": msg.status,
                    "duplicate_of": msg.duplicate_of,
                    "error": msg.error,
                    "documents": [document_view(d) for d in docs],
                    "invoices": [{"id": i.id, "number": i.number, "status": i.status} for i in invoices],
                }
            )
    engine.dispose()
    return results
