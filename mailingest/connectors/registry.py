"""Which connector kinds exist and how a configured one is built.

Each kind has a list in ``[connectors]`` (``[[connectors.webhook]]``, ...) whose entries carry at
least ``name``, ``events`` and ``enabled``; ``FACTORIES`` maps the kind to a callable that turns
one entry into a ``Connector``. Third parties add kinds through the ``mailingest.connectors``
entry-point group (name = kind, value = factory taking the entry's config model).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any

import httpx

from mailingest import plugins
from mailingest.config import Config, WebhookConfig
from mailingest.connectors.amqp import AmqpConnector
from mailingest.connectors.base import Connector
from mailingest.connectors.files import FilesConnector
from mailingest.connectors.http import HttpConnector
from mailingest.connectors.mail import MailConnector
from mailingest.connectors.mqtt import MqttConnector
from mailingest.connectors.nats import NatsConnector
from mailingest.connectors.originals import originals_for
from mailingest.connectors.webhook import WebhookConnector, secret_key
from mailingest.storage.repo import Subscription
from mailingest.storage.tables_endpoints import WebhookEndpoint

FACTORIES: dict[str, Callable[[Any], Connector]] = {
    "webhook": WebhookConnector,
    "files": FilesConnector,
    "mail": MailConnector,
    "nats": NatsConnector,
    "amqp": AmqpConnector,
    "mqtt": MqttConnector,
    "http": HttpConnector,
}


def _factory(kind: str) -> Callable[..., Connector]:
    """A built-in kind, or the plugin the config loader already validated the entries against."""
    return FACTORIES.get(kind) or plugins.load_factory(plugins.CONNECTORS_GROUP, kind)


def configured(config: Config) -> Iterator[tuple[str, Any]]:
    """(kind, entry) for every enabled connector entry (plugin kinds after the built-in ones)."""
    for kind, entry in config.connectors.entries():
        if entry.enabled:
            yield kind, entry


def subscriptions(config: Config) -> list[tuple[str, Sequence[str]]]:
    """(connector name, event patterns) for every enabled connector: what the outbox fans out to."""
    return [
        Subscription(entry.name, entry.events, getattr(entry, "routed_only", False))
        for _, entry in configured(config)
    ]


def build_connectors(config: Config) -> dict[str, Connector]:
    built: dict[str, Connector] = {}
    for kind, entry in configured(config):
        if kind in ("files", "mail"):  # originals come from where [storage] documents keeps them
            built[entry.name] = FACTORIES[kind](entry, originals=originals_for(entry, config))  # type: ignore[call-arg]
        else:
            built[entry.name] = _factory(kind)(entry)
    return built


class EndpointConnector(WebhookConnector):
    """A webhook endpoint managed through the API: the same requests as a configured webhook,
    with the secrets taken from its row instead of the environment or a file."""

    def __init__(self, config: WebhookConfig, secrets: Sequence[str], client: httpx.Client | None = None):
        self.name = config.name
        self.events = config.events
        self.config = config
        self._secrets = list(secrets)
        for secret in self._secrets:
            secret_key(secret)
        self._client = client or httpx.Client(timeout=config.timeout, follow_redirects=False)


def endpoint_secrets(row: WebhookEndpoint, now: datetime) -> list[str]:
    """The secrets that sign for this endpoint now: its secret, plus the previous one while the
    rotation overlap lasts (two signatures)."""
    keep = row.previous_secret is not None and (
        row.previous_secret_expires_at is None or row.previous_secret_expires_at > now
    )
    return [row.secret] + ([row.previous_secret] if keep and row.previous_secret else [])


def endpoint_config(row: WebhookEndpoint) -> WebhookConfig:
    """An endpoint row as the webhook config entry it stands for (secrets aside: they come from
    the row, see ``endpoint_secrets``); lists of connectors can show both kinds alike."""
    return WebhookConfig.model_construct(
        name=row.name,
        events=list(row.events),
        enabled=row.enabled,
        routed_only=False,
        circuit_failures=5,
        circuit_cooldown=60.0,
        url=row.url,
        secret=None,
        previous_secret=None,
        secrets=[],
        payload=row.payload,
        api_url="",
        allow_private_network=row.allow_private_network,
        timeout=10.0,
    )


def endpoint_connector(row: WebhookEndpoint, now: datetime) -> EndpointConnector:
    """The connector the dispatcher drives for one endpoint row."""
    return EndpointConnector(endpoint_config(row), endpoint_secrets(row, now))
