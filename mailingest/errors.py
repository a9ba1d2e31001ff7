"""The one exception tree of mailingest.

Library errors (lxml, pdfminer, SQLAlchemy, httpx, ...) are translated into these at the edge
where they happen, so callers only ever catch ``MailingestError`` subclasses::

    MailingestError
    ├── ConfigError                 bad or missing configuration (names the key path)
    ├── InputError                  a message or document we cannot use; recorded on it, never fatal
    │   ├── MimeError               the message itself cannot be unpacked
    │   ├── UnsupportedDocument     no extractor handles this kind of document
    │   ├── MalformedDocument       the bytes claim a format but are broken (bad PDF, bad XML)
    │   ├── EncryptedDocument       password-protected and no password configured
    │   ├── HostileDocument         entity expansion, external entities, size/depth bombs
    │   └── DocumentTooLarge        over a configured size limit
    ├── StorageError                database or data directory trouble
    ├── SourceError                 a mail source cannot deliver (network, auth)
    └── DeliveryError               an outbound connector attempt failed
        └── PermanentDeliveryError  the destination said never again (e.g. HTTP 410)

Every error carries a stable ``type`` slug and a human ``title`` so that the CLI, the API
(RFC 9457 problem details) and the per-document error records all speak the same words.
"""

from __future__ import annotations

from typing import Any, ClassVar


class MailingestError(Exception):
    """Base of every error mailingest raises on purpose."""

    type: ClassVar[str] = "error"
    title: ClassVar[str] = "mailingest error"

    def __init__(self, detail: str = "", **context: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.context = context

    def as_dict(self) -> dict[str, str]:
        """The shape used in `extract` JSON Lines and in stored document errors."""
        return {"type": self.type, "title": self.title, "detail": self.detail}


class ConfigError(MailingestError):
    type = "config_error"
    title = "Invalid configuration"


class InputError(MailingestError):
    type = "input_error"
    title = "Unusable input"


class MimeError(InputError):
    type = "mime_error"
    title = "Message cannot be unpacked"


class UnsupportedDocument(InputError):
    type = "unsupported_document"
    title = "No extractor handles this document"


class MalformedDocument(InputError):
    type = "malformed_document"
    title = "Document is broken"


class EncryptedDocument(InputError):
    type = "encrypted_document"
    title = "Document is password-protected"


class HostileDocument(InputError):
    type = "hostile_document"
    title = "Document refused as hostile"


class DocumentTooLarge(InputError):
    type = "document_too_large"
    title = "Document exceeds the size limit"


class StorageError(MailingestError):
    type = "storage_error"
    title = "Storage failure"


class SourceError(MailingestError):
    type = "source_error"
    title = "Mail source failure"


class DeliveryError(MailingestError):
    type = "delivery_error"
    title = "Delivery attempt failed"


class PermanentDeliveryError(DeliveryError):
    """This delivery can never succeed (e.g. the ERP rejects this invoice): dead-lettered at once,
    the connector keeps delivering other events."""

    type = "permanent_delivery_error"
    title = "Destination refuses delivery permanently"


class DestinationGone(PermanentDeliveryError):
    """No delivery to this destination can succeed (410 Gone, credentials refused, forbidden
    address): the delivery is dead-lettered and the connector disabled until enabled again."""

    type = "destination_gone"
    title = "Destination is gone or refuses every delivery"


def error_dict(exc: BaseException) -> dict[str, str]:
    """Describe any exception in the error shape; unexpected ones are labelled as internal."""
    if isinstance(exc, MailingestError):
        return exc.as_dict()
    return {
        "type": "internal_error",
        "title": "Unexpected internal error",
        "detail": f"{type(exc).__name__}: {exc}",
    }
