"""Webhook endpoints managed through the API (``/v1/webhook-endpoints``), beside the ones in the
config file. The running daemon picks them up without a restart: the outbox fan-out reads the
enabled rows in the transaction that writes each event, and the dispatcher rebuilds its
connectors from this table every few seconds (``version`` changes on every edit).

Secrets are needed in clear to sign requests, so they are stored as given (protect the database
like the config's secret files); the API returns a secret only once, on create and on rotate.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from mailingest.storage.tables import UTCDateTime, _ts


class WebhookEndpoint(SQLModel, table=True):
    """One endpoint (``whe_...``); its ``name`` is the connector name deliveries carry."""

    __tablename__ = "webhook_endpoints"

    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(max_length=100, unique=True)
    url: str = Field(max_length=2000)
    events: list[str] = Field(sa_column=Column(JSON, nullable=False))
    secret: str = Field(max_length=200)
    # the secret before the last rotation: still signs (second signature) until it expires
    previous_secret: str | None = Field(default=None, max_length=200)
    previous_secret_expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    payload: str = Field(default="full", max_length=10)  # full | thin
    enabled: bool = True
    # decided by the operator's [api] allow_private_webhooks when the URL was last set
    allow_private_network: bool = False
    description: str | None = Field(default=None, max_length=500)
    version: int = 1  # bumped on every change: the ETag, and the dispatcher's cue to rebuild
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
