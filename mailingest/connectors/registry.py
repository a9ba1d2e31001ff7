"""Which connector kinds exist and how a configured one is built.

Each kind has a list in ``[connectors]`` (``[[connectors.webhook]]``, ...) whose entries carry at
least ``name``, ``events`` and ``enabled``; ``FACTORIES`` maps the kind to a callable that turns
one entry into a ``Connector``. Third parties add kinds through the ``mailingest.connectors``
entry-point group (name = kind, value = factory taking the entry's config model).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from importlib.metadata import entry_points
from typing import Any

from mailingest.config import Config
from mailingest.connectors.amqp import AmqpConnector
from mailingest.connectors.base import Connector
from mailingest.connectors.files import FilesConnector
from mailingest.connectors.http import HttpConnector
from mailingest.connectors.mail import MailConnector
from mailingest.connectors.mqtt import MqttConnector
from mailingest.connectors.nats import NatsConnector
from mailingest.connectors.webhook import WebhookConnector
from mailingest.storage.repo import Subscription

FACTORIES: dict[str, Callable[[Any], Connector]] = {
    "webhook": WebhookConnector,
    "files": FilesConnector,
    "mail": MailConnector,
    "nats": NatsConnector,
    "amqp": AmqpConnector,
    "mqtt": MqttConnector,
    "http": HttpConnector,
}


def _factories() -> dict[str, Callable[[Any], Connector]]:
    found = dict(FACTORIES)
    for ep in entry_points(group="mailingest.connectors"):
        found.setdefault(ep.name, ep.load())
    return found


def configured(config: Config) -> Iterator[tuple[str, Any]]:
    """(kind, entry) for every enabled connector entry in the config, in config order."""
    for kind in type(config.connectors).model_fields:
        for entry in getattr(config.connectors, kind):
            if entry.enabled:
                yield kind, entry


def subscriptions(config: Config) -> list[tuple[str, Sequence[str]]]:
    """(connector name, event patterns) for every enabled connector: what the outbox fans out to."""
    return [
        Subscription(entry.name, entry.events, getattr(entry, "routed_only", False))
        for _, entry in configured(config)
    ]


def build_connectors(config: Config) -> dict[str, Connector]:
    factories = _factories()
    return {entry.name: factories[kind](entry) for kind, entry in configured(config)}
