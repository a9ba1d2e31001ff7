"""The document: one file taken out of a message (attachment, body part, nested mail part)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Document:
    """Bytes plus what the message said about them.

    ``path`` locates the part inside its message ("1", "2.1" for a part of a forwarded mail,
    "3/invoice.xml" for a member of a zip attachment) so errors and provenance can point at it.
    """

    data: bytes
    filename: str | None = None
    content_type: str | None = None
    path: str = "1"
    charset: str | None = None
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha256", hashlib.sha256(self.data).hexdigest())

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def label(self) -> str:
        """Short human name for logs and error messages."""
        return self.filename or f"part {self.path} ({self.content_type or 'unknown type'})"
