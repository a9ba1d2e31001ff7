"""Where the files and mail connectors read original documents back from.

``[storage] documents = "disk"`` (default) keeps them under ``<data_dir>/blobs`` (or a
connector's explicit ``blobs_path``); ``"database"`` keeps them in the ``blob`` table, which
needs a database session. ``Originals`` hides the difference from the connectors.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from mailingest.connectors.export import Original
from mailingest.errors import DeliveryError, StorageError
from mailingest.storage.blobs import BlobStore


class Originals:
    """Reads an invoice's original document (``source.file.sha256``) from the blob store.

    ``storage_url`` set means the blobs live in that database; the engine is made on first use
    and shared by every connector built from the same configuration.
    """

    def __init__(self, blobs_path: Path, storage_url: str | None = None) -> None:
        self.blobs_path = blobs_path
        self.storage_url = storage_url
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    @property
    def where(self) -> str:
        return "the database" if self.storage_url else str(self.blobs_path)

    def _session(self) -> Session:
        if self.storage_url is None:
            return Session()  # disk blobs need no database
        with self._lock:
            if self._engine is None:
                from mailingest.storage import db

                self._engine = db.make_engine(self.storage_url)
        return Session(self._engine)

    def read(self, invoice: dict[str, Any]) -> Original | None:
        """The document the invoice came from, or None when it names none. A missing blob is a
        DeliveryError (retried): a wrong ``blobs_path`` can be fixed before the retries run out."""
        source = invoice.get("source")
        file = source.get("file") if isinstance(source, dict) else None
        if not isinstance(file, dict):
            return None
        sha256 = file.get("sha256")
        if not isinstance(sha256, str) or not re.fullmatch(r"[0-9a-f]{64}", sha256):
            return None
        try:
            store = BlobStore(self.blobs_path, in_database=self.storage_url is not None)
            with self._session() as session:
                data = store.get(session, sha256)
        except StorageError as exc:
            raise DeliveryError(f"original document: {exc.detail} under {self.where}") from exc
        except SQLAlchemyError as exc:  # a database outage is retried like any other
            raise DeliveryError(f"original document: cannot read it from {self.where}: {exc}") from exc
        name, ctype = file.get("name"), file.get("content_type")
        return Original(
            name=str(name) if name else f"{sha256[:12]}.bin",
            content_type=str(ctype) if ctype else "application/octet-stream",
            data=data,
        )

    def close(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None


def originals_for(entry: Any, config: Any) -> Originals:
    """The reader for a files/mail ``entry`` of ``config``: the database when ``[storage]
    documents = "database"``, else ``entry.blobs_path`` when set, else ``<data_dir>/blobs``."""
    if config.storage.documents == "database":
        return Originals(config.data_dir / "blobs", config.storage_url)
    explicit = "blobs_path" in entry.model_fields_set
    return Originals(entry.blobs_path if explicit else config.data_dir / "blobs")
