"""RabbitMQ (AMQP 0-9-1): one ``deliver`` is one confirmed, persistent, mandatory publish.

Publisher confirms make the broker's ack the delivery: ``basic_publish`` returns only once the
broker has taken responsibility for the message (written it to its durable queues), raises
``NackError`` when it refused it and ``UnroutableError`` when no queue is bound for the routing
key (``mandatory``) — both are retried, so a consumer that binds its queue late still gets every
event. ``message_id`` is the event id, for consumers to de-duplicate the rare repeat.

pika's BlockingConnection is not thread-safe and the dispatcher delivers from a thread pool, so
one lock serialises publishes per connector; a failed connection is dropped and dialled anew on
the next attempt.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from mailingest.config import AmqpConfig
from mailingest.connectors.base import Attempt
from mailingest.connectors.broker import encode_body, render
from mailingest.errors import DeliveryError


def connection_parameters(config: AmqpConfig, password: str | None) -> pika.URLParameters:
    """The url with the secret password put in, every network wait bounded by ``timeout``."""
    parts = urlsplit(config.url)
    netloc = parts.netloc
    if password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user}:{quote(password, safe='')}@{host}"
    params = pika.URLParameters(urlunsplit(parts._replace(netloc=netloc)))
    params.socket_timeout = config.timeout
    params.stack_timeout = config.timeout
    params.blocked_connection_timeout = config.timeout
    params.connection_attempts = 1
    params.client_properties = {"connection_name": f"mailingest-{config.name}"}
    return params


class AmqpConnector:
    def __init__(self, config: AmqpConfig) -> None:
        self.name = config.name
        self.events: Sequence[str] = config.events
        self.config = config
        password = config.password.get() if config.password is not None else None
        self._params = connection_parameters(config, password)
        self._lock = threading.Lock()
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None

    def _open_channel(self) -> BlockingChannel:
        if self._channel is not None and self._channel.is_open:
            return self._channel
        self._drop()
        self._connection = pika.BlockingConnection(self._params)
        channel = self._connection.channel()
        channel.confirm_delivery()
        if self.config.declare:
            channel.exchange_declare(self.config.exchange, exchange_type="topic", durable=True)
        self._channel = channel
        return channel

    def _drop(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError):  # already broken; best effort
                connection.close()

    def deliver(self, event_id: str, payload: dict[str, Any]) -> Attempt:
        event_type = str(payload.get("type", ""))
        routing_key = render(self.config.routing_key, event_type)
        properties = pika.BasicProperties(
            content_type="application/json",
            content_encoding="utf-8",
            delivery_mode=pika.DeliveryMode.Persistent,
            message_id=event_id,
            headers={"type": event_type},
        )
        with self._lock:
            try:
                channel = self._open_channel()
                channel.basic_publish(
                    self.config.exchange, routing_key, encode_body(payload), properties, mandatory=True
                )
            except pika.exceptions.UnroutableError as exc:
                raise DeliveryError(
                    f"no queue is bound to exchange {self.config.exchange!r} for {routing_key!r}"
                ) from exc
            except pika.exceptions.NackError as exc:
                raise DeliveryError(f"broker refused the message for {routing_key!r} (nack)") from exc
            except (pika.exceptions.AMQPError, OSError) as exc:
                self._drop()
                raise DeliveryError(f"AMQP {type(exc).__name__}: {exc!r}") from exc
        return Attempt(response_excerpt=f"confirmed by {self.config.exchange}/{routing_key}")

    def close(self) -> None:
        with self._lock:
            self._drop()
