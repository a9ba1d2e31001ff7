#!/usr/bin/env python3
"""Benchmark: backfilling a large IMAP folder into the ledger, against a real Dovecot.

The folder (10,000 mails of ~9 KB with a tiny XML attachment by default) is written straight
into Dovecot's Maildir before it starts (APPENDing them would take longer than the backfill);
then the IMAP source runs in-process with a real Ledger on SQLite and no pipeline
(``after_processing = none``), until every message is in the ledger and the watcher waits in
IDLE. Prints messages/s into the ledger and this process's peak RSS (VmHWM) against its RSS
before the source started — what the backfill itself costs. Log level is ``warning`` unless
``--log-info`` (the source logs two lines per message at ``info``; rendering them is part of a
real daemon's cost but not of the source's).

    .venv/bin/python bench/imap_backfill.py [--messages 10000] [--batch-size 50] [--log-info]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from sqlmodel import func, select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mailingest import logs  # noqa: E402
from mailingest.config import ImapSourceConfig  # noqa: E402
from mailingest.ledger import Ledger  # noqa: E402
from mailingest.sources.imap import ImapSource  # noqa: E402
from mailingest.storage import db, tables  # noqa: E402
from mailingest.storage.blobs import BlobStore  # noqa: E402
from tests.dovecot import Dovecot  # noqa: E402
from tests.test_imap_backfill import fill_maildir  # noqa: E402


def status_kb(field: str) -> int:
    """A ``VmRSS``/``VmHWM`` figure of this process, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def run(server: Dovecot, work: Path, messages: int, batch_size: int) -> dict[str, float]:
    engine = db.make_engine(f"sqlite:///{work / 'bench.db'}")
    db.upgrade(engine)
    ledger = Ledger(engine, BlobStore(work / "blobs"))
    (work / "pw").write_text(server.password)
    config = ImapSourceConfig.model_validate(
        {"name": "bench", "host": server.host, "port": server.port, "security": "none",
         "username": server.user, "password": {"file": str(work / "pw")}, "batch_size": batch_size,
         "after_processing": {"action": "none"}}
    )  # fmt: skip

    def count() -> int:
        with db.session_scope(engine) as session:
            return int(session.exec(select(func.count()).select_from(tables.Message)).one())

    rss_before = status_kb("VmRSS")
    source = ImapSource(config, ledger)
    started = time.monotonic()
    source.start(ledger.accept)
    try:
        while not (count() >= messages and server.idling() == 1):
            if time.monotonic() - started > 1800:
                raise SystemExit(f"timed out with {count()} of {messages}")
            time.sleep(0.2)
        elapsed = time.monotonic() - started
    finally:
        source.stop()
    stored = count()
    engine.dispose()
    assert stored == messages, f"{stored} rows for {messages} messages"
    return {
        "messages": messages,
        "batch_size": batch_size,
        "seconds": round(elapsed, 2),
        "messages_per_s": round(messages / elapsed, 1),
        "rss_before_mb": round(rss_before / 1024, 1),
        "peak_rss_mb": round(status_kb("VmHWM") / 1024, 1),
        "peak_growth_mb": round((status_kb("VmHWM") - rss_before) / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--log-info", action="store_true")
    args = parser.parse_args()
    logs.configure("info" if args.log_info else "warning", "json")
    server = Dovecot()
    try:
        folder = fill_maildir(server, args.messages)
        print(f"Maildir filled: {args.messages} messages, {folder / 2**20:.1f} MiB", flush=True)
        server.start()
        with tempfile.TemporaryDirectory() as work:
            result = run(server, Path(work), args.messages, args.batch_size)
    finally:
        server.cleanup()
    print(
        f"IMAP backfill → ledger: {result['messages']} messages in {result['seconds']} s = "
        f"{result['messages_per_s']} msg/s (batch_size {result['batch_size']}); peak RSS "
        f"{result['peak_rss_mb']} MB ({result['peak_growth_mb']} MB over {result['rss_before_mb']} MB before)"
    )
    out = ROOT / "bench" / "results" / f"imap_backfill-{args.messages}-b{args.batch_size}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
