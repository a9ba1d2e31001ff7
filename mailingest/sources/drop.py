"""The drop directory: put .eml, .pdf, .xml (or any) files in, they are ingested.

A file is taken once it has stopped changing (``settle_time``), committed to the ledger, then
moved to ``.accepted/<message id>__<name>``; once its message is processed it moves on to
``done/`` (or ``failed/`` when nothing usable came out of it). Files are never deleted, and a
crash between the ledger commit and the move only makes the file reappear as a recognised
duplicate (same sha256) — it is not processed twice.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import structlog

from mailingest.config import DropSourceConfig
from mailingest.errors import MailingestError
from mailingest.ledger import Ledger
from mailingest.sources.base import Sink

log = structlog.get_logger("mailingest.sources.drop")

FINISHED = {"processed": "done", "duplicate": "done", "failed": "failed"}


def _unique(target: Path) -> Path:
    candidate, n = target, 1
    while candidate.exists():
        candidate = target.with_name(f"{target.stem}.{n}{target.suffix}")
        n += 1
    return candidate


class DropSource:
    name = "drop"

    def __init__(self, config: DropSourceConfig, path: Path, ledger: Ledger) -> None:
        self.config = config
        self.path = path
        self.ledger = ledger
        self.accepted = path / ".accepted"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen: dict[Path, tuple[int, float]] = {}

    def start(self, sink: Sink) -> None:
        for sub in (self.path, self.accepted, self.path / "done", self.path / "failed"):
            sub.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._loop, args=(sink,), name="drop", daemon=True)
        self._thread.start()
        log.info("watching drop directory", path=str(self.path))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self, sink: Sink) -> None:
        while not self._stop.is_set():
            try:
                self.scan(sink)
                self.finish()
            except (OSError, MailingestError) as exc:
                log.error("drop directory scan failed", error=str(exc))
            self._stop.wait(self.config.poll_interval)

    def _settled(self, path: Path) -> bool:
        """True once size and mtime stayed the same across a settle period (writer finished)."""
        st = path.stat()
        sig = (st.st_size, st.st_mtime)
        previous = self._seen.get(path)
        self._seen[path] = sig
        return previous == sig and time.time() - st.st_mtime >= self.config.settle_time

    def scan(self, sink: Sink) -> int:
        taken = 0
        for path in sorted(self.path.iterdir()):
            if path.name.startswith(".") or not path.is_file() or not self._settled(path):
                continue
            raw = path.read_bytes()
            name = path.name
            msg_id = sink(
                raw,
                source="drop",
                mailbox=str(self.path),
                filename=None if name.lower().endswith(".eml") else name,
            )
            os.replace(path, self.accepted / f"{msg_id}__{name}")
            self._seen.pop(path, None)
            log.info("file accepted", message=msg_id, file=name, size=len(raw))
            taken += 1
        return taken

    def finish(self) -> int:
        moved = 0
        for path in sorted(self.accepted.iterdir()):
            msg_id, sep, name = path.name.partition("__")
            if not sep:
                continue
            status = self.ledger.status(msg_id)
            folder = FINISHED.get(status or "")
            if folder is None and status is not None:
                continue  # still being processed
            if status == "processed" and not self.ledger.yielded_invoices(msg_id):
                folder = "failed"
            target = _unique(self.path / (folder or "failed") / name)
            os.replace(path, target)
            log.info("file finished", message=msg_id, file=name, moved_to=str(target.parent.name))
            moved += 1
        return moved
