"""Content-addressed storage for original bytes (raw messages and documents).

On disk by default (``<data_dir>/blobs/ab/cd/<sha256>``), written atomically *before* the
database row that refers to it is committed, so a committed row always finds its bytes. A crash
in between leaves at most an unreferenced file, never a dangling row.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from sqlmodel import Session

from mailingest.errors import StorageError
from mailingest.storage.tables import Blob


class BlobStore:
    def __init__(self, root: Path, *, in_database: bool = False) -> None:
        self.root = root
        self.in_database = in_database

    def _path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def put(self, session: Session, data: bytes, *, durable: bool = True) -> str:
        """Store ``data``; ``durable=False`` skips the fsync for bytes that can be derived again
        (documents are re-extractable from their message, whose raw bytes are stored durably)."""
        sha256 = hashlib.sha256(data).hexdigest()
        if self.in_database:
            if session.get(Blob, sha256) is None:
                session.add(Blob(sha256=sha256, data=data))
            return sha256
        path = self._path(sha256)
        if path.exists():
            return sha256
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                if durable:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            raise StorageError(f"cannot write blob {sha256[:12]}: {exc.strerror}") from exc
        return sha256

    def get(self, session: Session, sha256: str) -> bytes:
        if self.in_database:
            blob = session.get(Blob, sha256)
            if blob is None:
                raise StorageError(f"blob {sha256[:12]} is missing from the database")
            return blob.data
        try:
            return self._path(sha256).read_bytes()
        except OSError as exc:
            raise StorageError(f"blob {sha256[:12]} is missing: {exc.strerror}") from exc
