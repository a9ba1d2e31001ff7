"""Write each invoice to a directory: JSON, CSV (per invoice or one per day), or UBL / CII XML.

Every file is written atomically (temporary file in the same directory, fsync, ``os.replace``,
directory fsync), so a program watching the directory never reads half a file and a crash never
leaves one. Originals are written before the invoice file, so whoever picks up the invoice
finds its document already there.

Re-delivering an event (the outbox is at-least-once) is harmless: per-invoice files are simply
replaced, and a daily CSV keeps a hidden sidecar (``.invoices-YYYY-MM-DD.csv.ids``) of the event
ids it holds. The CSV is replaced before its sidecar, so a crash between the two can repeat one
row — never lose one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mailingest.config import FilesConfig
from mailingest.connectors.base import Attempt
from mailingest.connectors.export import einvoice_xml, field_values, invoice_of, render, safe_name
from mailingest.connectors.originals import Originals
from mailingest.errors import DeliveryError

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"^[+-]?\d+(\.\d+)?$")


def write_atomic(target: Path, data: bytes) -> None:
    """Replace ``target`` with ``data`` all at once, durably."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o644)  # mkstemp's 0600 would hide exports from sync agents
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # makes the rename itself survive a power cut
    finally:
        os.close(dir_fd)


def csv_cell(value: str) -> str:
    """Defuse spreadsheet formulas (``=HYPERLINK(...)`` in a seller name) but keep numbers."""
    if value.startswith(_FORMULA_START) and not _NUMBER.match(value):
        return "'" + value
    return value


def csv_text(rows: Sequence[Sequence[str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerows([[csv_cell(cell) for cell in row] for row in rows])
    return out.getvalue()


class FilesConnector:
    """One configured directory; one ``deliver`` writes one invoice (and its original)."""

    def __init__(self, config: FilesConfig, originals: Originals | None = None) -> None:
        """``originals``: where original documents are read (the registry passes the database's
        reader when ``[storage] documents = "database"``); default: ``config.blobs_path``."""
        self.name = config.name
        self.events: Sequence[str] = config.events
        self.config = config
        self.originals = originals or Originals(config.blobs_path)
        self._daily_lock = threading.Lock()  # daily CSVs are read-modify-write; deliveries run in parallel

    def deliver(self, event_id: str, payload: dict[str, Any]) -> Attempt:
        values = field_values(event_id, payload)
        filename = safe_name(render(self._filename_template(), values, clean=safe_name))
        directory = self.config.path
        try:
            directory.mkdir(parents=True, exist_ok=True)
            written = []
            if self.config.include_originals:
                original = self.originals.read(invoice_of(payload))
                if original is not None:
                    name = f"{Path(filename).stem}_{safe_name(original.name)}"
                    write_atomic(directory / name, original.data)
                    written.append(name)
            if self.config.format == "csv" and self.config.csv_mode == "daily":
                written.append(self._append_daily(event_id, payload, values))
            else:
                write_atomic(directory / filename, self._render_file(payload, values))
                written.append(filename)
        except OSError as exc:
            raise DeliveryError(f"cannot write to {directory}: {exc.strerror or exc}") from exc
        return Attempt(response_excerpt=", ".join(written)[:500])

    def _filename_template(self) -> str:
        """The configured template; XML formats left on the default name get ``.xml``, not ``.json``."""
        template = self.config.filename
        if self.config.format in ("ubl", "cii") and "filename" not in self.config.model_fields_set:
            template = template.removesuffix(".json") + ".xml"
        return template

    def _render_file(self, payload: dict[str, Any], values: dict[str, str]) -> bytes:
        if self.config.format == "json":
            return json.dumps(invoice_of(payload), indent=2, ensure_ascii=False).encode() + b"\n"
        if self.config.format in ("ubl", "cii"):
            return einvoice_xml(payload, self.config.format)
        columns = self.config.csv_columns
        return csv_text([columns, [values[c] for c in columns]]).encode()

    def _append_daily(self, event_id: str, payload: dict[str, Any], values: dict[str, str]) -> str:
        """Add one row to the CSV of the event's day (its timestamp, so a retry after midnight
        lands in the same file and is recognised as written)."""
        stamp = str(payload.get("timestamp", ""))[:10]
        day = stamp if re.fullmatch(r"\d{4}-\d{2}-\d{2}", stamp) else datetime.now(UTC).date().isoformat()
        name = f"invoices-{day}.csv"
        target, index = self.config.path / name, self.config.path / f".{name}.ids"
        columns = self.config.csv_columns
        with self._daily_lock:
            ids = index.read_text().split() if index.exists() else []
            if event_id in ids:
                return f"{name} (already written)"
            existing = target.read_bytes() if target.exists() else b""
            row: list[str] = [values[c] for c in columns]
            rows: list[Sequence[str]] = [row] if existing else [columns, row]
            write_atomic(target, existing + csv_text(rows).encode())
            write_atomic(index, "".join(f"{i}\n" for i in [*ids, event_id]).encode())
        return name

    def close(self) -> None:
        """Only the originals' database engine (database mode) stays open between deliveries."""
        self.originals.close()
