"""Tables for OAuth2 client credentials (issue 9 item 4): API clients ("service accounts") and the
server's own secrets (the HS256 key that signs access tokens).

The signing key lives in the database, not the state directory, so every daemon process and
every worker that shares the database verifies the same tokens, and backups carry it along.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from mailingest.storage.tables import UTCDateTime, _ts


class ApiClient(SQLModel, table=True):
    """An OAuth2 client (client credentials grant). ``id`` is the public ``client_id``; only the
    SHA-256 of the secret is stored. ``vendor`` binds a vendor-portal client to one vendor (VAT id
    or ``ven_`` id)."""

    __tablename__ = "api_clients"

    id: str = Field(primary_key=True, max_length=40)  # cli_...
    name: str = Field(max_length=200)
    secret_hash: str = Field(max_length=64)
    scopes: list[str] = Field(sa_column=Column(JSON, nullable=False))
    vendor: str | None = Field(default=None, max_length=50)
    created_at: datetime = _ts()
    expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_token_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class ServerSecret(SQLModel, table=True):
    """A secret the server generated for itself once (``name`` = "jwt-hs256")."""

    __tablename__ = "server_secrets"

    name: str = Field(primary_key=True, max_length=40)
    value: str = Field(max_length=200)
    created_at: datetime = _ts()
